#pragma once
// Fallback policy: after a failed attempt, may the request go to the next route? And does the
// outcome count against the upstream's circuit? Pure functions over an attempt's outcome; the
// request path (proxy/) applies them.
//
// A retry happens only while nothing has been sent to the client: after the first byte relayed
// there is never one. A request fully written to an upstream that then failed counts as one
// attempt like any other.
#include "routing/circuit.hpp"

#include <chrono>
#include <cstdint>
#include <vector>

namespace tollgate::routing {

/// [routing] in the configuration.
struct RoutingConfig {
  /// Upstream response statuses that send the request to the next route.
  std::vector<int> retry_statuses{429, 500, 502, 503, 504};
  /// Attempts per request, the first included (1 = no fallback).
  std::uint32_t max_attempts = 3;
  CircuitConfig circuit;
};

/// How one attempt on an upstream ended.
struct AttemptOutcome {
  enum class Kind : std::uint8_t {
    connect_failed,     ///< resolve, TCP connect or TLS handshake failed or timed out
    timed_out,          ///< written, but no response head within the response timeout
    failed_before_head, ///< written, then the connection failed before a response head came
    response,           ///< a response head came: see `status`
    cut_mid_body,       ///< the response broke off after its head (upstream died mid-stream)
    circuit_open,       ///< not attempted: the upstream's circuit refused
  };
  Kind kind = Kind::response;
  int status = 0;                    ///< the upstream's status when kind == response
  bool sent_to_client = false;       ///< any byte of a response already went to the client
};

/// Whether the request may go on to the next route after `outcome`: nothing sent to the client,
/// fewer than cfg.max_attempts attempts made (`attempts_made` counts those that reached the
/// point of connecting; a circuit refusal is not an attempt), time left before the request's
/// deadline (`time_left` > 0), and the outcome one of: connect failure, timeout, failure
/// before the response head, a status in cfg.retry_statuses, or a circuit refusal.
bool may_try_next(const RoutingConfig& cfg, const AttemptOutcome& outcome, std::uint32_t attempts_made,
                  std::chrono::milliseconds time_left) noexcept;

/// Whether the outcome counts as a failure for the upstream's circuit breaker: connect failure,
/// timeout, failure before the head, a cut body, or a 5xx response. A 429 is an answer from a
/// live upstream (rate limited, not down) and any 2xx-4xx closes nothing and opens nothing:
/// it counts as a success. circuit_open is not reported to the breaker at all.
bool counts_against_circuit(const AttemptOutcome& outcome) noexcept;

/// Checks a RoutingConfig: statuses in 400..599, max_attempts ≥ 1, failure threshold ≥ 1,
/// cooldown ≥ 1 ms. Throws std::invalid_argument naming the [routing] key.
void check_routing_config(const RoutingConfig& cfg);

}  // namespace tollgate::routing
