// Phase 8 against real Postgres: one usage row + one ledger row + the balance debit per request,
// in one transaction; replays charge once; the journal survives a dead Postgres and a restart.
#include "db_fixture.hpp"
#include "sql/usage_writer.hpp"

#include <filesystem>
#include <thread>

using namespace tollgate;
using namespace tollgate::test;
using namespace std::chrono_literals;

namespace {
sql::UsageRecord usage(const std::string& user, const std::string& request_id, pricing::Micros charge) {
  sql::UsageRecord r;
  r.request_id = request_id;
  r.user_id = user;
  r.model = "it/model \"quoted\"";
  r.prompt_tokens = 10;
  r.completion_tokens = 5;
  r.cost = charge / 2;
  r.charge = charge;
  r.status = "success";
  r.created_at_us = 1'700'000'000'000'000;
  return r;
}

std::string batch(const std::vector<sql::UsageRecord>& rs) {
  std::string s = "[";
  for (std::size_t i = 0; i < rs.size(); ++i) s += (i ? "," : "") + rs[i].to_json();
  return s + "]";
}

/// balance = Σ ledger, and Σ usage ledger = −Σ usage_logs.credits_deducted (micro-dollars).
void check_conservation(sql::PgConn& db, const std::string& user) {
  auto r = db.exec(
      "SELECT (b.credits * 1000000)::bigint,"
      " (SELECT coalesce(sum(amount), 0) * 1000000 FROM credit_transactions WHERE user_id = $1)::bigint,"
      " (SELECT coalesce(sum(amount), 0) * 1000000 FROM credit_transactions WHERE user_id = $1 AND transaction_type = 'usage')::bigint,"
      " (SELECT coalesce(sum(credits_deducted), 0) * 1000000 FROM usage_logs WHERE user_id = $1)::bigint"
      " FROM balances b WHERE b.user_id = $1",
      {user});
  REQUIRE(r.rows() == 1);
  CHECK(r.i64(0, 0) == r.i64(0, 1));
  CHECK(r.i64(0, 2) == -r.i64(0, 3));
}

std::int64_t micros_balance(sql::PgConn& db, const std::string& user) { return *sql::balance_of(db, user); }

/// Records a batch; returns how many records were new.
std::int64_t inserted(sql::PgConn& db, const std::string& payload) {
  return db.exec("SELECT coalesce(sum(inserted), 0)::bigint FROM record_usage($1::jsonb)", {payload}).i64(0, 0);
}
}  // namespace

TEST_CASE("record_usage: usage row, ledger row and debit together; a replay charges once") {
  sql::PgConn db(database_url());
  auto user = funded_account(db, "1");
  std::vector<sql::UsageRecord> rs{usage(user, unique("req_"), 1234), usage(user, unique("req_"), 1),
                                   usage(user, unique("req_"), 500000)};
  CHECK(inserted(db, batch(rs)) == 3);
  CHECK(micros_balance(db, user) == 1'000'000 - 1234 - 1 - 500000);
  auto ledger = db.exec("SELECT (amount * 1000000)::bigint, (balance_after * 1000000)::bigint FROM credit_transactions"
                        " WHERE user_id = $1 AND transaction_type = 'usage' ORDER BY created_at, request_id",
                        {user});
  REQUIRE(ledger.rows() == 3);
  // balance_after runs down through the batch and ends at the balance.
  CHECK(ledger.i64(2, 1) == micros_balance(db, user));
  for (int i = 1; i < 3; ++i) CHECK(ledger.i64(i, 1) == ledger.i64(i - 1, 1) + ledger.i64(i, 0));
  auto row = db.exec("SELECT model, total_tokens, status FROM usage_logs WHERE request_id = $1", {rs[0].request_id});
  CHECK(row.str(0, 0) == "it/model \"quoted\"");
  CHECK(row.i64(0, 1) == 15);
  // Replay the whole batch, and a batch with a duplicate inside: nothing more is charged.
  CHECK(inserted(db, batch(rs)) == 0);
  auto fresh = usage(user, unique("req_"), 7);
  CHECK(inserted(db, batch({fresh, fresh, rs[1]})) == 1);
  CHECK(micros_balance(db, user) == 1'000'000 - 1234 - 1 - 500000 - 7);
  check_conservation(db, user);
}

TEST_CASE("concurrent replays from several writers charge each request once") {
  auto url = database_url();
  sql::PgConn db(url);
  auto a = funded_account(db, "5"), b = funded_account(db, "5");
  std::vector<sql::UsageRecord> rs;
  for (int i = 0; i < 200; ++i) rs.push_back(usage(i % 2 ? a : b, unique("req_"), 100 + i));
  std::string payload = batch(rs);
  std::vector<std::thread> ts;
  std::atomic<int> inserted{0}, failures{0};
  for (int t = 0; t < 4; ++t)
    ts.emplace_back([&] {
      try {
        sql::PgConn c(url);
        for (int attempt = 0; attempt < 5; ++attempt) {
          try {
            inserted += static_cast<int>(::inserted(c, payload));
            return;
          } catch (const sql::PgError& e) {
            if (e.sqlstate != "40P01") throw;  // deadlock: the writer retries, so do we
          }
        }
      } catch (...) {
        ++failures;
      }
    });
  for (auto& t : ts) t.join();
  CHECK(failures == 0);
  CHECK(inserted == 200);
  check_conservation(db, a);
  check_conservation(db, b);
}

TEST_CASE("UsageWriter journals while Postgres is unreachable and replays after a restart") {
  sql::PgConn db(database_url());
  auto user = funded_account(db, "1");
  auto dir = std::filesystem::temp_directory_path() / unique("tollgate-journal-");
  std::vector<std::string> ids;
  {
    // Postgres "down": nothing listens on port 1. Records must stay in the journal.
    sql::UsageWriter w(dir, "postgresql://tollgate@127.0.0.1:1/tollgate", 100, 10ms);
    w.start();
    for (int i = 0; i < 50; ++i) {
      ids.push_back(unique("req_"));
      w.append(usage(user, ids.back(), 10));
    }
    CHECK_FALSE(w.flush(300ms));
    w.stop(0ms);
    CHECK(w.stats().committed == 0);
  }
  CHECK(db.exec("SELECT count(*) FROM usage_logs WHERE user_id = $1", {user}).i64(0, 0) == 0);
  {
    sql::UsageWriter w(dir, database_url(), 100, 10ms);
    CHECK(w.stats().replayed == 50);
    w.start();
    REQUIRE(w.flush(10s));
    w.stop();
  }
  CHECK(db.exec("SELECT count(*) FROM usage_logs WHERE user_id = $1", {user}).i64(0, 0) == 50);
  CHECK(micros_balance(db, user) == 1'000'000 - 50 * 10);
  check_conservation(db, user);
  {
    sql::UsageWriter w(dir, database_url(), 100, 10ms);  // journal emptied after commit
    CHECK(w.stats().replayed == 0);
  }
  std::filesystem::remove_all(dir);
}

TEST_CASE("a journal folder is used by one writer at a time") {
  auto dir = std::filesystem::temp_directory_path() / unique("tollgate-journal-");
  sql::UsageWriter first(dir, database_url());
  CHECK_THROWS_AS(sql::UsageWriter(dir, database_url()), std::runtime_error);
  std::filesystem::remove_all(dir);
}
