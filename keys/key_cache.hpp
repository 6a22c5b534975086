#pragma once
// In-process cache of API key records, keyed by key hash.
//
// Bounded (capacity entries, sharded) with a TTL for hits and a shorter one for "no such key".
// Postgres stays the authority: the LISTEN/NOTIFY listener erases entries when a key changes,
// and a generation counter stops a lookup that raced with an invalidation from re-inserting a
// stale record (put() is ignored if any invalidation happened since the lookup began).
//
// Stale-if-error (RFC 5861's idea, for key records): an expired hit is kept `stale_if_error`
// longer, and find_stale() hands it out only when the Postgres lookup that should have
// refreshed it failed. Bound: a key is used at most ttl + stale_if_error after Postgres last
// confirmed it (60 s + 10 min by default), and only while lookups fail. erase(), erase_user()
// and clear() drop stale entries too, so a revocation NOTIFY, or the listener's reconnect
// after an outage (which clears everything), ends it at once.
#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

namespace tollgate::keys {

/// Rate limits that apply to a key (per-key override, else the account's `rate_limits` row).
/// 0 means unlimited.
struct Limits {
  std::int64_t requests_per_minute = 0;
  std::int64_t requests_per_hour = 0;
  std::int64_t requests_per_day = 0;
  std::int64_t tokens_per_minute = 0;
  std::int64_t max_tokens_per_request = 0;
};

/// When a spend limit starts over (api_keys.limit_reset, rate_limits.limit_reset): calendar
/// UTC periods, as OpenRouter's key budgets.
enum class LimitReset { never, daily, weekly, monthly };

/// A spend limit: at most `limit` credit units (1e-6 USD) charged per period; `limit` < 0 = none.
struct SpendLimit {
  std::int64_t limit = -1;
  LimitReset reset = LimitReset::never;
  bool set() const noexcept { return limit >= 0; }
};

/// What the request path needs to know about an API key (from Postgres `api_keys`).
struct KeyRecord {
  std::string key_id;       ///< api_keys.id (uuid text)
  std::string user_id;      ///< api_keys.user_id (uuid text): the account
  std::string key_prefix;   ///< display prefix, safe to log
  bool is_active = false;
  std::int64_t expires_at_unix = 0;  ///< seconds since epoch; 0 = never expires
  Limits key_limits;                 ///< limits of this key (overrides merged in)
  Limits account_limits;             ///< limits of the whole account
  std::int64_t overdraft_micros = 0; ///< balance may go this far below zero (credit units)
  SpendLimit key_spend;      ///< api_keys.spend_limit_usd / limit_reset
  SpendLimit account_spend;  ///< rate_limits.spend_limit_usd / limit_reset (the account's)

  /// True if the key may be used at `now_unix` (active and not expired).
  bool usable_at(std::int64_t now_unix) const noexcept {
    return is_active && (expires_at_unix == 0 || now_unix < expires_at_unix);
  }
};

class KeyCache {
 public:
  using Clock = std::chrono::steady_clock;
  using Record = std::shared_ptr<const KeyRecord>;

  /// Default of `stale_if_error` (config keys.stale_if_error_ms).
  static constexpr std::chrono::milliseconds default_stale_if_error{600'000};
  /// While Postgres fails, a key served stale is not looked up again for this long (one
  /// failing lookup per key and second, not one per request), never past its stale bound.
  static constexpr std::chrono::milliseconds stale_recheck{1'000};

  /// `capacity` entries in all; `ttl` for keys, `negative_ttl` for "no such key";
  /// `stale_if_error` how long after `ttl` a key may still be served when lookups fail
  /// (0 = never).
  KeyCache(std::size_t capacity, std::chrono::milliseconds ttl, std::chrono::milliseconds negative_ttl,
           std::chrono::milliseconds stale_if_error = default_stale_if_error);

  /// nullopt: not cached (look it up). A null Record: cached "no such key".
  std::optional<Record> find(const std::string& key_hash, Clock::time_point now);

  /// Stale-if-error: call only after the Postgres lookup of `key_hash` failed. The key's
  /// record if Postgres confirmed it at most ttl + stale_if_error before `now` (and no
  /// invalidation dropped it since), else null. A record handed out is then found by find()
  /// for stale_recheck (bounded by the same limit). Never returns a cached "no such key".
  Record find_stale(const std::string& key_hash, Clock::time_point now);

  /// Invalidation generation; read it before a Postgres lookup and pass it to put().
  std::uint64_t generation() const noexcept { return generation_.load(std::memory_order_acquire); }

  /// Caches a lookup result (null = no such key) unless an invalidation happened since `gen`.
  void put(const std::string& key_hash, Record rec, std::uint64_t gen, Clock::time_point now);

  /// Drops one key (NOTIFY on api_keys carries the key hash).
  void erase(const std::string& key_hash);
  /// Drops every key of an account (limits or overdraft of the account changed).
  void erase_user(std::string_view user_id);
  /// Drops everything (listener reconnected: notifications may have been missed).
  void clear();

  std::size_t size() const;
  /// How many times find_stale() handed out a record (for /metrics).
  std::uint64_t stale_served() const noexcept { return stale_served_.load(std::memory_order_relaxed); }

 private:
  struct Entry {
    Record rec;
    Clock::time_point expires;      ///< fresh until then
    Clock::time_point stale_until;  ///< find_stale() may use it until then (= expires if negative)
  };
  struct Shard {
    mutable std::mutex mu;
    std::unordered_map<std::string, Entry> map;
  };
  static constexpr std::size_t shard_count = 16;
  Shard& shard_for(const std::string& key_hash);

  std::array<Shard, shard_count> shards_;
  std::size_t per_shard_capacity_;
  std::chrono::milliseconds ttl_;
  std::chrono::milliseconds negative_ttl_;
  std::chrono::milliseconds stale_if_error_;
  std::atomic<std::uint64_t> generation_{0};
  std::atomic<std::uint64_t> stale_served_{0};
};

}  // namespace tollgate::keys
