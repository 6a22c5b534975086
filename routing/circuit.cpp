#include "routing/circuit.hpp"

#include <fmt/format.h>

#include <algorithm>

namespace tollgate::routing {

std::string_view to_string(CircuitState s) noexcept {
  switch (s) {
    case CircuitState::closed: return "closed";
    case CircuitState::open: return "open";
    case CircuitState::half_open: return "half_open";
  }
  return "closed";
}

namespace {
CircuitState state_of(std::uint64_t w) noexcept { return static_cast<CircuitState>(w & 3u); }
std::int64_t deadline_of(std::uint64_t w) noexcept { return static_cast<std::int64_t>(w >> 2); }
std::int64_t ms(CircuitBreaker::Clock::time_point t) noexcept {
  return std::max<std::int64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(t.time_since_epoch()).count(), 0);
}
}  // namespace

std::uint64_t CircuitBreaker::word(CircuitState s, Clock::time_point until) noexcept {
  return (static_cast<std::uint64_t>(ms(until)) << 2) | static_cast<std::uint64_t>(s);
}

CircuitBreaker::Permit CircuitBreaker::acquire(Clock::time_point now) noexcept {
  std::uint64_t w = word_.load(std::memory_order_acquire);
  if (state_of(w) == CircuitState::closed) return {true, false};
  if (ms(now) < deadline_of(w)) return {false, false};  // cooling down, or a probe is out
  // The cooldown (or a lost probe's allowance) is over: one caller becomes the probe.
  std::uint64_t probing = word(CircuitState::half_open, now + cfg_.cooldown);
  if (word_.compare_exchange_strong(w, probing, std::memory_order_acq_rel)) return {true, true};
  return {false, false};
}

void CircuitBreaker::open_until(std::uint64_t expected, Clock::time_point until) noexcept {
  if (word_.compare_exchange_strong(expected, word(CircuitState::open, until), std::memory_order_acq_rel))
    opened_.fetch_add(1, std::memory_order_relaxed);
}

void CircuitBreaker::record(const Permit& p, bool ok, Clock::time_point now) noexcept {
  if (!p.allowed) return;
  std::uint64_t w = word_.load(std::memory_order_acquire);
  if (p.probe) {
    // Only while this probe (or a later one) is out: a probe's outcome after the circuit was
    // decided otherwise changes nothing.
    if (state_of(w) != CircuitState::half_open) return;
    if (ok) {
      failures_.store(0, std::memory_order_relaxed);
      word_.compare_exchange_strong(w, 0, std::memory_order_acq_rel);
    } else {
      open_until(w, now + cfg_.cooldown);
    }
    return;
  }
  if (state_of(w) != CircuitState::closed) return;  // began before it opened: the probe decides
  if (ok) {
    failures_.store(0, std::memory_order_relaxed);
    return;
  }
  std::uint32_t n = failures_.fetch_add(1, std::memory_order_acq_rel) + 1;
  if (n >= cfg_.failure_threshold) {
    failures_.store(0, std::memory_order_relaxed);
    open_until(w, now + cfg_.cooldown);  // one of the racing N-th failures opens it
  }
}

CircuitState CircuitBreaker::state() const noexcept { return state_of(word_.load(std::memory_order_acquire)); }

std::shared_ptr<CircuitBreaker> CircuitRegistry::get(const std::string& upstream) {
  std::lock_guard lock(mu_);
  auto& b = breakers_[upstream];
  if (!b) b = std::make_shared<CircuitBreaker>(cfg_);
  return b;
}

std::vector<std::pair<std::string, std::shared_ptr<const CircuitBreaker>>> CircuitRegistry::all() const {
  std::vector<std::pair<std::string, std::shared_ptr<const CircuitBreaker>>> out;
  {
    std::lock_guard lock(mu_);
    for (const auto& [name, b] : breakers_) out.emplace_back(name, b);
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  return out;
}

void render_circuit_metrics(const CircuitRegistry& registry, std::string& out) {
  auto breakers = registry.all();
  if (breakers.empty()) return;
  out += "# HELP tollgate_upstream_circuit_state Circuit breaker state per upstream (1 = current).\n"
         "# TYPE tollgate_upstream_circuit_state gauge\n";
  for (const auto& [name, b] : breakers)
    for (auto s : {CircuitState::closed, CircuitState::open, CircuitState::half_open})
      out += fmt::format("tollgate_upstream_circuit_state{{upstream=\"{}\",state=\"{}\"}} {}\n", name, to_string(s),
                         b->state() == s ? 1 : 0);
  out += "# HELP tollgate_upstream_circuit_opened_total Times the upstream's circuit opened.\n"
         "# TYPE tollgate_upstream_circuit_opened_total counter\n";
  for (const auto& [name, b] : breakers)
    out += fmt::format("tollgate_upstream_circuit_opened_total{{upstream=\"{}\"}} {}\n", name, b->opened_total());
}

}  // namespace tollgate::routing
