#pragma once
// The shared, long-lived objects every request uses. Built once in main.cpp (the only place
// that wires concrete classes together) and passed by reference.
#include "keys/key_cache.hpp"
#include "keys/key_filter.hpp"
#include "proxy/alert_queue.hpp"
#include "pricing/pricing.hpp"
#include "proxy/config.hpp"
#include "proxy/connection_limiter.hpp"
#include "proxy/lookup_pool.hpp"
#include "proxy/seams.hpp"
#include "routing/circuit.hpp"
#include "routing/route_table.hpp"
#include "sql/intent_journal.hpp"
#include "sql/usage_writer.hpp"

#include <boost/asio/ssl/context.hpp>

#include <atomic>
#include <cstdint>

namespace tollgate {

/// Counters exposed at GET /metrics (Prometheus text). Never labelled with keys or accounts.
struct Metrics {
  std::atomic<std::uint64_t> requests{0};
  std::atomic<std::uint64_t> responses_2xx{0}, responses_4xx{0}, responses_5xx{0};
  std::atomic<std::uint64_t> auth_failures{0}, insufficient_balance{0};
  std::atomic<std::uint64_t> upstream_errors{0}, upstream_connect_failures{0};
  std::atomic<std::uint64_t> client_aborts{0}, streams{0};
  /// Charges capped at the request's hold (what an upstream delivered or reported beyond the
  /// worst case admitted), and their excess in credit units.
  std::atomic<std::uint64_t> overruns{0}, overrun_micros{0};
  std::atomic<std::uint64_t> usage_missing{0};  ///< 2xx without believable usage: billed as delivered
  std::atomic<std::uint64_t> cost_drift{0};  ///< computed cost > 1 % from the upstream's usage.cost
  std::atomic<std::uint64_t> key_cache_hits{0}, key_cache_misses{0};
  std::atomic<std::uint64_t> key_lookups{0};           ///< Postgres lookups of keys
  std::atomic<std::uint64_t> key_filter_refusals{0};   ///< refused by the filter, no lookup
  std::atomic<std::uint64_t> admission_ok{0}, admission_over_limit{0}, admission_errors{0};
  std::atomic<std::uint64_t> failure_mode_allowed{0};
  std::atomic<std::uint64_t> spend_limit_refusals{0};  ///< 402: a key's or account's spend limit
  std::atomic<std::int64_t> active_requests{0};
  // Phase 1 (parse & limit) and the connection caps.
  std::atomic<std::uint64_t> requests_refused{0};      ///< 400/408/413/414/431/501/505 before routing, closed
  std::atomic<std::uint64_t> header_timeouts{0}, body_timeouts{0};
  std::atomic<std::uint64_t> shed_overloaded{0};       ///< 503 overloaded: the event loop's queue was full
  std::atomic<std::uint64_t> connections_refused_total{0}, connections_refused_per_address{0};
  std::atomic<std::uint64_t> accept_out_of_descriptors{0};  ///< accept(2) failed with EMFILE/ENFILE
  std::atomic<std::uint64_t> session_failures{0};      ///< connections ended by an exception (logged)
  // POST /webhooks/stripe: events recorded (replays too), refused (400: signature, time, JSON),
  // and not applied because Postgres failed (503).
  std::atomic<std::uint64_t> stripe_applied{0}, stripe_refused{0}, stripe_failed{0};
  /// Operator alerts (proxy/alerts.hpp): POSTs answered 2xx; failed POSTs (each retry counts);
  /// alerts given up after alerts.max_age.
  std::atomic<std::uint64_t> alerts_delivered{0}, alerts_failed{0}, alerts_abandoned{0};
};

struct App {
  const Config& cfg;
  keys::KeyCache& key_cache;
  keys::KeyFilter& key_filter;
  std::atomic<pricing::PricingSnapshotPtr>& pricing;
  KeySource& key_source;             ///< API keys and balances (Postgres)
  LookupPool& lookups;               ///< Postgres off the request path (readiness, Redis's balance loads)
  sql::UsageSink& usage;
  sql::IntentJournal& intents;  ///< requests in flight, for crash recovery
  boost::asio::ssl::context& upstream_tls;
  /// Upstreams and model routes, swapped whole on NOTIFY tollgate_routes (sql/route_store.hpp).
  std::atomic<routing::RouteTablePtr>& routes;
  routing::CircuitRegistry& circuits;  ///< every upstream's breaker, for /metrics
  Metrics metrics;
  ConnectionLimiter connections{cfg.max_connections, cfg.max_connections_per_address};
  /// A graceful stop has begun (SIGTERM): responses say `Connection: close`, and streams cut at
  /// the drain deadline say so in their error event.
  std::atomic<bool> stopping{false};
  /// The self-service endpoints' reports (GET /api/v1/key, …; Postgres). Set after
  /// construction (main.cpp); null: those endpoints answer 503.
  AccountSource* accounts = nullptr;
  /// spend_limit.reached events for the alert task (proxy/alerts.hpp), pushed by admit.
  AlertQueue alert_queue{1024};
};

}  // namespace tollgate
