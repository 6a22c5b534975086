// Admitter::settle against the real Redis at TOLLGATE_REDIS_URL: settles queued in one event-loop
// turn go out as one batch per account, release every hold, count every charge as pending once,
// and correct token windows to the real usage.
#include "ratelimit/admission.hpp"

#include <catch2/catch.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_future.hpp>

#include <chrono>
#include <cstdlib>
#include <future>
#include <random>
#include <string>
#include <thread>
#include <vector>

using namespace tollgate;
using namespace tollgate::ratelimit;
using namespace std::chrono_literals;
namespace net = boost::asio;

namespace {

std::string redis_url() {
  const char* url = std::getenv("TOLLGATE_REDIS_URL");
  if (!url || !*url) FAIL("TOLLGATE_REDIS_URL is not set: run tests through tests/run.sh");
  return url;
}

std::string random_id() {
  static std::mt19937_64 rng{std::random_device{}()};
  return "settle-test-" + std::to_string(rng());
}

keys::KeyRecord key_for(const std::string& account) {
  keys::KeyRecord k;
  k.key_id = random_id();
  k.user_id = account;
  k.is_active = true;
  k.key_limits.tokens_per_minute = 1'000'000;  // one token window, corrected at settle
  return k;
}

std::int64_t field(RedisSyncClient& r, const std::string& key, const std::string& f) {
  std::vector<std::string> argv{"HGET", key, f};
  auto v = r.command(argv);
  REQUIRE(v);
  return v->type == RedisReply::Type::string ? std::stoll(v->str) : 0;
}

std::int64_t count(RedisSyncClient& r, const std::string& cmd, const std::string& key) {
  std::vector<std::string> argv{cmd, key};
  auto v = r.command(argv);
  REQUIRE(v);
  return v->integer;
}

struct Fixture {
  net::io_context ioc{1};
  RedisConnection redis{ioc.get_executor(), parse_redis_url(redis_url())};
  AdmissionConfig cfg;
  std::vector<std::size_t> settled_batches;
  Admitter admitter{ioc.get_executor(), redis, cfg,
                    [](std::string) -> net::awaitable<std::optional<std::pair<pricing::Micros, std::int64_t>>> {
                      co_return std::nullopt;
                    },
                    [this](std::size_t n) { settled_batches.push_back(n); }};
  RedisSyncClient sync{parse_redis_url(redis_url()), 2000ms};

  Fixture() { cfg.timeout = 2000ms; }

  /// Caches a balance for the account, as the usage writer's sync does.
  void fund(const std::string& account, pricing::Micros credits) {
    REQUIRE(sync_balance(sync, account, credits, 1, {}));
  }

  Admission admit(const keys::KeyRecord& k, const std::string& rid, pricing::Micros hold, std::int64_t tokens) {
    auto f = net::co_spawn(ioc, admitter.admit(k, rid, hold, tokens), net::use_future);
    // The connection's read wait keeps the loop busy for ever: run until the answer is in.
    auto deadline = std::chrono::steady_clock::now() + 5s;
    while (f.wait_for(0s) != std::future_status::ready && std::chrono::steady_clock::now() < deadline) {
      ioc.restart();
      ioc.run_for(1ms);
    }
    REQUIRE(f.wait_for(0s) == std::future_status::ready);
    return f.get();
  }

  /// Runs the loop until `n` settles were answered.
  void run_until_settled(std::size_t n) {
    auto deadline = std::chrono::steady_clock::now() + 5s;
    auto done = [&] {
      std::size_t s = 0;
      for (auto b : settled_batches) s += b;
      return s >= n;
    };
    while (!done() && std::chrono::steady_clock::now() < deadline) {
      ioc.restart();
      ioc.run_for(10ms);
    }
    REQUIRE(done());
  }
};

}  // namespace

