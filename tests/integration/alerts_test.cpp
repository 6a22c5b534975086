// Operator alerts in Postgres (migration 0014, sql/alert_outbox.hpp): balance.low is written by
// the transaction that moves the balance across the account's threshold, once per crossing; the
// outbox is claimed FOR UPDATE SKIP LOCKED (two claimers take disjoint rows, neither waits);
// failures are retried, then abandoned 24 h after the event.
#include "db_fixture.hpp"
#include "sql/alert_outbox.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <set>

using namespace tollgate;
using namespace tollgate::test;
using namespace std::chrono_literals;

namespace {

std::int64_t low_alerts(sql::PgConn& db, const std::string& user) {
  return db.exec("SELECT count(*) FROM alert_outbox WHERE account = $1 AND type = 'balance.low'", {user}).i64(0, 0);
}

/// One usage charge of `micros` through record_usage() (the usage writer's SQL path).
void spend(sql::PgConn& db, const std::string& user, std::int64_t micros) {
  auto payload = fmt::format(
      R"([{{"request_id":"{}","user_id":"{}","model":"it/alerts","prompt_tokens":1,"completion_tokens":1,)"
      R"("cost_usd":"0","credits_deducted":"{}.{:06}","status":"success","created_at_us":1700000000000000}}])",
      unique("req_alert_"), user, micros / 1'000'000, micros % 1'000'000);
  CHECK(db.exec("SELECT coalesce(sum(inserted), 0)::bigint FROM record_usage($1::jsonb)", {payload}).i64(0, 0) == 1);
}

void cleanup(sql::PgConn& db, const std::string& user) {
  db.exec("DELETE FROM alert_outbox WHERE account = $1", {user});
}

}  // namespace

