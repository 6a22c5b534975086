#include "keys/key_cache.hpp"

#include <algorithm>
#include <functional>

namespace tollgate::keys {

KeyCache::KeyCache(std::size_t capacity, std::chrono::milliseconds ttl, std::chrono::milliseconds negative_ttl,
                   std::chrono::milliseconds stale_if_error)
    : per_shard_capacity_(capacity / shard_count + 1), ttl_(ttl), negative_ttl_(negative_ttl),
      stale_if_error_(std::max(stale_if_error, std::chrono::milliseconds(0))) {}

KeyCache::Shard& KeyCache::shard_for(const std::string& key_hash) {
  return shards_[std::hash<std::string>{}(key_hash) % shard_count];
}

std::optional<KeyCache::Record> KeyCache::find(const std::string& key_hash, Clock::time_point now) {
  Shard& s = shard_for(key_hash);
  std::lock_guard lock(s.mu);
  auto it = s.map.find(key_hash);
  if (it == s.map.end()) return std::nullopt;
  if (it->second.expires <= now) {
    if (it->second.stale_until <= now) s.map.erase(it);  // else kept for find_stale()
    return std::nullopt;
  }
  return it->second.rec;
}

KeyCache::Record KeyCache::find_stale(const std::string& key_hash, Clock::time_point now) {
  Shard& s = shard_for(key_hash);
  std::lock_guard lock(s.mu);
  auto it = s.map.find(key_hash);
  if (it == s.map.end() || !it->second.rec) return nullptr;
  Entry& e = it->second;
  if (e.stale_until <= now) {
    s.map.erase(it);
    return nullptr;
  }
  // Postgres is failing: the next stale_recheck of requests use the record without a lookup.
  e.expires = std::max(e.expires, std::min(now + stale_recheck, e.stale_until));
  stale_served_.fetch_add(1, std::memory_order_relaxed);
  return e.rec;
}

void KeyCache::put(const std::string& key_hash, Record rec, std::uint64_t gen,
                   Clock::time_point now) {
  Shard& s = shard_for(key_hash);
  std::lock_guard lock(s.mu);
  // Checked under the shard lock: erase() bumps the generation under the same lock.
  if (generation_.load(std::memory_order_acquire) != gen) return;
  if (s.map.size() >= per_shard_capacity_ && !s.map.contains(key_hash)) {
    // Bounded: evict entries past any use first, then merely stale ones, else an arbitrary one.
    for (auto it = s.map.begin(); it != s.map.end();)
      it = it->second.stale_until <= now ? s.map.erase(it) : std::next(it);
    for (auto it = s.map.begin(); it != s.map.end() && s.map.size() >= per_shard_capacity_;)
      it = it->second.expires <= now ? s.map.erase(it) : std::next(it);
    if (s.map.size() >= per_shard_capacity_) s.map.erase(s.map.begin());
  }
  auto expires = now + (rec ? ttl_ : negative_ttl_);
  auto stale_until = rec ? expires + stale_if_error_ : expires;
  s.map.insert_or_assign(key_hash, Entry{std::move(rec), expires, stale_until});
}

void KeyCache::erase(const std::string& key_hash) {
  Shard& s = shard_for(key_hash);
  std::lock_guard lock(s.mu);
  generation_.fetch_add(1, std::memory_order_acq_rel);
  s.map.erase(key_hash);
}

void KeyCache::erase_user(std::string_view user_id) {
  for (auto& s : shards_) {
    std::lock_guard lock(s.mu);
    generation_.fetch_add(1, std::memory_order_acq_rel);
    std::erase_if(s.map, [&](const auto& kv) { return kv.second.rec && kv.second.rec->user_id == user_id; });
  }
}

void KeyCache::clear() {
  for (auto& s : shards_) {
    std::lock_guard lock(s.mu);
    generation_.fetch_add(1, std::memory_order_acq_rel);
    s.map.clear();
  }
}

std::size_t KeyCache::size() const {
  std::size_t n = 0;
  for (auto& s : shards_) {
    std::lock_guard lock(s.mu);
    n += s.map.size();
  }
  return n;
}

}  // namespace tollgate::keys