TEST_CASE("settle: one batch per account releases every hold and counts every charge once") {
  Fixture fx;
  const std::string a = random_id(), b = random_id();
  fx.fund(a, 10'000'000);
  fx.fund(b, 10'000'000);
  auto ka = key_for(a), kb = key_for(b);

  std::vector<Settlement> batch;
  pricing::Micros charges_a = 0, charges_b = 0;
  std::int64_t tokens_a = 0;
  for (int i = 0; i < 60; ++i) {
    const bool on_a = i % 3 != 0;  // 40 on a, 20 on b
    auto& k = on_a ? ka : kb;
    std::string rid = "req-" + std::to_string(i) + "-" + random_id();
    auto adm = fx.admit(k, rid, 5000, 100);
    REQUIRE(adm.verdict == Verdict::admitted);
    Settlement s;
    s.account = k.user_id;
    s.request_id = rid;
    s.charge = 10 + i;
    s.windows = adm.windows;
    s.actual_tokens = 30 + i % 7;
    s.token_estimate = 100;
    (on_a ? charges_a : charges_b) += s.charge;
    if (on_a) tokens_a += s.actual_tokens;
    batch.push_back(std::move(s));
  }
  AccountKeys aka(a), akb(b);
  CHECK(field(fx.sync, aka.balance, "held") == 40 * 5000);

  // Queued in one loop turn: one batch per account.
  for (auto& s : batch) fx.admitter.settle(std::move(s));
  CHECK(fx.admitter.settles_pending() == 60);
  fx.run_until_settled(60);
  CHECK(fx.settled_batches.size() == 2);
  CHECK(fx.admitter.settles_pending() == 0);

  CHECK(field(fx.sync, aka.balance, "held") == 0);
  CHECK(field(fx.sync, akb.balance, "held") == 0);
  CHECK(field(fx.sync, aka.balance, "pending") == charges_a);
  CHECK(field(fx.sync, akb.balance, "pending") == charges_b);
  CHECK(count(fx.sync, "HLEN", aka.pending) == 40);
  CHECK(count(fx.sync, "HLEN", aka.hold_amounts) == 0);
  CHECK(count(fx.sync, "ZCARD", aka.holds) == 0);
  CHECK(count(fx.sync, "ZCARD", akb.holds) == 0);
  // The key's token window holds the real tokens, not the estimates.
  const std::string window = "tg:{" + a + "}:k:" + ka.key_id + ":tokens_per_minute";
  CHECK(field(fx.sync, window, "t") == tokens_a);

  // Settling the same requests again changes nothing (holds gone, charges already pending).
  fx.settled_batches.clear();
  for (int i = 1; i < 3; ++i) {
    Settlement again;
    again.account = a;
    again.request_id = "req-" + std::to_string(i) + "-unknown";
    again.charge = 0;
    fx.admitter.settle(std::move(again));
  }
  fx.run_until_settled(2);
  CHECK(field(fx.sync, aka.balance, "pending") == charges_a);
  CHECK(field(fx.sync, aka.balance, "held") == 0);
}

TEST_CASE("settle: settles queued after the first batch left go out together in the next one") {
  Fixture fx;
  const std::string a = random_id();
  fx.fund(a, 10'000'000);
  auto k = key_for(a);
  std::vector<std::string> rids;
  for (int i = 0; i < 21; ++i) {
    rids.push_back("req-" + std::to_string(i) + "-" + random_id());
    REQUIRE(fx.admit(k, rids.back(), 1000, 10).verdict == Verdict::admitted);
  }
  auto settle = [&](int i) {
    Settlement s;
    s.account = a;
    s.request_id = rids[static_cast<std::size_t>(i)];
    s.charge = 1;
    fx.admitter.settle(std::move(s));
  };
  settle(0);
  // Let the first batch go out (after settle_delay), alone.
  fx.ioc.restart();
  fx.ioc.run_for(Admitter::settle_delay + 2ms);
  for (int i = 1; i < 21; ++i) settle(i);
  fx.run_until_settled(21);
  REQUIRE(fx.settled_batches.size() == 2);
  CHECK(fx.settled_batches[0] == 1);
  CHECK(fx.settled_batches[1] == 20);
  AccountKeys ak(a);
  CHECK(field(fx.sync, ak.balance, "held") == 0);
  CHECK(field(fx.sync, ak.balance, "pending") == 21);
}

