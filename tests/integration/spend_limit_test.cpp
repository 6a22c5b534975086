// Spend limits (issue 14) in Admitter::admit and settle against the real Redis at
// TOLLGATE_REDIS_URL: a key's daily limit holds worst cases, is corrected to the charge at
// settle, is seeded from what Postgres says was spent (a SpendLoader here), never over-admits a
// burst, and starts over at the period boundary (the admission clock moved by a day).
#include "ratelimit/admission.hpp"
#include "ratelimit/admission_detail.hpp"
#include "ratelimit/spend_period.hpp"
#include "redis_fixture.hpp"

#include <catch2/catch.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <vector>

using namespace tollgate;
using namespace tollgate::ratelimit;
using namespace std::chrono_literals;
namespace net = boost::asio;

namespace {

struct SpendFixture {
  net::io_context ioc{1};
  RedisConnection redis{ioc.get_executor(), parse_redis_url(test::redis_url())};
  AdmissionConfig cfg;
  std::map<std::int64_t, pricing::Micros> spent_in_postgres;  ///< by period start (ms)
  std::vector<std::pair<std::string, std::int64_t>> spend_loads;  ///< (scope, since_ms)
  std::size_t settled = 0;
  Admitter admitter{ioc.get_executor(), redis, cfg,
                    [](std::string) -> net::awaitable<std::optional<std::pair<pricing::Micros, std::int64_t>>> {
                      co_return std::make_pair(pricing::Micros{1'000'000'000}, std::int64_t{1});
                    },
                    [this](std::size_t n) { settled += n; }, nullptr,
                    [this](std::string scope, std::string, std::int64_t since) -> net::awaitable<pricing::Micros> {
                      spend_loads.emplace_back(scope, since);
                      co_return spent_in_postgres[since];
                    }};
  keys::KeyRecord key;
  int next = 0;

  SpendFixture() {
    cfg.timeout = 2000ms;
    key.key_id = test::unique_key("spendkey");
    key.user_id = test::unique_key("spendacct");
    key.is_active = true;
    key.key_spend = {10'000, keys::LimitReset::daily};  // USD 0.01 a day
  }
  ~SpendFixture() { detail::set_clock_offset_for_tests(0); }

  /// `n` admissions of `hold` each, issued in one event-loop turn.
  std::vector<Admission> burst(int n, pricing::Micros hold) {
    std::vector<Admission> out;
    auto one = [&](int i) -> net::awaitable<void> {
      out.push_back(co_await admitter.admit(key, key.key_id + "-req-" + std::to_string(i), hold, 10));
    };
    for (int i = 0; i < n; ++i) net::co_spawn(ioc, one(next++), net::detached);
    run_until([&] { return out.size() == static_cast<std::size_t>(n); });
    return out;
  }
  Admission admit(pricing::Micros hold) { return burst(1, hold).front(); }
  void settle(const Admission& a, pricing::Micros charge) {
    Settlement s;
    s.account = key.user_id;
    s.request_id = a.request_id;
    s.charge = charge;
    s.windows = a.windows;
    s.token_estimate = a.token_estimate;
    s.actual_tokens = a.token_estimate;
    const std::size_t before = settled;
    admitter.settle(std::move(s));
    run_until([&] { return settled > before; });
  }
  template <class Pred>
  void run_until(Pred done) {
    const auto deadline = std::chrono::steady_clock::now() + 5s;
    while (!done() && std::chrono::steady_clock::now() < deadline) {
      ioc.restart();
      ioc.run_for(5ms);
    }
    REQUIRE(done());
  }
};

bool refused_for_spend(const Admission& a) {
  return a.verdict == Verdict::rate_limited && a.windows.at(static_cast<std::size_t>(a.limited)).spend;
}

}  // namespace

TEST_CASE("a key's daily spend limit: worst cases held, corrected at settle, refused beyond", "[spend]") {
  SpendFixture fx;
  auto a1 = fx.admit(3000), a2 = fx.admit(3000), a3 = fx.admit(3000);
  CHECK(a1.verdict == Verdict::admitted);
  CHECK(a3.verdict == Verdict::admitted);
  CHECK(fx.spend_loads.size() == 1);  // seeded once, from "Postgres"
  auto refused = fx.admit(3000);      // 9000 held + 3000 > 10000
  REQUIRE(refused_for_spend(refused));
  const Window& w = refused.windows.at(static_cast<std::size_t>(refused.limited));
  CHECK(w.name == "key_spend_limit");
  CHECK(w.remaining == 1000);
  CHECK(w.period_end_ms == spend_period(keys::LimitReset::daily, detail::now_ms()).end_ms);
  fx.settle(a1, 1000);  // the charge replaces the hold: 1000 + 6000 held
  auto a4 = fx.admit(3000);
  CHECK(a4.verdict == Verdict::admitted);  // 10000: exactly the limit
  CHECK(refused_for_spend(fx.admit(1)));
  fx.settle(a2, 0);  // nothing charged: its 3000 come back
  CHECK(fx.admit(3000).verdict == Verdict::admitted);
}

TEST_CASE("a spend window starts from what Postgres says was charged in the period", "[spend]") {
  SpendFixture fx;
  fx.spent_in_postgres[spend_period(keys::LimitReset::daily, detail::now_ms()).start_ms] = 8000;
  CHECK(refused_for_spend(fx.admit(3000)));
  CHECK(fx.admit(2000).verdict == Verdict::admitted);
  CHECK(refused_for_spend(fx.admit(1)));
  REQUIRE(fx.spend_loads.size() == 1);
  CHECK(fx.spend_loads[0].first == "key");
}

TEST_CASE("a burst of 300 in one turn admits exactly the worst cases the limit covers", "[spend]") {
  SpendFixture fx;
  fx.key.key_spend = {7 * 1234, keys::LimitReset::daily};
  // A cold Admitter: 300 > admit_batch_max, so two batches both find the epoch unregistered
  // and one waits for the other's recovery (none is answered unavailable).
  auto all = fx.burst(300, 1234);
  auto admitted = std::count_if(all.begin(), all.end(), [](const Admission& a) { return a.verdict == Verdict::admitted; });
  auto refused = std::count_if(all.begin(), all.end(), refused_for_spend);
  auto unavailable = std::count_if(all.begin(), all.end(), [](const Admission& a) { return a.verdict == Verdict::unavailable; });
  CHECK(admitted == 7);
  CHECK(refused == 293);
  CHECK(unavailable == 0);
}

TEST_CASE("the period boundary starts the limit over; requests settle in the period they were admitted in",
          "[spend]") {
  SpendFixture fx;
  auto a = fx.admit(6000);
  REQUIRE(a.verdict == Verdict::admitted);
  CHECK(refused_for_spend(fx.admit(6000)));
  const auto today = spend_period(keys::LimitReset::daily, detail::now_ms());
  detail::set_clock_offset_for_tests(today.end_ms - detail::now_ms() + 1000);  // tomorrow, 00:00:01
  auto b = fx.admit(6000);
  CHECK(b.verdict == Verdict::admitted);  // a new period: seeded from Postgres (0)
  REQUIRE(fx.spend_loads.size() == 2);
  CHECK(fx.spend_loads[1].second == today.end_ms);
  // Yesterday's request settles now: it corrects yesterday's window, not today's.
  fx.settle(a, 0);
  CHECK(refused_for_spend(fx.admit(6000)));  // today still holds b's 6000
}

TEST_CASE("an account's spend limit covers all its keys", "[spend]") {
  SpendFixture fx;
  fx.key.key_spend = {};
  fx.key.account_spend = {5000, keys::LimitReset::monthly};
  CHECK(fx.admit(3000).verdict == Verdict::admitted);
  fx.key.key_id = test::unique_key("otherkey");  // another key of the same account
  auto r = fx.admit(3000);
  REQUIRE(refused_for_spend(r));
  CHECK(r.windows.at(static_cast<std::size_t>(r.limited)).name == "account_spend_limit");
  CHECK(fx.spend_loads.at(0).first == "account");
}
