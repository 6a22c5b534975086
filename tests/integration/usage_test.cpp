// Phase 8 against real Postgres: one usage row + one ledger row + the balance debit per request,
// in one transaction; replays charge once; the journal survives a dead Postgres and a restart.
// The usage writer's COPY path must give exactly what record_usage() gives (rows, ledger
// balance_after, balances and the results the Redis sync hook gets), and fall back to it for
// replays and duplicates.
#include "db_fixture.hpp"
#include "sql/usage_writer.hpp"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <set>
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
  for (std::size_t i = 0; i < rs.size(); ++i) {
    if (i) s += ',';
    rs[i].append_json(s);
  }
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

std::int64_t count(sql::PgConn& db, const char* sql, const std::string& arg) { return db.exec(sql, {arg}).i64(0, 0); }

std::filesystem::path journal_dir() { return std::filesystem::temp_directory_path() / unique("tollgate-journal-"); }

/// What the post-commit hook was given, batch after batch.
struct Hooked {
  std::mutex mu;
  std::vector<sql::CommittedAccount> accounts;
  void attach(sql::UsageWriter& w) {
    w.on_committed([this](const std::vector<sql::CommittedAccount>& as) {
      std::lock_guard lock(mu);
      accounts.insert(accounts.end(), as.begin(), as.end());
      return true;
    });
  }
  /// The account's entry with the highest version (the last batch that touched it).
  sql::CommittedAccount last(const std::string& account) {
    std::lock_guard lock(mu);
    sql::CommittedAccount best;
    best.version = -1;
    for (const auto& a : accounts)
      if (a.account == account && a.version > best.version) best = a;
    return best;
  }
  std::multiset<std::string> charged(const std::string& account) {
    std::lock_guard lock(mu);
    std::multiset<std::string> ids;
    for (const auto& a : accounts)
      if (a.account == account) ids.insert(a.charged_request_ids.begin(), a.charged_request_ids.end());
    return ids;
  }
};

/// Appends `records` to a fresh writer (batches of `batch_rows`, all queued before it starts, so
/// batches are cut the same way every run), waits until all are committed.
sql::UsageWriterStats write_all(const std::vector<sql::UsageRecord>& records, std::size_t batch_rows,
                                Hooked* hook = nullptr) {
  auto dir = journal_dir();
  sql::UsageWriterStats stats;
  {
    sql::UsageWriter w(dir, database_url(), batch_rows, 5ms);
    if (hook) hook->attach(w);
    for (const auto& r : records) w.append(r);
    w.start();
    REQUIRE(w.flush(30s));
    w.stop();
    stats = w.stats();
  }
  std::filesystem::remove_all(dir);
  return stats;
}

