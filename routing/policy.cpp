#include "routing/policy.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <stdexcept>

namespace tollgate::routing {

bool may_try_next(const RoutingConfig& cfg, const AttemptOutcome& outcome, std::uint32_t attempts_made,
                  std::chrono::milliseconds time_left) noexcept {
  using K = AttemptOutcome::Kind;
  if (outcome.sent_to_client || time_left.count() <= 0) return false;
  if (outcome.kind != K::circuit_open && attempts_made >= cfg.max_attempts) return false;
  switch (outcome.kind) {
    case K::connect_failed:
    case K::timed_out:
    case K::failed_before_head:
    case K::circuit_open:
      return true;
    case K::response:
      return std::find(cfg.retry_statuses.begin(), cfg.retry_statuses.end(), outcome.status) !=
             cfg.retry_statuses.end();
    case K::cut_mid_body:
      return false;  // a body had begun: what came may be half an answer
  }
  return false;
}

bool counts_against_circuit(const AttemptOutcome& outcome) noexcept {
  using K = AttemptOutcome::Kind;
  switch (outcome.kind) {
    case K::connect_failed:
    case K::timed_out:
    case K::failed_before_head:
    case K::cut_mid_body:
      return true;
    case K::response:
      return outcome.status >= 500;
    case K::circuit_open:
      return false;
  }
  return false;
}

void check_routing_config(const RoutingConfig& cfg) {
  for (int s : cfg.retry_statuses)
    if (s < 400 || s > 599)
      throw std::invalid_argument(fmt::format("routing.retry_statuses: {} is not a 4xx or 5xx status", s));
  if (cfg.max_attempts < 1) throw std::invalid_argument("routing.max_attempts must be >= 1");
  if (cfg.circuit.failure_threshold < 1) throw std::invalid_argument("routing.circuit_failure_threshold must be >= 1");
  if (cfg.circuit.cooldown.count() < 1) throw std::invalid_argument("routing.circuit_cooldown_ms must be >= 1");
}

}  // namespace tollgate::routing
