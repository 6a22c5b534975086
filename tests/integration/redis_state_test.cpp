// Holds across Redis faults (issue 11), against the real Redis at TOLLGATE_REDIS_URL:
//  - Redis losing its state (FLUSHALL) while holds are in flight: every Admitter re-registers
//    its holds and the settled charges not yet committed before anyone is admitted again, so
//    another instance cannot spend what the requests in flight hold;
//  - expired holds are swept at rest, without a request on the account;
//  - a live stream's hold is extended (Admission::keep_alive) and never expires;
//  - an admission Redis runs after a stall its instance answered 503 for holds nothing once
//    Redis answers again (released by request id).
// hold_ttl is test-sized where the test is about expiry.
#include "ratelimit/admission.hpp"
#include "redis_fixture.hpp"

#include <catch2/catch.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>

#include <signal.h>

#include <chrono>
#include <fstream>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

using namespace tollgate;
using namespace tollgate::ratelimit;
using namespace std::chrono_literals;
namespace net = boost::asio;

namespace {

using LoadResult = std::optional<std::pair<pricing::Micros, std::int64_t>>;

/// One tollgate instance's admission: its own Redis connection, Admitter and pending charges,
/// on the test's event loop. `postgres_credits` is what its BalanceLoader answers.
struct Instance {
  Instance(net::io_context& ioc, const AdmissionConfig& cfg, pricing::Micros& postgres_credits)
      : redis(ioc.get_executor(), parse_redis_url(test::redis_url())),
        admitter(ioc.get_executor(), redis, cfg,
                 [&postgres_credits](std::string) -> net::awaitable<LoadResult> {
                   co_return std::make_pair(postgres_credits, std::int64_t{1});
                 },
                 {}, &pending) {}
  PendingCharges pending;
  RedisConnection redis;
  Admitter admitter;
};

struct Fixture {
  net::io_context ioc{1};
  AdmissionConfig cfg;
  pricing::Micros postgres_credits = 10'000;
  RedisSyncClient sync{parse_redis_url(test::redis_url()), 2000ms};
  keys::KeyRecord key;
  std::string account = test::unique_key("account");
  AccountKeys ak{account};

  Fixture() {
    cfg.timeout = 50ms;  // the default admission deadline
    key.key_id = test::unique_key("key");
    key.user_id = account;
    key.is_active = true;
  }

  /// Runs the loop for `d` (the Admitters' periodic tasks run meanwhile).
  void run_for(std::chrono::milliseconds d) {
    for (auto until = std::chrono::steady_clock::now() + d; std::chrono::steady_clock::now() < until;) {
      ioc.restart();
      ioc.run_for(5ms);
    }
  }

  Admission admit(Admitter& a, const std::string& rid, pricing::Micros hold) {
    std::optional<Admission> out;
    auto one = [&]() -> net::awaitable<void> { out = co_await a.admit(key, rid, hold, 10); };
    net::co_spawn(ioc, one(), net::detached);
    for (auto until = std::chrono::steady_clock::now() + 5s; !out && std::chrono::steady_clock::now() < until;) {
      ioc.restart();
      ioc.run_for(2ms);
    }
    REQUIRE(out);
    return std::move(*out);
  }

  std::int64_t field(const std::string& f) {
    auto v = sync.command(test::args("HGET", ak.balance, f));
    REQUIRE(v);
    return v->type == RedisReply::Type::string ? std::stoll(v->str) : 0;
  }
  long long holds() {
    auto v = sync.command(test::args("ZCARD", ak.holds));
    REQUIRE(v);
    return v->integer;
  }
  void fund(pricing::Micros credits) { REQUIRE(sync_balance(sync, account, credits, 1, {})); }
};

Settlement settlement(const std::string& account, const std::string& rid, pricing::Micros charge) {
  Settlement s;
  s.account = account;
  s.request_id = rid;
  s.charge = charge;
  return s;
}

}  // namespace

