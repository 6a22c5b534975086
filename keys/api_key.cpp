#include "keys/api_key.hpp"

#include <boost/crc.hpp>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include <array>
#include <stdexcept>

namespace tollgate::keys {
namespace {

constexpr std::string_view base62 =
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

bool is_base62(char c) noexcept {
  return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
}

std::array<char, key_checksum_chars> checksum(std::string_view random_part) noexcept {
  boost::crc_32_type crc;
  crc.process_bytes(random_part.data(), random_part.size());
  std::uint64_t v = crc.checksum();
  std::array<char, key_checksum_chars> out{};
  for (std::size_t i = key_checksum_chars; i-- > 0;) {
    out[i] = base62[v % 62];
    v /= 62;
  }
  return out;
}

}  // namespace

NewKey generate_key() {
  std::string raw(key_scheme);
  // Rejection sampling keeps every base62 character equally likely.
  while (raw.size() < key_scheme.size() + key_random_chars) {
    unsigned char buf[64];
    if (RAND_bytes(buf, sizeof buf) != 1) throw std::runtime_error("RAND_bytes failed");
    for (unsigned char b : buf) {
      if (b >= 248) continue;  // 248 = 4 * 62
      raw.push_back(base62[b % 62]);
      if (raw.size() == key_scheme.size() + key_random_chars) break;
    }
  }
  auto sum = checksum(std::string_view(raw).substr(key_scheme.size()));
  raw.append(sum.data(), sum.size());
  return NewKey{raw, hash_key(raw), display_prefix(raw)};
}

bool is_well_formed(std::string_view key) noexcept {
  if (key.size() != key_length || key.substr(0, key_scheme.size()) != key_scheme) return false;
  std::string_view body = key.substr(key_scheme.size());
  for (char c : body)
    if (!is_base62(c)) return false;
  auto sum = checksum(body.substr(0, key_random_chars));
  return body.substr(key_random_chars) == std::string_view(sum.data(), sum.size());
}

std::string hash_key(std::string_view key) {
  unsigned char md[32];
  unsigned int len = 0;
  if (EVP_Digest(key.data(), key.size(), md, &len, EVP_sha256(), nullptr) != 1 || len != 32)
    throw std::runtime_error("SHA-256 failed");
  static constexpr char hex[] = "0123456789abcdef";
  std::string out(64, '0');
  for (int i = 0; i < 32; ++i) {
    out[2 * i] = hex[md[i] >> 4];
    out[2 * i + 1] = hex[md[i] & 0xf];
  }
  return out;
}

std::string display_prefix(std::string_view key) {
  return std::string(key.substr(0, key_display_prefix_chars));
}

std::optional<std::string_view> bearer_token(std::string_view v) noexcept {
  constexpr std::string_view scheme = "Bearer ";
  if (v.size() <= scheme.size()) return std::nullopt;
  for (std::size_t i = 0; i < scheme.size(); ++i) {
    char a = v[i], b = scheme[i];
    if (a >= 'A' && a <= 'Z') a = static_cast<char>(a - 'A' + 'a');
    if (b >= 'A' && b <= 'Z') b = static_cast<char>(b - 'A' + 'a');
    if (a != b) return std::nullopt;
  }
  v.remove_prefix(scheme.size());
  while (!v.empty() && v.front() == ' ') v.remove_prefix(1);
  while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
  if (v.empty()) return std::nullopt;
  return v;
}

}  // namespace tollgate::keys
