// The circuit breaker (routing/circuit.hpp) with time passed in: no sleeps.
#include "routing/circuit.hpp"

#include <catch2/catch.hpp>

using namespace tollgate::routing;
using namespace std::chrono_literals;
using Clock = CircuitBreaker::Clock;

namespace {
const Clock::time_point t0 = Clock::time_point{} + 1000h;

void fail(CircuitBreaker& b, Clock::time_point now) {
  auto p = b.acquire(now);
  REQUIRE(p);
  b.record(p, false, now);
}
}  // namespace

TEST_CASE("N consecutive failures open the circuit for the cooldown (defaults: 5, 30 s)") {
  CircuitBreaker b;
  CHECK(b.config().failure_threshold == 5);
  CHECK(b.config().cooldown == 30s);
  for (int i = 0; i < 4; ++i) fail(b, t0);
  CHECK(b.state() == CircuitState::closed);
  fail(b, t0);
  CHECK(b.state() == CircuitState::open);
  CHECK(b.opened_total() == 1);
  CHECK_FALSE(b.acquire(t0 + 1s));
  CHECK_FALSE(b.acquire(t0 + 29'999ms));
}

TEST_CASE("a success resets the count: failures must be consecutive") {
  CircuitBreaker b;
  for (int i = 0; i < 4; ++i) fail(b, t0);
  auto p = b.acquire(t0);
  b.record(p, true, t0);
  CHECK(b.consecutive_failures() == 0);
  for (int i = 0; i < 4; ++i) fail(b, t0);
  CHECK(b.state() == CircuitState::closed);
}

TEST_CASE("after the cooldown exactly one probe goes; a good probe closes the circuit") {
  CircuitBreaker b({3, 10s});
  for (int i = 0; i < 3; ++i) fail(b, t0);
  REQUIRE(b.state() == CircuitState::open);
  auto probe = b.acquire(t0 + 10s);
  CHECK(probe);
  CHECK(probe.probe);
  CHECK(b.state() == CircuitState::half_open);
  CHECK_FALSE(b.acquire(t0 + 10s));  // one probe at a time
  CHECK_FALSE(b.acquire(t0 + 15s));
  b.record(probe, true, t0 + 11s);
  CHECK(b.state() == CircuitState::closed);
  auto p = b.acquire(t0 + 11s);
  CHECK(p);
  CHECK_FALSE(p.probe);
}

TEST_CASE("a failed probe reopens the circuit for another cooldown") {
  CircuitBreaker b({2, 10s});
  fail(b, t0);
  fail(b, t0);
  auto probe = b.acquire(t0 + 10s);
  REQUIRE(probe.probe);
  b.record(probe, false, t0 + 12s);
  CHECK(b.state() == CircuitState::open);
  CHECK(b.opened_total() == 2);
  CHECK_FALSE(b.acquire(t0 + 21s));  // cooldown counted from the failed probe
  auto again = b.acquire(t0 + 22s);
  CHECK(again.probe);
}

TEST_CASE("a probe that never reports is replaced a cooldown later") {
  CircuitBreaker b({1, 10s});
  fail(b, t0);
  auto lost = b.acquire(t0 + 10s);
  REQUIRE(lost.probe);
  CHECK_FALSE(b.acquire(t0 + 19s));
  auto next = b.acquire(t0 + 20s);
  CHECK(next.probe);
  b.record(next, true, t0 + 20s);
  CHECK(b.state() == CircuitState::closed);
}

TEST_CASE("outcomes of requests that began before the circuit opened do not close it") {
  CircuitBreaker b({2, 10s});
  auto early = b.acquire(t0);  // in flight while the circuit opens
  fail(b, t0);
  fail(b, t0);
  REQUIRE(b.state() == CircuitState::open);
  b.record(early, true, t0 + 1s);
  CHECK(b.state() == CircuitState::open);
  auto probe = b.acquire(t0 + 10s);
  b.record(early, false, t0 + 10s);  // a late failure during the probe changes nothing either
  CHECK(b.state() == CircuitState::half_open);
  b.record(probe, true, t0 + 10s);
  CHECK(b.state() == CircuitState::closed);
}

TEST_CASE("circuit metrics name each upstream and its state") {
  CircuitRegistry reg({1, 10s});
  auto a = reg.get("openrouter");
  reg.get("vllm");
  auto p = a->acquire(t0);
  a->record(p, false, t0);
  std::string out;
  render_circuit_metrics(reg, out);
  CHECK(out.find("tollgate_upstream_circuit_state{upstream=\"openrouter\",state=\"open\"} 1\n") != std::string::npos);
  CHECK(out.find("tollgate_upstream_circuit_state{upstream=\"openrouter\",state=\"closed\"} 0\n") != std::string::npos);
  CHECK(out.find("tollgate_upstream_circuit_state{upstream=\"vllm\",state=\"closed\"} 1\n") != std::string::npos);
  CHECK(out.find("tollgate_upstream_circuit_opened_total{upstream=\"openrouter\"} 1\n") != std::string::npos);
}