/// The account's ledger (usage rows): amount, balance_after (credit units), created_at (µs),
/// request_id; in (created_at, request_id byte order), or as inserted (`by_id`).
struct LedgerRow {
  std::int64_t amount, balance_after, created_at_us;
  std::string request_id;
};
std::vector<LedgerRow> usage_ledger(sql::PgConn& db, const std::string& user, bool by_id = false) {
  auto r = db.exec(by_id ? "SELECT (amount * 1000000)::bigint, (balance_after * 1000000)::bigint,"
                           " (extract(epoch FROM created_at) * 1000000)::bigint, request_id FROM credit_transactions"
                           " WHERE user_id = $1 AND transaction_type = 'usage' ORDER BY id"
                         : "SELECT (amount * 1000000)::bigint, (balance_after * 1000000)::bigint,"
                           " (extract(epoch FROM created_at) * 1000000)::bigint, request_id FROM credit_transactions"
                           " WHERE user_id = $1 AND transaction_type = 'usage' ORDER BY created_at, request_id COLLATE \"C\"",
                   {user});
  std::vector<LedgerRow> rows;
  for (int i = 0; i < r.rows(); ++i) rows.push_back({r.i64(i, 0), r.i64(i, 1), r.i64(i, 2), r.str(i, 3)});
  return rows;
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

TEST_CASE("UsageWriter COPY path: usage row, ledger row and debit once each; the hook gets the database's numbers") {
  sql::PgConn db(database_url());
  auto user = funded_account(db, "1");
  auto key = sql::create_key(db, user, std::nullopt, 0).key_id;
  std::vector<sql::UsageRecord> rs;
  pricing::Micros total = 0;
  for (int i = 0; i < 250; ++i) {
    auto r = usage(user, unique("req_"), i % 7 == 0 ? 0 : 100 + i);  // some free requests
    r.api_key_id = key;
    r.created_at_us = 1'700'000'000'000'000 + (i / 3) * 1000 + 123;  // ties of three
    total += r.charge;
    rs.push_back(r);
  }
  // Text COPY must escape what needs it: tab, newline, backslash, quotes, non-ASCII.
  rs[5].model = "m\tx\ny\\z \"q\" é";
  rs[5].request_metadata_json = R"({"endpoint":"/chat\tcompletions","note":"line\nbreak \\ back \"q\" é \u0001"})";
  rs[5].response_metadata_json = "null";
  rs[6].id = sql::new_uuid_v7();  // an id set by the caller is kept
  Hooked hook;
  auto stats = write_all(rs, 100, &hook);
  CHECK(stats.committed == rs.size());
  CHECK(stats.copy_batches == 3);
  CHECK(stats.fallback_batches == 0);

  CHECK(count(db, "SELECT count(*) FROM usage_logs WHERE user_id = $1", user) == 250);
  CHECK(count(db, "SELECT count(*) FROM credit_transactions WHERE user_id = $1 AND transaction_type = 'usage'", user) == 250);
  CHECK(micros_balance(db, user) == 1'000'000 - total);
  check_conservation(db, user);
  // What the Redis sync hook got is what the database holds.
  auto b = sql::balance_and_version(db, user);
  REQUIRE(b);
  auto last = hook.last(user);
  CHECK(last.credits == b->first);
  CHECK(last.version == b->second);
  CHECK(b->second == 1 + 3);  // the funding, then one bump per batch
  std::multiset<std::string> charged;
  for (const auto& r : rs)
    if (r.charge > 0) charged.insert(r.request_id);
  CHECK(hook.charged(user) == charged);
  // balance_after runs down through the ledger (batch after batch) and ends at the balance.
  auto ledger = usage_ledger(db, user, true);
  REQUIRE(ledger.size() == 250);
  CHECK(ledger.front().balance_after == 1'000'000 + ledger.front().amount);
  for (std::size_t i = 1; i < ledger.size(); ++i)
    CHECK(ledger[i].balance_after == ledger[i - 1].balance_after + ledger[i].amount);
  CHECK(ledger.back().balance_after == b->first);
  // Columns as sent.
  auto row = db.exec("SELECT model, request_metadata = $2::jsonb, response_metadata IS NULL, total_tokens,"
                     " (cost_usd * 1000000)::bigint, (credits_deducted * 1000000)::bigint, status, api_key_id,"
                     " (extract(epoch FROM created_at) * 1000000)::bigint, id FROM usage_logs WHERE request_id = $1",
                     {rs[5].request_id, rs[5].request_metadata_json});
  REQUIRE(row.rows() == 1);
  CHECK(row.str(0, 0) == rs[5].model);
  CHECK(row.boolean(0, 1));
  CHECK(row.boolean(0, 2));
  CHECK(row.i64(0, 3) == 15);
  CHECK(row.i64(0, 4) == rs[5].cost);
  CHECK(row.i64(0, 5) == rs[5].charge);
  CHECK(row.str(0, 6) == "success");
  CHECK(row.str(0, 7) == key);
  CHECK(row.i64(0, 8) == rs[5].created_at_us);
  CHECK(row.str(0, 9).substr(14, 1) == "7");  // the writer's ids are UUIDv7
  CHECK(count(db, "SELECT count(*) FROM usage_logs WHERE user_id = $1 AND substr(id::text, 15, 1) <> '7'", user) == 0);
  CHECK(db.exec("SELECT id FROM usage_logs WHERE request_id = $1", {rs[6].request_id}).str(0, 0) == rs[6].id);
  // last_used_at as record_usage() sets it: the newest record of the key.
  CHECK(db.exec("SELECT (extract(epoch FROM last_used_at) * 1000000)::bigint FROM api_keys WHERE id = $1", {key})
            .i64(0, 0) == rs.back().created_at_us);
}

