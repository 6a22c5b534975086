#include "keys/key_cache.hpp"

#include <catch2/catch.hpp>

using namespace tollgate::keys;
using namespace std::chrono_literals;

namespace {
KeyCache::Record rec(std::string user) {
  auto r = std::make_shared<KeyRecord>();
  r->user_id = std::move(user);
  r->is_active = true;
  return r;
}
}  // namespace

TEST_CASE("hits, misses, TTL and negative entries") {
  KeyCache c(100, 1000ms, 100ms);
  auto t0 = KeyCache::Clock::now();
  CHECK_FALSE(c.find("h1", t0));
  c.put("h1", rec("u1"), c.generation(), t0);
  c.put("h2", nullptr, c.generation(), t0);
  REQUIRE(c.find("h1", t0 + 10ms));
  CHECK((*c.find("h1", t0 + 10ms))->user_id == "u1");
  REQUIRE(c.find("h2", t0 + 10ms));
  CHECK(*c.find("h2", t0 + 10ms) == nullptr);  // cached "no such key"
  CHECK_FALSE(c.find("h2", t0 + 200ms));        // negative TTL is shorter
  CHECK(c.find("h1", t0 + 500ms));
  CHECK_FALSE(c.find("h1", t0 + 1500ms));
}

TEST_CASE("an invalidation during a lookup keeps the stale result out") {
  KeyCache c(100, 10s, 1s);
  auto now = KeyCache::Clock::now();
  auto gen = c.generation();  // lookup starts
  c.erase("h1");              // NOTIFY: the key was revoked meanwhile
  c.put("h1", rec("u1"), gen, now);
  CHECK_FALSE(c.find("h1", now));
}

TEST_CASE("erase_user drops every key of the account; capacity is bounded") {
  KeyCache c(64, 10s, 1s);
  auto now = KeyCache::Clock::now();
  for (int i = 0; i < 1000; ++i) c.put("h" + std::to_string(i), rec(i % 2 ? "odd" : "even"), c.generation(), now);
  CHECK(c.size() <= 64 + 16);
  c.erase_user("odd");
  for (int i = 0; i < 1000; ++i)
    if (auto r = c.find("h" + std::to_string(i), now)) CHECK((*r)->user_id == "even");
  c.clear();
  CHECK(c.size() == 0);
}

TEST_CASE("usable_at honours revocation and expiry") {
  KeyRecord k;
  k.is_active = true;
  CHECK(k.usable_at(1000));
  k.expires_at_unix = 1000;
  CHECK(k.usable_at(999));
  CHECK_FALSE(k.usable_at(1000));
  k.expires_at_unix = 0;
  k.is_active = false;
  CHECK_FALSE(k.usable_at(0));
}

TEST_CASE("stale-if-error: an expired key is served only by find_stale, within the bound") {
  KeyCache c(100, 60s, 5s);  // the default stale bound: 10 min after the 60 s TTL
  auto t0 = KeyCache::Clock::now();
  c.put("h1", rec("u1"), c.generation(), t0);
  CHECK(c.find_stale("h1", t0 + 1s));  // also while fresh (a lookup that failed anyway)
  auto expired = t0 + 61s + KeyCache::stale_recheck;
  CHECK_FALSE(c.find("h1", expired));  // expired: look it up
  auto stale = c.find_stale("h1", expired);  // ... the lookup failed
  REQUIRE(stale);
  CHECK(stale->user_id == "u1");
  CHECK(c.stale_served() == 2);
  // Within the bound, but past the TTL by the default stale_if_error: gone for good.
  auto last = t0 + 60s + KeyCache::default_stale_if_error - 1ms;
  CHECK(c.find_stale("h1", last));
  CHECK_FALSE(c.find_stale("h1", t0 + 60s + KeyCache::default_stale_if_error));
  CHECK_FALSE(c.find_stale("h1", last));  // dropped when found past its bound
  CHECK(c.size() == 0);
}

TEST_CASE("stale-if-error: a stale record is re-checked once per stale_recheck, not per request") {
  KeyCache c(100, 1s, 1s, 10s);
  auto t0 = KeyCache::Clock::now();
  c.put("h1", rec("u1"), c.generation(), t0);
  auto t1 = t0 + 2s;
  CHECK_FALSE(c.find("h1", t1));
  REQUIRE(c.find_stale("h1", t1));
  CHECK(c.find("h1", t1 + KeyCache::stale_recheck - 1ms));  // no lookup for a while
  CHECK_FALSE(c.find("h1", t1 + KeyCache::stale_recheck));  // then Postgres is asked again
  // Re-arming never reaches past the bound (1 s TTL + 10 s).
  auto near_end = t0 + 11s - 100ms;
  REQUIRE(c.find_stale("h1", near_end));
  CHECK(c.find("h1", near_end + 50ms));
  CHECK_FALSE(c.find("h1", t0 + 11s));
  CHECK_FALSE(c.find_stale("h1", t0 + 11s));
}

TEST_CASE("stale-if-error: revocations and reconnects end it; no such key stays unknown") {
  KeyCache c(100, 1s, 1s);
  auto t0 = KeyCache::Clock::now();
  auto later = t0 + 5s;  // every entry below has expired
  c.put("revoked", rec("u1"), c.generation(), t0);
  c.put("account", rec("u2"), c.generation(), t0);
  c.put("kept", rec("u3"), c.generation(), t0);
  c.put("unknown", nullptr, c.generation(), t0);
  c.erase("revoked");         // NOTIFY on api_keys
  c.erase_user("u2");         // NOTIFY on the account
  CHECK_FALSE(c.find_stale("revoked", later));
  CHECK_FALSE(c.find_stale("account", later));
  CHECK_FALSE(c.find_stale("unknown", later));  // a cached "no such key" is never served
  CHECK_FALSE(c.find_stale("never-seen", later));
  CHECK(c.find_stale("kept", later));
  c.clear();                  // the listener reconnected after an outage
  CHECK_FALSE(c.find_stale("kept", later));
}

TEST_CASE("stale-if-error: 0 turns it off") {
  KeyCache c(100, 1s, 1s, 0ms);
  auto t0 = KeyCache::Clock::now();
  c.put("h1", rec("u1"), c.generation(), t0);
  CHECK(c.find_stale("h1", t0 + 500ms));
  CHECK_FALSE(c.find_stale("h1", t0 + 1s));
}

TEST_CASE("capacity pressure evicts stale entries before fresh ones") {
  KeyCache c(16, 1s, 1s, 10s);  // 2 entries per shard
  auto t0 = KeyCache::Clock::now();
  for (int i = 0; i < 200; ++i) c.put("old" + std::to_string(i), rec("u"), c.generation(), t0);
  auto t1 = t0 + 2s;  // every "old" entry is stale now (still within its 11 s bound)
  for (int i = 0; i < 200; ++i) c.put("new" + std::to_string(i), rec("u"), c.generation(), t1);
  CHECK(c.size() <= 32);
  std::size_t fresh = 0, stale = 0;
  for (int i = 0; i < 200; ++i) {
    fresh += c.find("new" + std::to_string(i), t1).has_value();
    stale += c.find_stale("old" + std::to_string(i), t1) != nullptr;
  }
  CHECK(stale == 0);
  CHECK(fresh == c.size());
}
