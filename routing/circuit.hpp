#pragma once
// Passive per-upstream health: a circuit breaker fed by the outcomes of real requests.
//
// closed ──N consecutive failures──▶ open ──cooldown over, next request──▶ half_open (1 probe)
//   ▲                                  ▲                                       │
//   └────────── probe succeeded ───────┼──────────── probe failed ─────────────┘
//
// One breaker per upstream per process, shared by every event-loop thread, lock-free: the state
// and the instant it expires are one atomic word (so a thread never sees "open" with a stale
// deadline), the failure count another. Shared rather than per thread so that N failures open
// it for the whole instance (with one breaker per thread, T threads would each need N failures
// and each send their own probe), and so /metrics has one state per upstream. The cost on the
// request path is one atomic load per attempt and one atomic add per outcome.
// Time is passed in (steady_clock), never read here: tests drive it by hand.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace tollgate::routing {

enum class CircuitState : std::uint8_t { closed = 0, open = 1, half_open = 2 };

/// "closed" | "open" | "half_open" (the metric label).
std::string_view to_string(CircuitState s) noexcept;

/// Circuit settings ([routing] circuit_failure_threshold, circuit_cooldown_ms).
struct CircuitConfig {
  std::uint32_t failure_threshold = 5;          ///< consecutive failures that open it
  std::chrono::milliseconds cooldown{30'000};   ///< open this long, then one probe
};

class CircuitBreaker {
 public:
  using Clock = std::chrono::steady_clock;

  /// What acquire() answered: whether the attempt may go, and whether it is the half-open probe
  /// (whose outcome alone decides: close or reopen).
  struct Permit {
    bool allowed = false;
    bool probe = false;
    explicit operator bool() const { return allowed; }
  };

  explicit CircuitBreaker(CircuitConfig cfg = {}) : cfg_(cfg) {}

  /// Before an attempt on this upstream. Closed: allowed. Open within the cooldown: refused.
  /// Open after it: exactly one caller gets the probe (the circuit turns half_open), others are
  /// refused. Half-open: refused while the probe runs; a probe that never reported (its request
  /// vanished) is replaced by a new one a cooldown later.
  Permit acquire(Clock::time_point now) noexcept;

  /// After an allowed attempt: `ok` = the upstream answered (any status that is not a failure,
  /// see policy.hpp counts_against_circuit). Every allowed Permit reports exactly once.
  /// Closed: a success resets the count; the N-th consecutive failure opens it. Probe: a success
  /// closes it, a failure reopens it for a cooldown. Outcomes of requests that began before the
  /// circuit opened are ignored while it is open or half-open.
  void record(const Permit& p, bool ok, Clock::time_point now) noexcept;

  /// The state now, for metrics (open stays "open" after the cooldown until a probe is taken).
  CircuitState state() const noexcept;
  /// How many times it has opened (reopened after a failed probe included).
  std::uint64_t opened_total() const noexcept { return opened_.load(std::memory_order_relaxed); }
  std::uint32_t consecutive_failures() const noexcept { return failures_.load(std::memory_order_relaxed); }
  const CircuitConfig& config() const noexcept { return cfg_; }

 private:
  static std::uint64_t word(CircuitState s, Clock::time_point until) noexcept;
  void open_until(std::uint64_t expected, Clock::time_point until) noexcept;

  CircuitConfig cfg_;
  /// (deadline in ms of steady_clock << 2) | state. Deadline: end of the cooldown (open) or of
  /// the probe's allowance (half_open); 0 when closed.
  std::atomic<std::uint64_t> word_{0};
  std::atomic<std::uint32_t> failures_{0};
  std::atomic<std::uint64_t> opened_{0};
};

/// The breakers of every upstream by name, kept across route-table reloads (a reload must not
/// close an open circuit). Thread-safe; get() takes a lock and is meant for table builds, the
/// request path holds the shared_ptr from its Upstream.
class CircuitRegistry {
 public:
  explicit CircuitRegistry(CircuitConfig cfg = {}) : cfg_(cfg) {}
  /// The breaker of `upstream`, created closed on first use.
  std::shared_ptr<CircuitBreaker> get(const std::string& upstream);
  /// (upstream, breaker) for every upstream seen, sorted by name: for /metrics.
  std::vector<std::pair<std::string, std::shared_ptr<const CircuitBreaker>>> all() const;

 private:
  CircuitConfig cfg_;
  mutable std::mutex mu_;
  std::unordered_map<std::string, std::shared_ptr<CircuitBreaker>> breakers_;
};

/// Appends the circuit metrics in Prometheus text format: per upstream
/// `tollgate_upstream_circuit_state{upstream="…",state="closed|open|half_open"} 0|1` and
/// `tollgate_upstream_circuit_opened_total{upstream="…"} N`.
void render_circuit_metrics(const CircuitRegistry& registry, std::string& out);

}  // namespace tollgate::routing