namespace {

/// Admits `n` requests on `k` (hold 5,000, estimate 100 tokens) and returns their settlements
/// (charge 7 + i, real tokens 20 + i).
std::vector<Settlement> admitted(Fixture& fx, const keys::KeyRecord& k, int n) {
  std::vector<Settlement> out;
  for (int i = 0; i < n; ++i) {
    Settlement s;
    s.account = k.user_id;
    s.request_id = "req-" + std::to_string(i) + "-" + random_id();
    auto adm = fx.admit(k, s.request_id, 5000, 100);
    REQUIRE(adm.verdict == Verdict::admitted);
    s.charge = 7 + i;
    s.windows = adm.windows;
    s.actual_tokens = 20 + i;
    s.token_estimate = 100;
    out.push_back(std::move(s));
  }
  return out;
}

}  // namespace

TEST_CASE("settle: the same batch settled twice counts its charges and tokens once") {
  Fixture fx;
  const std::string a = random_id();
  fx.fund(a, 10'000'000);
  auto k = key_for(a);
  auto batch = admitted(fx, k, 5);
  const std::string window = "tg:{" + a + "}:k:" + k.key_id + ":tokens_per_minute";
  AccountKeys ak(a);
  CHECK(field(fx.sync, window, "t") == 5 * 100);  // the estimates, until settled

  for (int round = 0; round < 2; ++round) {  // a retry whose first attempt did run in Redis
    for (const auto& s : batch) fx.admitter.settle(s);
    fx.run_until_settled(5 * static_cast<std::size_t>(round + 1));
    CHECK(field(fx.sync, ak.balance, "held") == 0);
    CHECK(field(fx.sync, ak.balance, "pending") == 7 + 8 + 9 + 10 + 11);
    CHECK(field(fx.sync, window, "t") == 20 + 21 + 22 + 23 + 24);
  }
}

TEST_CASE("settle: a batch Redis answers after the deadline is sent again and counted once") {
  Fixture fx;
  fx.cfg.timeout = 100ms;
  const std::string a = random_id();
  fx.fund(a, 10'000'000);
  auto k = key_for(a);
  auto batch = admitted(fx, k, 3);

  // Redis holds every client's scripts for 150 ms (CLIENT PAUSE … WRITE, ended by CLIENT UNPAUSE
  // from another connection: a pause left to end by itself ends at Redis' next 100 ms cron tick,
  // 150 or 250 ms, which made the second attempt's deadline a coin toss): the batch gets no answer
  // within its 100 ms deadline, the connection is dropped, and Redis discards the unanswered
  // command with its client. Only the second attempt, on a new connection, settles.
  // Redis notices a pause's end only at its next cron tick: at the default hz 10, CLIENT PAUSE 150
  // lasted 150-251 ms (20 tries), so the retry's own deadline ran out in most runs (1 pass in 10
  // under ASan, 9 in 10 without); at hz 100 it lasts 151-161 ms. Restored when the test ends.
  struct Hz {  // sets Redis' hz, and puts the old value back at the end (never throws there)
    RedisSyncClient& r;
    std::string old;
    explicit Hz(RedisSyncClient& c) : r(c) {
      std::vector<std::string> get{"CONFIG", "GET", "hz"};
      auto v = r.command(get);
      REQUIRE(v);
      REQUIRE(v->elements.size() == 2);
      old = v->elements[1].str;
      std::vector<std::string> set{"CONFIG", "SET", "hz", "100"};
      auto w = r.command(set);
      REQUIRE(w);
      REQUIRE(w->str == "OK");
    }
    ~Hz() {
      std::vector<std::string> set{"CONFIG", "SET", "hz", old};
      (void)r.command(set);  // best effort: a failure here must not end the test run
    }
  } hz(fx.sync);
  {
    std::vector<std::string> argv{"CLIENT", "PAUSE", "2000", "WRITE"};
    auto r = fx.sync.command(argv);
    REQUIRE(r);
    REQUIRE(r->str == "OK");
  }
  std::thread unpause([] {
    std::this_thread::sleep_for(150ms);
    RedisSyncClient other(parse_redis_url(redis_url()), 2000ms);
    std::vector<std::string> argv{"CLIENT", "UNPAUSE"};
    other.command(argv);
  });
  const auto t0 = std::chrono::steady_clock::now();
  for (const auto& s : batch) fx.admitter.settle(s);
  fx.run_until_settled(3);
  const auto waited = std::chrono::steady_clock::now() - t0;
  unpause.join();
  CHECK(waited >= 100ms);  // the first attempt did time out

  AccountKeys ak(a);
  CHECK(field(fx.sync, ak.balance, "held") == 0);
  CHECK(count(fx.sync, "ZCARD", ak.holds) == 0);
  CHECK(field(fx.sync, ak.balance, "pending") == 7 + 8 + 9);
  CHECK(field(fx.sync, "tg:{" + a + "}:k:" + k.key_id + ":tokens_per_minute", "t") == 20 + 21 + 22);
}