TEST_CASE("redis state: after FLUSHALL, the holds in flight and uncommitted charges are re-registered before "
          "anyone is admitted again") {
  Fixture fx;
  Instance a(fx.ioc, fx.cfg, fx.postgres_credits), b(fx.ioc, fx.cfg, fx.postgres_credits);
  fx.fund(10'000);
  for (int i = 0; i < 5; ++i) REQUIRE(fx.admit(a.admitter, "a-" + std::to_string(i), 1000).verdict == Verdict::admitted);
  a.admitter.settle(settlement(fx.account, "a-0", 700));  // settled, not committed to Postgres
  fx.run_for(100ms);
  REQUIRE(fx.field("held") == 4000);
  REQUIRE(fx.field("pending") == 700);
  CHECK(a.admitter.holds_in_flight() == 4);

  // Redis loses everything. Postgres still says 10,000: the 700 is not committed yet, and the
  // 4 requests in flight (4,000 held) have not been charged.
  REQUIRE(fx.sync.command(test::args("FLUSHALL")));
  const auto t0 = std::chrono::steady_clock::now();
  // Instance b wants 6,000: only 10,000 − 4,000 − 700 = 5,300 may be spent.
  auto big = fx.admit(b.admitter, "b-big", 6000);
  const auto waited = std::chrono::steady_clock::now() - t0;
  CHECK(big.verdict == Verdict::insufficient_balance);
  CHECK(big.available == 5300);
  CHECK(waited >= Admitter::epoch_fence - 100ms);  // it waited for every instance to re-register
  CHECK(fx.field("held") == 4000);
  CHECK(fx.field("pending") == 700);
  CHECK(fx.holds() == 4);
  CHECK(a.admitter.epoch() == b.admitter.epoch());

  CHECK(fx.admit(b.admitter, "b-small", 5300).verdict == Verdict::admitted);
  // The requests in flight settle on the new Redis; the 700 is committed (sync), once.
  for (int i = 1; i < 5; ++i) a.admitter.settle(settlement(fx.account, "a-" + std::to_string(i), 100));
  b.admitter.settle(settlement(fx.account, "b-small", 5300));
  fx.run_for(100ms);
  CHECK(fx.field("held") == 0);
  CHECK(fx.field("pending") == 700 + 400 + 5300);
  REQUIRE(sync_balance(fx.sync, fx.account, 10'000 - 700, 2, {"a-0"}));
  CHECK(fx.field("pending") == 400 + 5300);
  CHECK(fx.field("credits") == 10'000 - 700);
}

TEST_CASE("redis state: expired holds are swept at rest, without a request on the account") {
  Fixture fx;
  fx.cfg.hold_ttl = 300ms;  // test-sized
  Instance a(fx.ioc, fx.cfg, fx.postgres_credits);
  fx.fund(10'000);
  for (int i = 0; i < 3; ++i) REQUIRE(fx.admit(a.admitter, "crashed-" + std::to_string(i), 1000).verdict == Verdict::admitted);
  REQUIRE(fx.field("held") == 3000);
  // The requests never settle (their instance crashed): nothing else touches the account.
  fx.run_for(300ms + Admitter::sweep_interval + 2 * Admitter::epoch_poll_interval);
  CHECK(fx.holds() == 0);
  CHECK(fx.field("held") == 0);
  auto due = fx.sync.command(test::args("ZSCORE", holds_due_key, fx.account));
  REQUIRE(due);
  CHECK(due->type == RedisReply::Type::nil);  // nothing left to sweep for this account
}

TEST_CASE("redis state: a live stream's hold is extended and never expires") {
  Fixture fx;
  fx.cfg.hold_ttl = 600ms;  // test-sized
  Instance a(fx.ioc, fx.cfg, fx.postgres_credits);
  fx.fund(1000);
  auto stream = fx.admit(a.admitter, "stream", 1000);
  REQUIRE(stream.verdict == Verdict::admitted);
  // Events arrive every 50 ms for 3 × hold_ttl.
  for (int i = 0; i < 36; ++i) {
    stream.keep_alive();
    fx.run_for(50ms);
  }
  CHECK(fx.holds() == 1);
  CHECK(fx.field("held") == 1000);
  // A second request on the same balance is refused while the stream lives.
  CHECK(fx.admit(a.admitter, "second", 1000).verdict == Verdict::insufficient_balance);
  // Once it stops (no settle: its instance crashed), the hold expires after hold_ttl.
  fx.run_for(600ms + 50ms);
  CHECK(fx.admit(a.admitter, "third", 1000).verdict == Verdict::admitted);
}

namespace {
long long redis_pid(RedisSyncClient& s) {
  auto r = s.command(test::args("INFO", "server"));
  REQUIRE(r);
  auto at = r->str.find("process_id:");
  REQUIRE(at != std::string::npos);
  return std::stoll(r->str.substr(at + 11));
}
}  // namespace

TEST_CASE("redis state: admissions answered 503 during a Redis stall hold nothing once Redis answers again") {
  Fixture fx;
  Instance a(fx.ioc, fx.cfg, fx.postgres_credits);
  fx.fund(1'000'000);
  REQUIRE(fx.admit(a.admitter, "warm", 1).verdict == Verdict::admitted);  // scripts loaded, epoch known
  const pid_t pid = static_cast<pid_t>(redis_pid(fx.sync));
  // Redis stops for 500 ms (10 deadlines: the connection is dropped, the first releases fail).
  REQUIRE(::kill(pid, SIGSTOP) == 0);
  std::thread resume([pid] {
    std::this_thread::sleep_for(500ms);
    ::kill(pid, SIGCONT);
  });
  // A settle batch is in flight when the admissions time out: their releases queue behind it
  // and go out after the connection the admissions were written on was dropped.
  a.admitter.settle(settlement(fx.account, "warm", 1));
  fx.run_for(5ms);
  std::vector<std::optional<Admission>> outs(20);
  auto one = [&](int i) -> net::awaitable<void> {  // a named closure: it outlives the coroutines
    outs[static_cast<std::size_t>(i)] = co_await a.admitter.admit(fx.key, "stalled-" + std::to_string(i), 1000, 10);
  };
  for (int i = 0; i < 20; ++i) net::co_spawn(fx.ioc, one(i), net::detached);
  fx.run_for(300ms);
  resume.join();
  for (const auto& o : outs) {
    REQUIRE(o);
    CHECK(o->verdict == Verdict::unavailable);
  }
  // Redis runs the stalled admissions when it resumes, or not (their connection was closed);
  // either way, once Redis answers again nothing is held for them.
  fx.run_for(2 * Admitter::epoch_poll_interval + 200ms);
  CHECK(fx.holds() == 0);
  CHECK(fx.field("held") == 0);
  CHECK(fx.field("pending") == 1);
}

TEST_CASE("redis state: a release by request id that reaches Redis before its admission keeps it from holding") {
  Fixture fx;
  Instance a(fx.ioc, fx.cfg, fx.postgres_credits);
  fx.fund(1'000'000);
  REQUIRE(fx.admit(a.admitter, "warm", 1).verdict == Verdict::admitted);
  // The release of "late" (its instance answered 503) runs first, on another connection; the
  // admission itself was still in a stalled Redis' socket and runs after it.
  std::vector<std::string> release{"EVAL", script_source(script_settle), "6", fx.ak.balance, fx.ak.holds,
                                   fx.ak.hold_amounts, fx.ak.pending, fx.ak.committed, fx.ak.released,
                                   std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(
                                       std::chrono::system_clock::now().time_since_epoch()).count()),
                                   std::to_string(fx.cfg.hold_ttl.count()), "late", "-1", "0"};
  auto r = fx.sync.command(release);
  REQUIRE(r);
  REQUIRE(r->integer == 1);
  CHECK(fx.admit(a.admitter, "late", 1000).verdict == Verdict::unavailable);
  CHECK(fx.holds() == 1);  // the warm-up's
  CHECK(fx.field("held") == 1);
  // Released twice: still nothing more (idempotent).
  REQUIRE(fx.sync.command(release));
  CHECK(fx.field("held") == 1);
}

TEST_CASE("redis state: an epoch made under another run_id (a promoted replica lacking recent writes) is made "
          "anew and the holds registered again") {
  Fixture fx;
  Instance a(fx.ioc, fx.cfg, fx.postgres_credits);
  fx.fund(10'000);
  REQUIRE(fx.admit(a.admitter, "h-0", 1000).verdict == Verdict::admitted);
  REQUIRE(fx.admit(a.admitter, "h-1", 2000).verdict == Verdict::admitted);
  const std::string before = a.admitter.epoch();
  // The promoted replica has the epoch its old primary made (that primary's run_id), but lacks
  // the two holds, written just before the failover.
  const std::string replicated = before.substr(0, before.rfind(':') + 1) + "00000000000000000000000000000000deadbeef";
  REQUIRE(fx.sync.command(test::args("SET", epoch_key, replicated)));
  REQUIRE(fx.sync.command(test::args("DEL", fx.ak.holds, fx.ak.hold_amounts)));
  REQUIRE(fx.sync.command(test::args("HSET", fx.ak.balance, "held", "0")));
  fx.run_for(3 * Admitter::epoch_poll_interval);
  const std::string after = a.admitter.epoch();
  CHECK(after != before);
  CHECK(after != replicated);
  CHECK(after.substr(after.rfind(':')) == before.substr(before.rfind(':')));  // this Redis' run_id
  CHECK(fx.holds() == 2);
  CHECK(fx.field("held") == 3000);
}
