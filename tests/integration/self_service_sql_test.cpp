// The SQL behind OpenRouter's self-service endpoints (sql/account_queries.hpp) on a real
// Postgres: a key's charges per calendar-UTC period at the boundaries (23:59:59.999999 vs
// 00:00:00, Monday, the 1st), the limit period, the account's credits against its ledger, and
// generations found by request id or generation id of the same account only.
#include "db_fixture.hpp"
#include "sql/account_queries.hpp"
#include "sql/usage_writer.hpp"

using namespace tollgate;
using namespace tollgate::test;

namespace {

/// Records one usage row (and its ledger row and balance debit) through record_usage(), as the
/// usage writer's replay does, created at `at` (a timestamptz literal) and charged `charge`.
std::string record(sql::PgConn& db, const std::string& user, const std::string& key_id, const std::string& at,
                   pricing::Micros charge, std::string request_metadata = R"({"stream":false})",
                   std::string response_metadata = "{}", std::string status = "success") {
  sql::UsageRecord r;
  r.request_id = unique("req_it");
  r.user_id = user;
  r.api_key_id = key_id;
  r.model = "it/model";
  r.prompt_tokens = 30;
  r.completion_tokens = 12;
  r.cached_tokens = 8;
  r.reasoning_tokens = 5;
  r.cost = charge / 2 + 7;  // the operator's cost: never what these queries report
  r.charge = charge;
  r.status = std::move(status);
  r.upstream = "it-upstream";
  r.upstream_cost = 123'000'000;
  r.request_metadata_json = std::move(request_metadata);
  r.response_metadata_json = std::move(response_metadata);
  r.created_at_us = db.exec("SELECT (extract(epoch FROM $1::timestamptz) * 1000000)::bigint", {at}).i64(0, 0);
  std::string batch = "[" + r.to_json() + "]";
  db.exec("SELECT * FROM record_usage($1::jsonb)", {batch});
  // Stored to the microsecond: the boundary rows are where they are meant to be.
  auto stored = db.exec("SELECT created_at = $2::timestamptz FROM usage_logs WHERE request_id = $1", {r.request_id, at});
  REQUIRE(stored.rows() == 1);
  REQUIRE(stored.boolean(0, 0));
  return r.request_id;
}

}  // namespace

