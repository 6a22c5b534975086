#include "keys/key_filter.hpp"

#include <algorithm>
#include <bit>
#include <optional>

namespace tollgate::keys {
namespace {

/// The first 64 bits of a hex SHA-256; never 0 (the empty slot). nullopt if not 64 hex chars.
std::optional<std::uint64_t> fingerprint(std::string_view hex) noexcept {
  if (hex.size() != 64) return std::nullopt;
  std::uint64_t fp = 0;
  for (std::size_t i = 0; i < 64; ++i) {
    char c = hex[i];
    std::uint64_t v;
    if (c >= '0' && c <= '9') v = static_cast<std::uint64_t>(c - '0');
    else if (c >= 'a' && c <= 'f') v = static_cast<std::uint64_t>(c - 'a' + 10);
    else return std::nullopt;
    if (i < 16) fp = fp << 4 | v;  // the rest is only checked to be hex
  }
  return fp == 0 ? 1 : fp;
}

}  // namespace

std::shared_ptr<KeyFilter::Table> KeyFilter::make_table(std::size_t keys) {
  return std::make_shared<Table>(std::bit_ceil(std::max<std::size_t>(keys * 2, 16)));
}

bool KeyFilter::full(const Table& t) noexcept { return (t.size + 1) * 2 > t.slots.size(); }

std::shared_ptr<KeyFilter::Table> KeyFilter::grown(const Table& t) {
  auto bigger = make_table(t.slots.size());
  for (const auto& s : t.slots)
    if (auto v = s.load(std::memory_order_relaxed)) insert(*bigger, v);
  return bigger;
}

void KeyFilter::insert(Table& t, std::uint64_t fp) noexcept {
  // Fingerprints are uniform bits of SHA-256: their low bits are the slot.
  for (std::size_t i = fp & t.mask;; i = (i + 1) & t.mask) {
    std::uint64_t cur = t.slots[i].load(std::memory_order_relaxed);
    if (cur == fp) return;
    if (cur == 0) {
      t.slots[i].store(fp, std::memory_order_release);
      ++t.size;
      return;
    }
  }
}

void KeyFilter::load(std::size_t expected_keys, const std::function<void(const AddFn&)>& fill,
                     std::size_t min_capacity) {
  auto t = make_table(std::max(expected_keys, min_capacity));
  fill([&t](std::string_view k) {
    auto fp = fingerprint(k);
    if (!fp) return;
    if (full(*t)) t = grown(*t);  // more keys than counted
    insert(*t, *fp);
  });
  table_.store(std::move(t));
}

void KeyFilter::add(std::string_view key_hash_hex) {
  auto t = table_.load();
  auto fp = fingerprint(key_hash_hex);
  if (!t || !fp) return;
  if (full(*t)) {
    // Readers go on with the old table until the bigger one is installed.
    auto bigger = grown(*t);
    insert(*bigger, *fp);
    table_.store(std::move(bigger));
    return;
  }
  insert(*t, *fp);
}

bool KeyFilter::might_contain(std::string_view key_hash_hex) const noexcept {
  auto t = table_.load();
  if (!t) return true;
  auto fp = fingerprint(key_hash_hex);
  if (!fp) return false;
  for (std::size_t i = *fp & t->mask;; i = (i + 1) & t->mask) {
    std::uint64_t cur = t->slots[i].load(std::memory_order_acquire);
    if (cur == *fp) return true;
    if (cur == 0) return false;  // at most half full: an empty slot always comes
  }
}

std::size_t KeyFilter::size() const noexcept {
  auto t = table_.load();
  return t ? t->size : 0;
}

}  // namespace tollgate::keys
