// Fuzz target: an `Authorization` header value as phase 2 (authenticate) reads it
// (keys/api_key.hpp): bearer_token, is_well_formed, hash_key, display_prefix.
//
// Invariants: the token is a non-empty slice of the value after a case-insensitive "Bearer ",
// without the spaces around it, and there is one whenever such a slice exists; a well-formed key
// has the documented shape, and changing any one of its characters to another base62 character
// makes it ill-formed (the checksum catches every single-character typo); the hash is 64
// lowercase hex digits, the same for the same key; the display prefix is the key's first 11 bytes.
#include "keys/api_key.hpp"
#include "tests/fuzz/fuzz_check.hpp"

#include <cstdint>
#include <string>
#include <string_view>

namespace {
using namespace tollgate::keys;

constexpr std::string_view base62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

bool iequals_bearer(std::string_view s) {
  constexpr std::string_view b = "bearer ";
  if (s.size() < b.size()) return false;
  for (std::size_t i = 0; i < b.size(); ++i) {
    char c = s[i];
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    if (c != b[i]) return false;
  }
  return true;
}

void check_key(std::string_view key) {
  std::string hash = hash_key(key);
  FUZZ_CHECK(hash.size() == 64);
  for (char c : hash) FUZZ_CHECK((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'));
  FUZZ_CHECK(hash_key(std::string(key)) == hash);
  FUZZ_CHECK(display_prefix(key) == key.substr(0, key_display_prefix_chars));
  if (!is_well_formed(key)) return;
  FUZZ_CHECK(key.size() == key_length && key.substr(0, 3) == key_scheme);
  for (char c : key.substr(3)) FUZZ_CHECK(base62.find(c) != std::string_view::npos);
  std::string typo(key);
  for (std::size_t i = key_scheme.size(); i < typo.size(); ++i) {
    char original = typo[i];
    typo[i] = base62[(base62.find(original) + 1 + static_cast<unsigned char>(key[i % key.size()]) % 61) % 62];
    FUZZ_CHECK(typo[i] != original);
    FUZZ_CHECK(!is_well_formed(typo));
    typo[i] = original;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view value(reinterpret_cast<const char*>(data), size);
  auto token = bearer_token(value);

  // The reference: what follows "Bearer ", leading spaces and trailing spaces/tabs trimmed.
  std::string_view expected;
  if (iequals_bearer(value)) {
    expected = value.substr(7);
    while (!expected.empty() && expected.front() == ' ') expected.remove_prefix(1);
    while (!expected.empty() && (expected.back() == ' ' || expected.back() == '\t')) expected.remove_suffix(1);
  }
  FUZZ_CHECK(token.has_value() == !expected.empty());
  if (token) {
    FUZZ_CHECK(token->data() == expected.data() && token->size() == expected.size());
    check_key(*token);
  }
  check_key(value);
  return 0;
}
