#pragma once
// The set of every API key in api_keys, as 64-bit fingerprints of their key hashes, so that a key
// which does not exist (a flood of forged keys with valid checksums) is refused without a
// Postgres lookup. Loaded from Postgres at start and after every reconnect of the NOTIFY
// listener; keys created later are added from their NOTIFY (tollgate_api_keys carries the key
// hash). Deleted keys stay in until the next load (costing one lookup, then the negative cache).
//
// A fingerprint is the first 64 bits of the SHA-256 key hash, so a key that is not in api_keys
// passes only if its fingerprint equals one of the n stored ones: probability n / 2^64
// (5·10^-14 per forged key with a million keys). Memory: 8 bytes per slot, at most half full:
// 16 MiB for a million keys.
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
  /// Not ready: might_contain() answers true until the first load() completes.
  KeyFilter() = default;

  using AddFn = std::function<void(std::string_view key_hash_hex)>;
  /// Replaces the set with a new one sized for max(expected_keys, min_capacity) keys: `fill`
  /// calls the AddFn it is given with every key hash (64-char hex SHA-256, as api_keys stores
  /// them); the new set is installed when `fill` returns. load() and add() must not run on two
  /// threads at once (tollgate: the NOTIFY listener's thread); might_contain() may run anywhere.
  void load(std::size_t expected_keys, const std::function<void(const AddFn&)>& fill,
            std::size_t min_capacity = 1 << 15);
  /// Adds one key hash (a key created since the load); grows the set when it is half full.
  /// Ignored before the first load (the load will include it). Not hex: ignored.
  void add(std::string_view key_hash_hex);
  /// False if the key hash is certainly not in the set (also: not 64 hex chars). True while
  /// not ready. Lock-free; safe on any thread, concurrently with add() and load().
  bool might_contain(std::string_view key_hash_hex) const noexcept;
  bool ready() const noexcept { return table_.load() != nullptr; }
  /// Key hashes in the set (0 while not ready).
  std::size_t size() const noexcept;

 private:
  struct Table {
    explicit Table(std::size_t slots) : slots(slots), mask(slots - 1) {}
    std::vector<std::atomic<std::uint64_t>> slots;  ///< 0 = empty; linear probing
    std::size_t mask;
    std::size_t size = 0;  ///< written by the single writer only
  };
  static std::shared_ptr<Table> make_table(std::size_t keys);
  static void insert(Table& t, std::uint64_t fp) noexcept;
  /// One more key would make `t` more than half full (probes would get long).
  static bool full(const Table& t) noexcept;
  /// A table twice the size holding `t`'s fingerprints.
  static std::shared_ptr<Table> grown(const Table& t);
  std::atomic<std::shared_ptr<Table>> table_;
};

}  // namespace tollgate::keys
