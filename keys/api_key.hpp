#pragma once
// API key format, checksum and hashing.
//
// Format (like GitHub's tokens): "tg_" + 32 base62 characters of randomness (~190 bits)
// + 6 base62 characters of checksum (CRC-32 of the random part, base62, zero-padded).
// Total length 41. The checksum lets a typo or a forged string be rejected before any lookup.
// Only the SHA-256 of the full key (lowercase hex, 64 chars) and a display prefix are stored.
#include <optional>
#include <string>
#include <string_view>

namespace tollgate::keys {

inline constexpr std::string_view key_scheme = "tg_";
inline constexpr std::size_t key_random_chars = 32;
inline constexpr std::size_t key_checksum_chars = 6;
inline constexpr std::size_t key_length = 3 + key_random_chars + key_checksum_chars;
/// Characters of the key shown in listings (scheme + 8): identifies, never authenticates.
inline constexpr std::size_t key_display_prefix_chars = 11;

/// A newly minted key: the raw key (show once), its hash and display prefix (store these).
struct NewKey {
  std::string raw;
  std::string hash_hex;
  std::string display_prefix;
};

/// Mints a key from OpenSSL's CSPRNG. Throws std::runtime_error if the RNG fails.
NewKey generate_key();

/// True if `key` has the tollgate shape and a valid checksum. Constant work, no allocation.
bool is_well_formed(std::string_view key) noexcept;

/// SHA-256 of the key as 64 lowercase hex characters.
std::string hash_key(std::string_view key);

/// The display prefix of a key ("tg_" + first 8 random characters).
std::string display_prefix(std::string_view key);

/// Extracts the token from an `Authorization: Bearer <token>` header value; nullopt if absent.
std::optional<std::string_view> bearer_token(std::string_view authorization) noexcept;

}  // namespace tollgate::keys
