#pragma once
// A Bloom filter over the key hashes of every API key in api_keys, so that keys which certainly
// do not exist (a flood of forged keys with valid checksums) are refused without a Postgres
// lookup. Loaded from Postgres at start and after every reconnect of the NOTIFY listener; keys
// created later are added from their NOTIFY (tollgate_api_keys carries the key hash). Deleted
// keys stay in until the next load (a false positive costs one lookup, then the negative cache).
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string_view>
#include <vector>

namespace tollgate::keys {

class KeyFilter {
 public:
  /// Bits per expected key and probes per key: ~1 % false positives at the expected count.
  static constexpr std::size_t bits_per_key = 10;
  static constexpr int probes = 7;

  /// Not ready: might_contain() answers true until the first load() completes.
  KeyFilter() = default;

  using AddFn = std::function<void(std::string_view key_hash_hex)>;
  /// Replaces the filter with a new one sized for max(2 × expected_keys, min_capacity) keys:
  /// `fill` calls the AddFn it is given with every key hash (64-char hex SHA-256, as api_keys
  /// stores them); the new filter is installed when `fill` returns. Thread-safe. ~1.25 bytes
  /// per key of capacity (2.5 MiB for a million keys).
  void load(std::size_t expected_keys, const std::function<void(const AddFn&)>& fill,
            std::size_t min_capacity = 1 << 20);
  /// Adds one key hash (a key created since the load). Thread-safe, lock-free.
  void add(std::string_view key_hash_hex) noexcept;
  /// False only if the key hash was certainly never added (or the hash is not 64 hex chars
  /// when the filter is ready). True while not ready. Thread-safe, lock-free.
  bool might_contain(std::string_view key_hash_hex) const noexcept;
  bool ready() const noexcept { return bits_.load() != nullptr; }
  /// Keys the current filter was sized for (0 while not ready).
  std::size_t capacity() const noexcept;

 private:
  struct Bits {
    explicit Bits(std::size_t nbits) : words((nbits + 63) / 64), capacity(nbits / bits_per_key) {}
    std::vector<std::atomic<std::uint64_t>> words;
    std::size_t capacity;
  };
  static void set(Bits& b, std::uint64_t h1, std::uint64_t h2) noexcept;
  std::atomic<std::shared_ptr<Bits>> bits_;
};

}  // namespace tollgate::keys
