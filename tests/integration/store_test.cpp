// Postgres: migrations, key lookup, operator commands.
#include "db_fixture.hpp"
#include "keys/api_key.hpp"

using namespace tollgate;
using namespace tollgate::test;

TEST_CASE("migrate is idempotent") {
  sql::PgConn db(database_url());
  sql::migrate(db);                   // tests/run.sh migrated already
  CHECK(sql::migrate(db).empty());    // nothing left to apply
  auto n = db.exec("SELECT count(*) FROM schema_migrations").i64(0, 0);
  CHECK(n == static_cast<std::int64_t>(sql::embedded_migrations().size()));
}

TEST_CASE("a created key is found by its hash; only hash and prefix are stored") {
  sql::PgConn db(database_url());
  auto user = funded_account(db, "1");
  auto k = sql::create_key(db, user, std::string("ci"), 0);
  REQUIRE(keys::is_well_formed(k.raw_key));
  auto rec = sql::lookup_key(db, keys::hash_key(k.raw_key));
  REQUIRE(rec);
  CHECK(rec->user_id == user);
  CHECK(rec->key_id == k.key_id);
  CHECK(rec->is_active);
  CHECK(rec->expires_at_unix == 0);
  CHECK(rec->account_limits.requests_per_minute > 0);  // the account's rate_limits row exists
  // The raw key is nowhere in the row.
  auto row = db.exec("SELECT row_to_json(k)::text FROM api_keys k WHERE id = $1", {k.key_id}).str(0, 0);
  CHECK(row.find(k.raw_key) == std::string::npos);
  CHECK(row.find(k.raw_key.substr(11)) == std::string::npos);
  CHECK_FALSE(sql::lookup_key(db, keys::hash_key(keys::generate_key().raw)));
}

TEST_CASE("revoke by prefix or id; expiry is stored") {
  sql::PgConn db(database_url());
  auto user = funded_account(db, "1");
  auto a = sql::create_key(db, user, std::nullopt, 0);
  auto b = sql::create_key(db, user, std::nullopt, 30);
  CHECK(sql::revoke_key(db, a.display_prefix) == 1);
  CHECK_FALSE(sql::lookup_key(db, keys::hash_key(a.raw_key))->is_active);
  CHECK(sql::revoke_key(db, b.key_id) == 1);
  auto rb = sql::lookup_key(db, keys::hash_key(b.raw_key));
  CHECK_FALSE(rb->is_active);
  CHECK(rb->expires_at_unix > std::time(nullptr) + 29 * 86400);
  CHECK(sql::revoke_key(db, "tg_nosuchkey") == 0);
  auto listed = sql::list_keys(db, user);
  REQUIRE(listed.size() == 2);
  CHECK(listed[0].status == "revoked");
}

TEST_CASE("operator input errors are clear") {
  sql::PgConn db(database_url());
  CHECK_THROWS_AS(sql::create_account(db, "not-an-email"), std::invalid_argument);
  auto email = unique("dup") + "@example.com";
  sql::create_account(db, email);
  CHECK_THROWS_AS(sql::create_account(db, email), std::invalid_argument);
  CHECK_THROWS_AS(sql::resolve_account(db, "nobody@example.com"), std::invalid_argument);
  auto user = sql::resolve_account(db, email);
  CHECK_THROWS_AS(sql::add_credits(db, user, "abc", std::nullopt), std::invalid_argument);
  CHECK_THROWS_AS(sql::add_credits(db, user, "0.0000001", std::nullopt), std::invalid_argument);
  CHECK_THROWS_AS(sql::add_credits(db, user, "0", std::nullopt), std::invalid_argument);
  CHECK(sql::add_credits(db, user, "2.5", std::string("x")) == "2.500000");
  CHECK(sql::add_credits(db, user, "-0.5", std::nullopt) == "2.000000");
}