TEST_CASE("balance.low: once per crossing of the threshold, re-armed above it", "[alerts]") {
  sql::PgConn db(database_url());
  auto user = funded_account(db, "1");
  sql::set_low_balance_alert(db, user, "0.5");
  spend(db, user, 400'000);  // 1 → 0.6: above
  CHECK(low_alerts(db, user) == 0);
  spend(db, user, 100'000);  // 0.6 → 0.5: at the threshold is not below it
  CHECK(low_alerts(db, user) == 0);
  spend(db, user, 1);        // 0.5 → 0.499999: crossed
  CHECK(low_alerts(db, user) == 1);
  auto row = db.exec("SELECT event_id, payload->>'balance_usd', payload->>'threshold_usd', payload->>'account',"
                     " delivered_at IS NULL, attempts FROM alert_outbox WHERE account = $1",
                     {user});
  REQUIRE(row.rows() == 1);
  CHECK(row.str(0, 0).starts_with("evt_"));
  CHECK(row.str(0, 1) == "0.499999");
  CHECK(row.str(0, 2) == "0.500000");
  CHECK(row.str(0, 3) == user);
  CHECK(row.boolean(0, 4));
  CHECK(row.i64(0, 5) == 0);
  spend(db, user, 100'000);  // down further: no second alert
  sql::add_credits(db, user, "-0.1", std::string("refund"));
  CHECK(low_alerts(db, user) == 1);
  sql::add_credits(db, user, "0.05", std::string("small top-up, still below"));
  spend(db, user, 1);
  CHECK(low_alerts(db, user) == 1);
  sql::add_credits(db, user, "1", std::string("top-up: re-armed"));
  CHECK(low_alerts(db, user) == 1);
  spend(db, user, 1'000'000);  // down across it again: a second alert
  CHECK(low_alerts(db, user) == 2);
  // The two events have distinct ids; an account whose threshold was removed gets none.
  CHECK(db.exec("SELECT count(DISTINCT event_id) FROM alert_outbox WHERE account = $1", {user}).i64(0, 0) == 2);
  auto other = funded_account(db, "1");
  sql::set_low_balance_alert(db, other, "0.5");
  sql::set_low_balance_alert(db, other, std::nullopt);
  CHECK(db.exec("SELECT low_balance_alert_usd IS NULL FROM balances WHERE user_id = $1", {other}).boolean(0, 0));
  spend(db, other, 999'999);
  CHECK(low_alerts(db, other) == 0);
  cleanup(db, user);
}

TEST_CASE("balance.low: a rolled-back debit leaves no alert", "[alerts]") {
  sql::PgConn db(database_url());
  auto user = funded_account(db, "1");
  db.exec("UPDATE balances SET low_balance_alert_usd = 0.5 WHERE user_id = $1", {user});
  db.exec("BEGIN");
  db.exec("UPDATE balances SET credits = 0.1 WHERE user_id = $1", {user});
  CHECK(low_alerts(db, user) == 1);
  db.exec("ROLLBACK");
  CHECK(low_alerts(db, user) == 0);
}

TEST_CASE("outbox claims: two connections take disjoint rows, neither waits for the other", "[alerts]") {
  auto url = database_url();
  sql::PgConn a(url), b(url, 2s);  // b blocking on a's locks would fail on its statement timeout
  auto user = funded_account(a, "1");
  std::set<std::int64_t> mine;
  for (int i = 0; i < 6; ++i) {
    REQUIRE(sql::insert_alert(a, unique("evt_it_"), "balance.low", user, R"({"n":1})"));
    mine.insert(a.exec("SELECT currval('alert_outbox_id_seq')").i64(0, 0));
  }
  // Oldest due first: these six come before any other test's rows.
  a.exec("UPDATE alert_outbox SET next_attempt_at = '2000-01-01' WHERE account = $1", {user});
  a.exec("BEGIN");
  auto first = sql::claim_due_alerts(a, 3, 60s);  // locked until a commits
  REQUIRE(first.size() == 3);
  auto second = sql::claim_due_alerts(b, 1000, 60s);
  std::set<std::int64_t> ids_a, ids_b;
  for (auto& r : first) ids_a.insert(r.id);
  for (auto& r : second) ids_b.insert(r.id);
  for (auto id : ids_a) {
    CHECK(mine.contains(id));
    CHECK_FALSE(ids_b.contains(id));
  }
  for (auto id : mine) CHECK((ids_a.contains(id) || ids_b.contains(id)));
  a.exec("COMMIT");
  // Leased by the claims: nobody claims them again before the lease ends, unless released.
  for (auto& r : sql::claim_due_alerts(b, 1000, 60s)) CHECK_FALSE(mine.contains(r.id));
  sql::release_alerts(a, {first[0].id});
  auto again = sql::claim_due_alerts(b, 1000, 60s);
  CHECK(std::count_if(again.begin(), again.end(), [&](auto& r) { return mine.contains(r.id); }) == 1);
  CHECK(std::any_of(again.begin(), again.end(), [&](auto& r) { return r.id == first[0].id; }));
  cleanup(a, user);
}

TEST_CASE("outbox: delivered rows are done; failures are retried, then abandoned 24 h after the event",
          "[alerts]") {
  sql::PgConn db(database_url());
  auto user = funded_account(db, "1");
  auto ev = unique("evt_it_");
  REQUIRE(sql::insert_alert(db, ev, "spend_limit.reached", user, R"({"scope":"key"})"));
  CHECK_FALSE(sql::insert_alert(db, ev, "spend_limit.reached", user, R"({"scope":"key"})"));  // one per event id
  auto id = db.exec("SELECT id FROM alert_outbox WHERE event_id = $1", {ev}).i64(0, 0);
  CHECK_FALSE(sql::mark_alert_failed(db, id, "HTTP 500", 5000ms, 24h));
  auto r = db.exec("SELECT attempts, last_error, extract(epoch FROM next_attempt_at - now()) FROM alert_outbox"
                   " WHERE id = $1",
                   {std::to_string(id)});
  CHECK(r.i64(0, 0) == 1);
  CHECK(r.str(0, 1) == "HTTP 500");
  CHECK(std::stod(r.str(0, 2)) == Approx(5.0).margin(0.5));
  // Created 23 h 59 m ago: a retry in 2 minutes would come after 24 h, so it is abandoned.
  db.exec("UPDATE alert_outbox SET created_at = now() - interval '23 hours 59 minutes' WHERE id = $1",
          {std::to_string(id)});
  CHECK(sql::mark_alert_failed(db, id, "HTTP 503", 120'000ms, 24h));
  db.exec("UPDATE alert_outbox SET next_attempt_at = '2000-01-01' WHERE id = $1", {std::to_string(id)});
  for (auto& a : sql::claim_due_alerts(db, 1000, 1ms)) CHECK(a.id != id);
  cleanup(db, user);
}
