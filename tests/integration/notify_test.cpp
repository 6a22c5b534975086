// LISTEN/NOTIFY keeps the key cache and pricing true: a revoked key is gone within 1 s.
#include "db_fixture.hpp"
#include "keys/api_key.hpp"
#include "keys/key_cache.hpp"
#include "sql/notify_listener.hpp"

#include <atomic>
#include <thread>

using namespace tollgate;
using namespace tollgate::test;
using namespace std::chrono_literals;

TEST_CASE("revoking a key drops it from the cache within 1 s; price changes reload") {
  auto url = database_url();
  sql::PgConn db(url);
  keys::KeyCache cache(1000, 60s, 5s);
  std::atomic<int> pricing_reloads{0};
  sql::NotifyListener listener(
      url,
      [&](sql::PgConn&, const std::string& channel, const std::string& payload) {
        if (channel == "tollgate_api_keys") cache.erase(payload);
        if (channel == "tollgate_accounts") cache.erase_user(payload);
        if (channel == "tollgate_pricing") ++pricing_reloads;
      },
      [&](sql::PgConn&) { cache.clear(); });
  listener.start();

  auto user = funded_account(db, "1");
  auto k = sql::create_key(db, user, std::nullopt, 0);
  auto hash = keys::hash_key(k.raw_key);
  std::this_thread::sleep_for(300ms);  // let the INSERT's notification pass (it invalidates)
  auto now = keys::KeyCache::Clock::now();
  cache.put(hash, std::make_shared<const keys::KeyRecord>(*sql::lookup_key(db, hash)), cache.generation(), now);
  REQUIRE(cache.find(hash, now));

  // last_used_at updates (every usage batch) must not invalidate.
  db.exec("UPDATE api_keys SET last_used_at = now() WHERE id = $1", {k.key_id});
  std::this_thread::sleep_for(300ms);
  CHECK(cache.find(hash, keys::KeyCache::Clock::now()));

  auto t0 = std::chrono::steady_clock::now();
  sql::revoke_key(db, k.key_id);
  while (cache.find(hash, keys::KeyCache::Clock::now()) && std::chrono::steady_clock::now() - t0 < 2s)
    std::this_thread::sleep_for(5ms);
  auto elapsed = std::chrono::steady_clock::now() - t0;
  CHECK_FALSE(cache.find(hash, keys::KeyCache::Clock::now()));
  CHECK(elapsed < 1s);
  WARN("revocation reached the cache in " << std::chrono::duration_cast<std::chrono::milliseconds>(elapsed).count() << " ms");

  int before = pricing_reloads;
  db.exec("UPDATE pricing_rules SET updated_at = now() WHERE false");  // statement-level trigger fires anyway
  auto t1 = std::chrono::steady_clock::now();
  while (pricing_reloads == before && std::chrono::steady_clock::now() - t1 < 2s) std::this_thread::sleep_for(5ms);
  CHECK(pricing_reloads > before);
  listener.stop();
}
