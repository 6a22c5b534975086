#include "keys/key_filter.hpp"

#include <algorithm>
#include <optional>
#include <utility>

namespace tollgate::keys {
namespace {

/// Two 64-bit hashes from a hex SHA-256 (its first 32 hex digits): SHA-256 output is uniform,
/// so its bits serve as the filter's hash functions directly (double hashing h1 + i·h2).
std::optional<std::pair<std::uint64_t, std::uint64_t>> hashes(std::string_view hex) noexcept {
  if (hex.size() != 64) return std::nullopt;
  std::uint64_t h[2] = {0, 0};
  for (int w = 0; w < 2; ++w) {
    for (int i = 0; i < 16; ++i) {
      char c = hex[static_cast<std::size_t>(w * 16 + i)];
      std::uint64_t v;
      if (c >= '0' && c <= '9') v = static_cast<std::uint64_t>(c - '0');
      else if (c >= 'a' && c <= 'f') v = static_cast<std::uint64_t>(c - 'a' + 10);
      else return std::nullopt;
      h[w] = h[w] << 4 | v;
    }
  }
  return std::make_pair(h[0], h[1] | 1);  // odd step: all probes differ
}

}  // namespace

void KeyFilter::set(Bits& b, std::uint64_t h1, std::uint64_t h2) noexcept {
  const std::uint64_t nbits = b.words.size() * 64;
  for (int i = 0; i < probes; ++i) {
    std::uint64_t bit = (h1 + static_cast<std::uint64_t>(i) * h2) % nbits;
    b.words[bit / 64].fetch_or(std::uint64_t{1} << (bit % 64), std::memory_order_relaxed);
  }
}

void KeyFilter::load(std::size_t expected_keys, const std::function<void(const AddFn&)>& fill,
                     std::size_t min_capacity) {
  std::size_t cap = std::max(expected_keys * 2, min_capacity);
  auto b = std::make_shared<Bits>(cap * bits_per_key);
  fill([&b](std::string_view k) {
    if (auto h = hashes(k)) set(*b, h->first, h->second);
  });
  bits_.store(std::move(b));
}

void KeyFilter::add(std::string_view key_hash_hex) noexcept {
  auto b = bits_.load();
  if (!b) return;  // not loaded yet: the load will include it
  if (auto h = hashes(key_hash_hex)) set(*b, h->first, h->second);
}

bool KeyFilter::might_contain(std::string_view key_hash_hex) const noexcept {
  auto b = bits_.load();
  if (!b) return true;
  auto h = hashes(key_hash_hex);
  if (!h) return false;
  const std::uint64_t nbits = b->words.size() * 64;
  for (int i = 0; i < probes; ++i) {
    std::uint64_t bit = (h->first + static_cast<std::uint64_t>(i) * h->second) % nbits;
    if (!(b->words[bit / 64].load(std::memory_order_relaxed) & (std::uint64_t{1} << (bit % 64)))) return false;
  }
  return true;
}

std::size_t KeyFilter::capacity() const noexcept {
  auto b = bits_.load();
  return b ? b->capacity : 0;
}

}  // namespace tollgate::keys