TEST_CASE("UsageWriter: a batch holding request_ids recorded before falls back to record_usage()") {
  sql::PgConn db(database_url());
  auto user = funded_account(db, "1");
  // 3000 records: the COPY data (~1.3 MB) goes in several pieces, and the server refuses the
  // first row already, so the refusal arrives while the writer is still sending.
  const int n = 3000, before_crash = 50;
  std::vector<sql::UsageRecord> rs;
  for (int i = 0; i < n; ++i) {
    rs.push_back(usage(user, unique("req_"), 10 + i % 100));
    rs.back().created_at_us += i;
  }
  // A crash after the commit of the first ones: the restarted writer sends them again.
  std::vector<sql::UsageRecord> first(rs.begin(), rs.begin() + before_crash);
  CHECK(inserted(db, batch(first)) == before_crash);
  auto before = *sql::balance_and_version(db, user);
  Hooked hook;
  auto stats = write_all(rs, n, &hook);
  CHECK(stats.committed == static_cast<std::uint64_t>(n));
  CHECK(stats.fallback_batches == 1);
  CHECK(stats.copy_batches == 0);
  CHECK(count(db, "SELECT count(*) FROM usage_logs WHERE user_id = $1", user) == n);
  pricing::Micros all = 0, second = 0;
  for (int i = 0; i < n; ++i) (i < before_crash ? all : second) += rs[static_cast<std::size_t>(i)].charge;
  all += second;
  CHECK(micros_balance(db, user) == 1'000'000 - all);
  check_conservation(db, user);
  auto after = *sql::balance_and_version(db, user);
  CHECK(after.first == before.first - second);
  CHECK(after.second == before.second + 1);
  CHECK(hook.last(user).credits == after.first);
  CHECK(hook.last(user).version == after.second);
  // Nothing was left behind by the aborted COPY: one usage ledger row per request.
  CHECK(count(db, "SELECT count(*) FROM credit_transactions WHERE user_id = $1 AND transaction_type = 'usage'", user) == n);
}

TEST_CASE("UsageWriter: a duplicate request_id inside one batch is recorded once") {
  sql::PgConn db(database_url());
  auto user = funded_account(db, "1");
  std::vector<sql::UsageRecord> rs;
  for (int i = 0; i < 10; ++i) rs.push_back(usage(user, unique("req_"), 1000));
  rs.push_back(rs[3]);  // appended twice
  rs.back().id.clear();
  Hooked hook;
  auto stats = write_all(rs, 100, &hook);
  CHECK(stats.committed == 11);
  CHECK(stats.fallback_batches == 1);
  CHECK(stats.copy_batches == 0);
  CHECK(count(db, "SELECT count(*) FROM usage_logs WHERE user_id = $1", user) == 10);
  CHECK(count(db, "SELECT count(*) FROM credit_transactions WHERE user_id = $1 AND transaction_type = 'usage'", user) == 10);
  CHECK(micros_balance(db, user) == 1'000'000 - 10 * 1000);
  CHECK(hook.last(user).credits == 1'000'000 - 10 * 1000);
  check_conservation(db, user);
}

TEST_CASE("UsageWriter: two writers on the same accounts at once, some records sent by both") {
  sql::PgConn db(database_url());
  auto a = funded_account(db, "5"), b = funded_account(db, "5");
  std::vector<sql::UsageRecord> one, two;
  pricing::Micros total_a = 0, total_b = 0;
  for (int i = 0; i < 3000; ++i) {
    auto r = usage(i % 2 ? a : b, unique("req_"), 1 + i % 50);
    r.created_at_us += i;
    (i % 2 ? total_a : total_b) += r.charge;
    r.id = sql::new_uuid_v7();
    if (i % 10 == 0) {  // a replay: both writers send it
      one.push_back(r);
      two.push_back(r);
    } else {
      (i % 3 ? one : two).push_back(r);
    }
  }
  Hooked hook;
  sql::UsageWriterStats s1, s2;
  std::thread t([&] { s1 = write_all(one, 200, &hook); });
  s2 = write_all(two, 200, &hook);
  t.join();
  CHECK(s1.committed + s2.committed == one.size() + two.size());
  CHECK(count(db, "SELECT count(*) FROM usage_logs WHERE user_id = $1", a) == 1500);
  CHECK(count(db, "SELECT count(*) FROM usage_logs WHERE user_id = $1", b) == 1500);
  CHECK(micros_balance(db, a) == 5'000'000 - total_a);
  CHECK(micros_balance(db, b) == 5'000'000 - total_b);
  check_conservation(db, a);
  check_conservation(db, b);
  for (const auto& acct : {a, b}) {
    auto bv = *sql::balance_and_version(db, acct);
    CHECK(hook.last(acct).credits == bv.first);
    CHECK(hook.last(acct).version == bv.second);
    // Every ledger row's balance_after continues the previous one (no interleaving).
    auto r = db.exec("SELECT count(*) FROM (SELECT balance_after, amount, lag(balance_after) OVER (ORDER BY id) AS prev"
                     " FROM credit_transactions WHERE user_id = $1) l WHERE prev IS NOT NULL AND balance_after <> prev + amount",
                     {acct});
    CHECK(r.i64(0, 0) == 0);
  }
}