TEST_CASE("admission: a hold placed by a script answered after the deadline is released") {
  Fixture fx;
  fx.cfg.timeout = 50ms;  // the default admission deadline
  const std::string a = random_id();
  fx.fund(a, 10'000'000);
  auto k = key_for(a);
  AccountKeys ak(a);
  const std::string window = "tg:{" + a + "}:k:" + k.key_id + ":tokens_per_minute";
  REQUIRE(fx.admit(k, "warm-" + random_id(), 1, 1).verdict == Verdict::admitted);  // scripts loaded
  const std::int64_t held_before = field(fx.sync, ak.balance, "held");
  const std::int64_t tokens_before = field(fx.sync, window, "t");

  // Another client keeps Redis busy in a script for 200 ms: the admission is written, gets no
  // answer within its 50 ms, and Redis runs it when the busy script ends, holding 5,000.
  std::thread busy([] {
    RedisSyncClient other{parse_redis_url(redis_url()), 2000ms};
    std::vector<std::string> argv{"EVAL",
      "local t0 = redis.call('TIME') repeat local t = redis.call('TIME') "
      "until (t[1] - t0[1]) * 1000000 + (t[2] - t0[2]) > 200000 return 1", "0"};
    other.command(argv);
  });
  std::this_thread::sleep_for(20ms);
  const std::string rid = "late-" + random_id();
  auto adm = fx.admit(k, rid, 5000, 100);
  busy.join();
  CHECK(adm.verdict == Verdict::unavailable);
  // The loop runs on until the release (a settle without charge, sent after the admission)
  // is answered; it is not counted as a settled request.
  for (auto until = std::chrono::steady_clock::now() + 500ms; std::chrono::steady_clock::now() < until;) {
    fx.ioc.restart();
    fx.ioc.run_for(10ms);
  }
  CHECK(fx.settled_batches.empty());
  CHECK(field(fx.sync, ak.balance, "held") == held_before);
  CHECK(count(fx.sync, "ZCARD", ak.holds) == 1);  // the warm-up's hold only
  CHECK(field(fx.sync, window, "t") == tokens_before);
}

TEST_CASE("settle: a settle retried after the writer committed it changes nothing (pending returns to 0)") {
  Fixture fx;
  const std::string a = random_id();
  fx.fund(a, 10'000'000);
  auto k = key_for(a);
  auto batch = admitted(fx, k, 3);
  AccountKeys ak(a);
  for (const auto& s : batch) fx.admitter.settle(s);
  fx.run_until_settled(3);
  REQUIRE(field(fx.sync, ak.balance, "pending") == 7 + 8 + 9);

  // The usage writer commits the three to Postgres and syncs: credits include them now.
  std::vector<std::string> ids;
  for (const auto& s : batch) ids.push_back(s.request_id);
  REQUIRE(sync_balance(fx.sync, a, 10'000'000 - (7 + 8 + 9), 2, ids));
  CHECK(field(fx.sync, ak.balance, "pending") == 0);
  CHECK(count(fx.sync, "HLEN", ak.pending) == 0);

  // The same settles again (a retry whose first attempt's answer was lost): nothing changes.
  for (const auto& s : batch) fx.admitter.settle(s);
  fx.run_until_settled(6);
  CHECK(field(fx.sync, ak.balance, "pending") == 0);
  CHECK(count(fx.sync, "HLEN", ak.pending) == 0);
  CHECK(field(fx.sync, ak.balance, "held") == 0);
  CHECK(field(fx.sync, ak.balance, "credits") == 10'000'000 - (7 + 8 + 9));
}
