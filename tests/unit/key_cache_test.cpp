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