TEST_CASE("key usage: calendar-UTC periods at their boundaries, the limit's own period", "[self_service][sql]") {
  sql::PgConn db(database_url());
  auto user = funded_account(db, "100");
  auto key = sql::create_key(db, user, std::string("period key"), 0);
  auto other_key = sql::create_key(db, user, std::nullopt, 0);
  auto stranger = funded_account(db, "100");
  auto stranger_key = sql::create_key(db, stranger, std::nullopt, 0);
  // "Now" is Wednesday 2026-03-04 12:00 UTC: the day began at 00:00, the ISO week on Monday
  // 2026-03-02, the month on Sunday 2026-03-01.
  const std::string now = "2026-03-04 12:00:00+00";
  record(db, user, key.key_id, "2026-03-04 00:00:00+00", 10);               // today, first µs
  record(db, user, key.key_id, "2026-03-03 23:59:59.999999+00", 1);         // yesterday, last µs
  record(db, user, key.key_id, "2026-03-02 00:00:00+00", 1'000);            // Monday: this week
  record(db, user, key.key_id, "2026-03-01 23:59:59.999999+00", 100);       // Sunday: last week, this month
  record(db, user, key.key_id, "2026-02-28 23:59:59.999999+00", 10'000);    // last month
  record(db, user, key.key_id, "2025-06-30 08:00:00+00", 1'000'000);        // long ago
  record(db, user, other_key.key_id, "2026-03-04 06:00:00+00", 500'000);    // the account's other key
  record(db, stranger, stranger_key.key_id, "2026-03-04 06:00:00+00", 700'000);

  auto u = sql::key_usage(db, key.key_id, user, now);
  REQUIRE(u);
  CHECK(u->label == "period key");
  CHECK(u->usage_daily == 10);
  CHECK(u->usage_weekly == 1'011);
  CHECK(u->usage_monthly == 1'111);
  CHECK(u->usage == 1'011'111);
  CHECK_FALSE(u->limit);
  CHECK(u->limit_reset == "never");
  CHECK(u->usage_in_period == u->usage);  // 'never': one period for ever
  CHECK_FALSE(u->expires_at);

  SECTION("the limit's period follows limit_reset") {
    for (auto [reset, expected] : {std::pair<std::string, pricing::Micros>{"daily", 10}, {"weekly", 1'011},
                                   {"monthly", 1'111}, {"never", 1'011'111}}) {
      CAPTURE(reset);
      db.exec("UPDATE api_keys SET spend_limit_usd = 0.002500, limit_reset = $2 WHERE id = $1::uuid",
              {key.key_id, reset});
      auto l = sql::key_usage(db, key.key_id, user, now);
      REQUIRE(l);
      CHECK(l->limit == 2'500);
      CHECK(l->limit_reset == reset);
      CHECK(l->usage_in_period == expected);
    }
  }
  SECTION("one microsecond before midnight: yesterday is \"today\", today's first row not yet made") {
    auto before = sql::key_usage(db, key.key_id, user, "2026-03-03 23:59:59.999999+00");
    REQUIRE(before);
    CHECK(before->usage_daily == 1);
    CHECK(before->usage_weekly == 1'001);
    CHECK(before->usage_monthly == 1'101);
    CHECK(before->usage == 1'011'101);  // all but today's 10
  }
  SECTION("on Sunday the week is the previous Monday's; on the 1st the month is new") {
    auto sunday = sql::key_usage(db, key.key_id, user, "2026-03-01 23:59:59.999999+00");
    REQUIRE(sunday);
    CHECK(sunday->usage_daily == 100);
    CHECK(sunday->usage_weekly == 10'100);  // Monday 2026-02-23 onwards: Feb 28 and Mar 1
    CHECK(sunday->usage_monthly == 100);
  }
  SECTION("unnamed keys are labelled by their prefix; expiry in ISO 8601 UTC") {
    db.exec("UPDATE api_keys SET expires_at = '2027-01-02 03:04:05.5+00' WHERE id = $1::uuid", {other_key.key_id});
    auto o = sql::key_usage(db, other_key.key_id, user, now);
    REQUIRE(o);
    CHECK(o->label == other_key.display_prefix);
    CHECK(o->usage == 500'000);
    CHECK(o->usage_daily == 500'000);
    CHECK(o->expires_at == "2027-01-02T03:04:05.500000Z");
  }
  SECTION("a key of another account is not found") {
    CHECK_FALSE(sql::key_usage(db, stranger_key.key_id, user, now));
    CHECK_FALSE(sql::key_usage(db, key.key_id, stranger, now));
  }
}

TEST_CASE("account credits: non-usage ledger rows, usage charges; credits − usage = balance", "[self_service][sql]") {
  sql::PgConn db(database_url());
  auto user = funded_account(db, "10");  // a purchase
  db.exec("SELECT add_credits($1::uuid, 2.5, 'welcome', 'bonus')", {user});
  db.exec("SELECT add_credits($1::uuid, -1.000001, 'partial refund', 'refund')", {user});
  auto key = sql::create_key(db, user, std::nullopt, 0);
  record(db, user, key.key_id, "2026-01-05 10:00:00+00", 1'234'567);
  record(db, user, key.key_id, "2026-02-05 10:00:00+00", 1);
  auto c = sql::account_credits(db, user);
  CHECK(c.total_credits == 11'499'999);
  CHECK(c.total_usage == 1'234'568);
  auto ledger = db.exec(
      "SELECT (-sum(amount) FILTER (WHERE transaction_type = 'usage') * 1000000)::bigint,"
      " (sum(amount) * 1000000)::bigint FROM credit_transactions WHERE user_id = $1::uuid",
      {user});
  CHECK(c.total_usage == ledger.i64(0, 0));
  CHECK(c.total_credits - c.total_usage == ledger.i64(0, 1));
  CHECK(c.total_credits - c.total_usage == *sql::balance_of(db, user));
  auto empty = funded_account(db, "0");
  auto e = sql::account_credits(db, empty);
  CHECK(e.total_credits == 0);
  CHECK(e.total_usage == 0);
}

TEST_CASE("generations: by request id or generation id, the same account's only", "[self_service][sql]") {
  sql::PgConn db(database_url());
  auto user = funded_account(db, "10");
  auto key = sql::create_key(db, user, std::nullopt, 0);
  auto stranger = funded_account(db, "10");
  const std::string gen_id = unique("gen-it");
  auto req = record(db, user, key.key_id, "2026-03-04 10:00:00.123456+00", 20'000,
                    R"({"endpoint":"/chat/completions","stream":true})",
                    R"({"generation_id":")" + gen_id + R"(","finish_reason":"stop","duration_us":1234999})");
  for (const std::string& id : {req, gen_id}) {
    CAPTURE(id);
    auto g = sql::find_generation(db, user, id);
    REQUIRE(g);
    CHECK(g->id == gen_id);
    CHECK(g->request_id == req);
    CHECK(g->model == "it/model");
    CHECK(g->upstream == "it-upstream");
    CHECK(g->tokens_prompt == 30);
    CHECK(g->tokens_completion == 12);
    CHECK(g->native_tokens_cached == 8);
    CHECK(g->native_tokens_reasoning == 5);
    CHECK(g->total_cost == 20'000);  // the charge, not cost_usd (10'007) nor upstream_cost_usd
    CHECK(g->streamed);
    CHECK_FALSE(g->cancelled);
    CHECK(g->finish_reason == "stop");
    CHECK(g->duration_ms == 1234);
    CHECK(g->created_at == "2026-03-04T10:00:00.123456Z");
    // Another account cannot see it by either id.
    CHECK_FALSE(sql::find_generation(db, stranger, id));
  }
  CHECK_FALSE(sql::find_generation(db, user, "gen-it-never-recorded"));

  SECTION("a client abort without generation id, finish reason or duration") {
    auto cut = record(db, user, key.key_id, "2026-03-04 11:00:00+00", 3, "{}", "{}", "client_aborted");
    auto g = sql::find_generation(db, user, cut);
    REQUIRE(g);
    CHECK(g->id == cut);  // no generation id: the request id stands in
    CHECK(g->cancelled);
    CHECK_FALSE(g->streamed);
    CHECK_FALSE(g->finish_reason);
    CHECK_FALSE(g->duration_ms);
  }
  SECTION("the lookups use the indexes of migration 0013") {
    db.exec("SET enable_seqscan = off");
    auto plan = [&](const char* q, const std::string& p) {
      auto r = db.exec(q, {p});
      std::string text;
      for (int i = 0; i < r.rows(); ++i) text += r.str(i, 0) + "\n";
      return text;
    };
    CHECK_THAT(plan("EXPLAIN SELECT request_id FROM usage_logs WHERE response_metadata->>'generation_id' = $1", gen_id),
               Catch::Contains("usage_logs_generation_id_idx"));
    CHECK_THAT(plan("EXPLAIN SELECT sum(credits_deducted) FROM usage_logs WHERE api_key_id = $1::uuid"
                    " AND created_at >= tollgate_period_start('daily', now())",
                    key.key_id),
               Catch::Contains("usage_logs_api_key_created_idx"));
    CHECK_THAT(plan("EXPLAIN SELECT sum(amount) FROM credit_transactions WHERE user_id = $1::uuid"
                    " AND transaction_type <> 'usage'",
                    user),
               Catch::Contains("credit_transactions_credits_idx"));
    db.exec("RESET enable_seqscan");
  }
}
