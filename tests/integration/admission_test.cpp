// Admitter::admit against the real Redis at TOLLGATE_REDIS_URL, for an account whose balance is
// not cached in Redis yet: concurrent requests share one Postgres read (a BalanceLoader that
// counts its calls and answers after 20 ms, as a Postgres round trip under load would).
#include "ratelimit/admission.hpp"
#include "redis_fixture.hpp"

#include <catch2/catch.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

using namespace tollgate;
using namespace tollgate::ratelimit;
using namespace std::chrono_literals;
namespace net = boost::asio;

namespace {

/// What the loader answers for the account.
enum class InPostgres { funded, unknown, failing };

struct ColdAccount {
  net::io_context ioc{1};
  RedisConnection redis{ioc.get_executor(), parse_redis_url(test::redis_url())};
  AdmissionConfig cfg;
  InPostgres in_postgres = InPostgres::funded;
  int loads = 0;
  Admitter admitter{ioc.get_executor(), redis, cfg,
                    [this](std::string) -> net::awaitable<std::optional<std::pair<pricing::Micros, std::int64_t>>> {
                      ++loads;
                      net::steady_timer t(ioc);
                      t.expires_after(20ms);
                      co_await t.async_wait(net::use_awaitable);
                      if (in_postgres == InPostgres::failing) throw std::runtime_error("postgres is down");
                      if (in_postgres == InPostgres::unknown) co_return std::nullopt;
                      co_return std::make_pair(pricing::Micros{1'000'000'000}, std::int64_t{1});
                    }};
  keys::KeyRecord key;

  ColdAccount() {
    cfg.timeout = 2000ms;  // about sharing the load, not about deadlines
    key.key_id = test::unique_key("key");
    key.user_id = test::unique_key("account");
    key.is_active = true;
    key.key_limits.requests_per_minute = 30;
  }

  /// `n` admissions issued in one event-loop turn; their verdicts once all are in.
  std::vector<Verdict> burst(int n) {
    std::vector<Verdict> verdicts;
    auto one = [this, &verdicts](int i) -> net::awaitable<void> {
      auto a = co_await admitter.admit(key, "req-" + std::to_string(i) + "-" + key.key_id, 1000, 10);
      verdicts.push_back(a.verdict);
    };
    for (int i = 0; i < n; ++i) net::co_spawn(ioc, one(i), net::detached);
    const auto deadline = std::chrono::steady_clock::now() + 5s;
    while (verdicts.size() < static_cast<std::size_t>(n) && std::chrono::steady_clock::now() < deadline) {
      ioc.restart();
      ioc.run_for(5ms);
    }
    REQUIRE(verdicts.size() == static_cast<std::size_t>(n));
    return verdicts;
  }
};

int count(const std::vector<Verdict>& v, Verdict which) {
  return static_cast<int>(std::count(v.begin(), v.end(), which));
}

}  // namespace

TEST_CASE("admission: a burst on an account not cached in Redis reads its balance from Postgres once") {
  ColdAccount fx;
  auto v = fx.burst(50);
  CHECK(fx.loads == 1);
  CHECK(count(v, Verdict::admitted) == 30);  // the key's 30 requests per minute
  CHECK(count(v, Verdict::rate_limited) == 20);
  // Cached now: the next request needs no Postgres read.
  auto again = fx.burst(1);
  CHECK(again.front() == Verdict::rate_limited);
  CHECK(fx.loads == 1);
}

TEST_CASE("admission: an account Postgres does not know is refused after one read") {
  ColdAccount fx;
  fx.in_postgres = InPostgres::unknown;
  auto v = fx.burst(20);
  CHECK(fx.loads == 1);
  CHECK(count(v, Verdict::insufficient_balance) == 20);
}

TEST_CASE("admission: a failed balance read fails the requests waiting for it, and is tried again later") {
  ColdAccount fx;
  fx.in_postgres = InPostgres::failing;
  auto v = fx.burst(20);
  CHECK(fx.loads == 1);
  CHECK(count(v, Verdict::unavailable) == 20);
  fx.in_postgres = InPostgres::funded;
  auto after = fx.burst(1);
  CHECK(fx.loads == 2);
  CHECK(after.front() == Verdict::admitted);
}

namespace {
/// EVALSHA and EVAL calls Redis has run since the last CONFIG RESETSTAT.
long long script_calls(RedisSyncClient& r) {
  auto info = r.command(test::args("INFO", "commandstats"));
  REQUIRE(info);
  long long calls = 0;
  for (const char* name : {"cmdstat_evalsha:calls=", "cmdstat_eval:calls="}) {
    auto at = info->str.find(name);
    if (at != std::string::npos) calls += std::stoll(info->str.substr(at + std::strlen(name)));
  }
  return calls;
}
}  // namespace

TEST_CASE("admission: a request window Redis reported full is refused without Redis until its limit changes") {
  ColdAccount fx;
  RedisSyncClient sync(parse_redis_url(test::redis_url()), 2000ms);
  auto first = fx.burst(31);
  REQUIRE(count(first, Verdict::admitted) == 30);
  REQUIRE(count(first, Verdict::rate_limited) == 1);  // Redis said: full until its oldest bucket leaves

  REQUIRE(sync.command(test::args("CONFIG", "RESETSTAT")));
  std::vector<Admission> local;
  for (int i = 0; i < 20; ++i) {
    auto one = [&]() -> net::awaitable<void> {
      local.push_back(co_await fx.admitter.admit(fx.key, "local-" + std::to_string(i), 1000, 10));
    };
    net::co_spawn(fx.ioc, one(), net::detached);
    fx.ioc.restart();
    fx.ioc.run_for(5ms);
  }
  REQUIRE(local.size() == 20);
  CHECK(script_calls(sync) == 0);
  for (const auto& a : local) {
    CHECK(a.verdict == Verdict::rate_limited);
    REQUIRE(a.limited >= 0);
    CHECK(a.windows[static_cast<std::size_t>(a.limited)].name == "key_requests_per_minute");
    CHECK(a.windows[static_cast<std::size_t>(a.limited)].remaining == 0);
    CHECK(a.retry_after_ms > 0);
    CHECK(a.retry_after_ms <= 61'000);  // the oldest bucket leaves within the window and a bucket
  }

  // A higher limit is Redis' to judge: the next request goes there and is admitted.
  fx.key.key_limits.requests_per_minute = 40;
  auto raised = fx.burst(1);
  CHECK(raised.front() == Verdict::admitted);
  CHECK(script_calls(sync) == 1);
}