TEST_CASE("UsageWriter's COPY path computes the ledger exactly as record_usage()") {
  sql::PgConn db(database_url());
  auto a = funded_account(db, "2"), b = funded_account(db, "2");
  // Same charges and times for both accounts; request_ids differ only in their prefix. Ties in
  // created_at are broken by request_id in byte order (a linguistic collation would order
  // "x-b", "xa", "X1", "x_1" differently).
  std::vector<std::string> suffixes{"xa", "x-b", "X1", "x_1", "b", "a", "C", "c", "a0", "a-0"};
  std::string run = unique("");
  std::vector<std::int64_t> dates{0, 951'782'400'000'000 /* 2000-02-29 */, 1'709'164'799'999'999,
                                  4'107'542'400'000'001 /* 2100-03-01 */, 68'169'599'999'999 /* 1972-02-29 */};
  std::mt19937_64 rng{std::random_device{}()};
  while (dates.size() < 16) dates.push_back(static_cast<std::int64_t>(rng() % 4'102'444'800'000'000));
  std::vector<sql::UsageRecord> ra, rb;
  for (std::size_t i = 0; i < 40; ++i) {
    std::string suffix = suffixes[i % suffixes.size()] + std::to_string(i / suffixes.size());
    auto r = usage(a, "A" + run + "-" + suffix, 1000 + static_cast<pricing::Micros>(i * 37 % 11) * 100);
    r.created_at_us = 1'700'000'000'000'000 + static_cast<std::int64_t>(i % 4);  // many ties
    if (i >= 24) r.created_at_us = dates[i - 24];  // and dates from 1970 to 2100 (leap days too)
    ra.push_back(r);
    r.user_id = b;
    r.request_id = "A" + run + "-" + suffix;
    r.request_id[0] = 'B';
    rb.push_back(r);
  }
  auto sql_path = db.exec("SELECT account::text, credits_micros, balance_version FROM record_usage($1::jsonb)", {batch(ra)});
  Hooked hook;
  auto stats = write_all(rb, 100, &hook);
  REQUIRE(stats.copy_batches == 1);
  REQUIRE(sql_path.rows() == 1);
  CHECK(hook.last(b).credits == sql_path.i64(0, 1));
  CHECK(hook.last(b).version == sql_path.i64(0, 2));
  auto la = usage_ledger(db, a), lb = usage_ledger(db, b);
  REQUIRE(la.size() == 40);
  REQUIRE(lb.size() == 40);
  for (std::size_t i = 0; i < la.size(); ++i) {
    INFO("ledger row " << i << ": " << la[i].request_id << " / " << lb[i].request_id);
    CHECK(la[i].request_id.substr(1) == lb[i].request_id.substr(1));
    CHECK(la[i].amount == lb[i].amount);
    CHECK(la[i].balance_after == lb[i].balance_after);
    CHECK(la[i].created_at_us == lb[i].created_at_us);
  }
  auto cols = "SELECT model, prompt_tokens, completion_tokens, total_tokens, cost_usd, credits_deducted, status,"
              " request_metadata, response_metadata, created_at, api_key_id FROM usage_logs WHERE request_id = $1";
  for (std::size_t i = 0; i < ra.size(); i += 7) {
    auto x = db.exec(cols, {ra[i].request_id}), y = db.exec(cols, {rb[i].request_id});
    REQUIRE(x.rows() == 1);
    REQUIRE(y.rows() == 1);
    for (int c = 0; c < 11; ++c) CHECK(x.str(0, c) == y.str(0, c));
  }
}

TEST_CASE("deleting a user deletes its usage and ledger rows; deleting a key nulls usage_logs.api_key_id") {
  sql::PgConn db(database_url());
  auto gone = funded_account(db, "1"), kept = funded_account(db, "1");
  auto gone_key = sql::create_key(db, gone, std::nullopt, 0).key_id;
  auto kept_key = sql::create_key(db, kept, std::nullopt, 0).key_id;
  auto other_key = sql::create_key(db, kept, std::nullopt, 0).key_id;
  std::vector<sql::UsageRecord> rs;
  for (int i = 0; i < 20; ++i) {
    auto r = usage(i % 2 ? gone : kept, unique("req_"), 10);
    r.api_key_id = i % 2 ? gone_key : (i % 4 ? kept_key : other_key);
    rs.push_back(r);
  }
  write_all(rs, 100);
  CHECK(count(db, "SELECT count(*) FROM usage_logs WHERE user_id = $1", gone) == 10);
  CHECK(count(db, "SELECT count(*) FROM credit_transactions WHERE user_id = $1", gone) == 11);

  db.exec("DELETE FROM api_keys WHERE id = $1", {kept_key});
  CHECK(count(db, "SELECT count(*) FROM usage_logs WHERE user_id = $1", kept) == 10);
  CHECK(count(db, "SELECT count(*) FROM usage_logs WHERE api_key_id = $1", kept_key) == 0);
  CHECK(count(db, "SELECT count(*) FROM usage_logs WHERE user_id = $1 AND api_key_id IS NULL", kept) == 5);
  CHECK(count(db, "SELECT count(*) FROM usage_logs WHERE api_key_id = $1", other_key) == 5);

  db.exec("DELETE FROM users WHERE id = $1", {gone});
  CHECK(count(db, "SELECT count(*) FROM usage_logs WHERE user_id = $1", gone) == 0);
  CHECK(count(db, "SELECT count(*) FROM credit_transactions WHERE user_id = $1", gone) == 0);
  CHECK(count(db, "SELECT count(*) FROM api_keys WHERE id = $1", gone_key) == 0);
  // The other account is untouched.
  CHECK(count(db, "SELECT count(*) FROM usage_logs WHERE user_id = $1", kept) == 10);
  CHECK(count(db, "SELECT count(*) FROM credit_transactions WHERE user_id = $1", kept) == 11);
  check_conservation(db, kept);
}

TEST_CASE("a record whose api key was deleted before its batch is recorded with a NULL key") {
  sql::PgConn db(database_url());
  auto user = funded_account(db, "1");
  auto live = sql::create_key(db, user, std::nullopt, 0).key_id;
  auto dead = sql::create_key(db, user, std::nullopt, 0).key_id;
  db.exec("DELETE FROM api_keys WHERE id = $1", {dead});
  std::vector<sql::UsageRecord> by_copy, by_sql;
  for (int i = 0; i < 6; ++i) {
    auto r = usage(user, unique("req_"), 100);
    r.api_key_id = i % 2 ? dead : live;
    (i < 4 ? by_copy : by_sql).push_back(r);
  }
  auto stats = write_all(by_copy, 100);
  CHECK(stats.copy_batches == 1);
  CHECK(inserted(db, batch(by_sql)) == 2);
  CHECK(count(db, "SELECT count(*) FROM usage_logs WHERE user_id = $1", user) == 6);
  CHECK(count(db, "SELECT count(*) FROM usage_logs WHERE user_id = $1 AND api_key_id IS NULL", user) == 3);
  CHECK(count(db, "SELECT count(*) FROM usage_logs WHERE api_key_id = $1", live) == 3);
  CHECK(micros_balance(db, user) == 1'000'000 - 600);
  check_conservation(db, user);
}

TEST_CASE("usage and credits for an unknown account are refused; the writer sets such a record apart") {
  sql::PgConn db(database_url());
  auto ghost = db.exec("SELECT gen_random_uuid()::text").str(0, 0);
  CHECK_THROWS_AS(sql::add_credits(db, ghost, "1", std::nullopt), sql::PgError);
  auto r = usage(ghost, unique("req_"), 5);
  try {
    inserted(db, batch({r}));
    FAIL("record_usage() accepted an unknown account");
  } catch (const sql::PgError& e) {
    CHECK(e.sqlstate == "23503");
  }
  // In a batch with records of a live account, the unknown account's record is set apart in
  // dead-letter.jsonl (fsync'ed, with the SQLSTATE) and the others are recorded, whatever their
  // place in the batch: one bad record never holds back the rest.
  auto user = funded_account(db, "1");
  std::vector<sql::UsageRecord> good;
  for (int i = 0; i < 37; ++i) good.push_back(usage(user, unique("req_"), 1000 + i));
  auto dir = journal_dir();
  Hooked hook;
  {
    sql::UsageWriter w(dir, database_url(), 100, 5ms);
    hook.attach(w);
    for (std::size_t i = 0; i < good.size(); ++i) {
      if (i == 23) w.append(r);  // inside the batch, neither first nor last
      w.append(good[i]);
    }
    w.start();
    REQUIRE(w.flush(30s));
    w.stop();
    CHECK(w.stats().committed == good.size() + 1);  // every record is done with: 37 rows + 1 set apart
    CHECK(w.stats().dead_lettered == 1);
  }
  CHECK(count(db, "SELECT count(*) FROM usage_logs WHERE user_id = $1::uuid", ghost) == 0);
  CHECK(count(db, "SELECT count(*) FROM credit_transactions WHERE user_id = $1::uuid", ghost) == 0);
  CHECK(count(db, "SELECT count(*) FROM usage_logs WHERE user_id = $1::uuid", user) == 37);
  check_conservation(db, user);
  CHECK(micros_balance(db, user) == 1'000'000 - (37 * 1000 + 36 * 37 / 2));
  // The hook lets the refused charge go from Redis' pending spend, without touching credits.
  CHECK(hook.charged(ghost) == std::multiset<std::string>{r.request_id});
  CHECK(hook.charged(user).size() == 37);
  {
    std::lock_guard lock(hook.mu);
    for (const auto& a : hook.accounts)
      if (a.account == ghost) CHECK(a.version == -1);
  }
  // The dead letter: one JSON line with the reason and the record as journaled.
  std::ifstream in(dir / "dead-letter.jsonl");
  std::string line, extra;
  REQUIRE(std::getline(in, line));
  CHECK_FALSE(std::getline(in, extra));
  CHECK(line.find(R"("sqlstate":"23503")") != std::string::npos);
  CHECK(line.find(r.request_id) != std::string::npos);
  CHECK(line.find(ghost) != std::string::npos);
  // Journal segments are retired; a restart does not replay anything, the dead letter stays.
  {
    sql::UsageWriter again(dir, database_url(), 100, 5ms);
    CHECK(again.stats().replayed == 0);
  }
  CHECK(std::filesystem::exists(dir / "dead-letter.jsonl"));
  std::filesystem::remove_all(dir);
}

TEST_CASE("journal lines written before records carried an id still replay; ids are UUIDv7") {
  sql::PgConn db(database_url());
  auto user = funded_account(db, "1");
  auto dir = journal_dir();
  std::filesystem::create_directories(dir);
  auto old_style = usage(user, unique("req_"), 7), with_id = usage(user, unique("req_"), 8);
  with_id.id = sql::new_uuid_v7();
  {
    std::ofstream seg(dir / "00000000000000000001.jsonl");
    seg << old_style.to_json() << "\n" << with_id.to_json() << "\n";
  }
  CHECK(old_style.to_json().find("\"id\"") == std::string::npos);
  {
    sql::UsageWriter w(dir, database_url(), 100, 5ms);
    CHECK(w.stats().replayed == 2);
    w.start();
    REQUIRE(w.flush(10s));
    w.stop();
    CHECK(w.stats().fallback_batches == 1);  // replays go through record_usage()
  }
  CHECK(count(db, "SELECT count(*) FROM usage_logs WHERE user_id = $1", user) == 2);
  CHECK(db.exec("SELECT id FROM usage_logs WHERE request_id = $1", {with_id.request_id}).str(0, 0) == with_id.id);
  CHECK(micros_balance(db, user) == 1'000'000 - 15);
  check_conservation(db, user);
  std::filesystem::remove_all(dir);

  // The same lines once more (a crash after the commit, before the journal was emptied): the
  // record with an id conflicts on both id and request_id; nothing is recorded twice.
  std::filesystem::create_directories(dir);
  {
    std::ofstream seg(dir / "00000000000000000001.jsonl");
    seg << old_style.to_json() << "\n" << with_id.to_json() << "\n";
  }
  {
    sql::UsageWriter w(dir, database_url(), 100, 5ms);
    w.start();
    REQUIRE(w.flush(10s));
    w.stop();
    CHECK(w.stats().committed == 2);
    CHECK(w.stats().failures == 0);
  }
  CHECK(count(db, "SELECT count(*) FROM usage_logs WHERE user_id = $1", user) == 2);
  CHECK(micros_balance(db, user) == 1'000'000 - 15);
  check_conservation(db, user);
  std::filesystem::remove_all(dir);

  // RFC 9562: version 7, variant 10, 48-bit ms timestamp; ascending across calls.
  auto now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                    std::chrono::system_clock::now().time_since_epoch()).count();
  std::string prev;
  for (int i = 0; i < 1000; ++i) {
    auto id = sql::new_uuid_v7();
    REQUIRE(id.size() == 36);
    CHECK(id[14] == '7');
    CHECK(std::string("89ab").find(id[19]) != std::string::npos);
    auto ms = std::stoll(id.substr(0, 8) + id.substr(9, 4), nullptr, 16);
    CHECK(std::abs(ms - now_ms) < 5000);
    CHECK(id.substr(0, 18) >= prev.substr(0, std::min<std::size_t>(18, prev.size())));
    prev = id;
  }
}

TEST_CASE("UsageWriter keeps at most max_queued records in memory; the rest wait in the journal and land once") {
  // issue 11: while Postgres is down the in-memory queue grew without a cap (~1.7 KB a record).
  sql::PgConn db(database_url());
  auto user = funded_account(db, "1");
  auto dir = std::filesystem::temp_directory_path() / unique("tollgate-journal-");
  std::vector<std::string> ids;
  {
    // Nothing committed yet (the writer threads start later): 250 records, 20 kept in memory.
    sql::UsageWriter w(dir, database_url(), 7, 5ms, 2, 20);
    for (int i = 0; i < 250; ++i) {
      ids.push_back(unique("req_"));
      w.append(usage(user, ids.back(), 10));
    }
    CHECK(w.stats().in_memory == 20);
    CHECK(w.stats().spilled == 230);
    CHECK(w.stats().queued == 250);
    w.start();
    REQUIRE(w.flush(20s));
    CHECK(w.stats().committed == 250);
    CHECK(w.stats().spilled == 0);
    // Spilling ended: new records queue in memory again.
    ids.push_back(unique("req_"));
    w.append(usage(user, ids.back(), 10));
    REQUIRE(w.flush(10s));
    w.stop();
  }
  CHECK(db.exec("SELECT count(*) FROM usage_logs WHERE user_id = $1", {user}).i64(0, 0) == 251);
  CHECK(db.exec("SELECT count(DISTINCT request_id) FROM usage_logs WHERE user_id = $1", {user}).i64(0, 0) == 251);
  CHECK(micros_balance(db, user) == 1'000'000 - 251 * 10);
  check_conservation(db, user);
  {
    // A journal left with more records than max_queued (a crash during an outage) replays in
    // bounded memory too.
    std::vector<std::string> more;
    {
      sql::UsageWriter w(dir, "postgresql://tollgate@127.0.0.1:1/tollgate", 100, 10ms, 2, 1000);
      for (int i = 0; i < 120; ++i) {
        more.push_back(unique("req_"));
        w.append(usage(user, more.back(), 1));
      }
      w.stop(0ms);
    }
    sql::UsageWriter w(dir, database_url(), 9, 5ms, 2, 15);
    CHECK(w.stats().replayed == 120);
    CHECK(w.stats().in_memory == 15);
    w.start();
    REQUIRE(w.flush(20s));
    w.stop();
  }
  CHECK(db.exec("SELECT count(*) FROM usage_logs WHERE user_id = $1", {user}).i64(0, 0) == 371);
  CHECK(micros_balance(db, user) == 1'000'000 - 251 * 10 - 120);
  check_conservation(db, user);
  std::filesystem::remove_all(dir);
}
