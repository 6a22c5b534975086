#pragma once
// tollgate's configuration: a TOML file (deploy/tollgate.example.toml documents every key)
// overridden by environment variables TOLLGATE_LISTEN, TOLLGATE_DATABASE_URL,
// TOLLGATE_REDIS_URL, TOLLGATE_UPSTREAM_URL, TOLLGATE_UPSTREAM_KEY, TOLLGATE_JOURNAL_DIR,
// TOLLGATE_ADMISSION (off | closed | open), TOLLGATE_ADMISSION_TIMEOUT_MS, TOLLGATE_ADMIN_LISTEN,
// TOLLGATE_STRIPE_WEBHOOK_SECRETS (comma-separated),
// TOLLGATE_ALERTS_URL, TOLLGATE_ALERTS_SECRET, TOLLGATE_ALERTS_RETRY_BASE_MS, TOLLGATE_ALERTS_POLL_MS.
// Built once at start and shared read-only.
#include "keys/key_cache.hpp"
#include "ratelimit/admission.hpp"
#include "routing/policy.hpp"
#include "routing/route_table.hpp"
#include "routing/upstream_url.hpp"

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace tollgate {

/// Where the upstream is (routing/upstream_url.hpp).
using routing::UpstreamUrl;
using routing::parse_upstream_url;

struct Config {
  // [server]
  std::string listen_host = "127.0.0.1";
  std::uint16_t listen_port = 8080;
  std::string admin_host = "127.0.0.1";             ///< /metrics, /healthz, /readyz
  std::uint16_t admin_port = 9464;
  int threads = 0;                                  ///< 0 = one per core
  std::uint64_t max_body_bytes = 10ull << 20;       ///< 413 above this
  /// Total time to receive a request head, from the connection's accept or the request's first
  /// byte (a 408 and close when part of a head came).
  std::chrono::milliseconds header_timeout{10'000};
  std::chrono::milliseconds body_idle_timeout{30'000};    ///< between two reads of a request body
  std::chrono::milliseconds keepalive_timeout{60'000};    ///< idle between requests on a connection
  std::uint32_t max_requests_per_connection = 1000; ///< then `Connection: close`
  std::size_t max_connections = 16384;              ///< per instance; above: 503 and close at accept
  std::size_t max_connections_per_address = 512;    ///< per client IP; above: closed at accept (0 = no cap)
  /// Per event loop: requests read but not yet forwarded (authenticating, reading the body,
  /// waiting for admission). Above it a request is shed at once: 503 `overloaded`.
  std::size_t max_queued_requests = 1024;
  /// On SIGTERM/SIGINT: stop accepting, let requests in flight finish for up to this long, then
  /// cut what is left (each cut stream ends with an error event and is billed for what was
  /// delivered), flush settles and usage records, exit 0. Deploy units give the process at
  /// least this plus 10 s before SIGKILL (deploy/systemd/tollgate.service: TimeoutStopSec=40).
  std::chrono::milliseconds drain_timeout{30'000};
  // [database]
  std::string database_url = "postgresql://tollgate@127.0.0.1:5432/tollgate";
  int lookup_threads = 4;                           ///< blocking Postgres lookups (cache misses)
  // [redis] and [admission]
  std::string redis_url = "redis://127.0.0.1:6379";
  ratelimit::AdmissionConfig admission;
  // [upstream]
  std::string upstream_url_text = "https://openrouter.ai/api/v1";
  UpstreamUrl upstream;
  std::string upstream_key;                         ///< never logged
  std::chrono::milliseconds upstream_connect_timeout{5'000};
  std::chrono::milliseconds upstream_response_timeout{600'000};  ///< to the response headers
  std::chrono::milliseconds upstream_idle_timeout{300'000};      ///< between body reads
  std::size_t upstream_max_idle_connections = 64;   ///< per thread
  std::uint64_t upstream_max_response_bytes = 64ull << 20;  ///< a non-streamed body; streams have no total cap
  /// The largest single SSE event of a streamed response (a Responses API `response.completed`
  /// carries the whole output). A stream is not capped in total, only per event: a longer event
  /// cuts the stream with an error event.
  std::size_t upstream_max_event_bytes = 16ull << 20;
  // [routing]: fallback to the next route and the upstreams' circuit breakers
  routing::RoutingConfig routing;
  // [billing]
  bool cost_from_upstream = false;  ///< true: bill usage.cost; false: model_prices × tokens
  std::int64_t default_max_tokens = 4096;  ///< cap sent upstream when the client sets none
  std::int64_t prompt_bytes_per_token = 1; ///< worst-case prompt tokens = body bytes / this
  // [keys]
  std::size_t key_cache_capacity = 1'000'000;
  std::chrono::milliseconds key_cache_ttl{60'000};
  std::chrono::milliseconds key_cache_negative_ttl{5'000};
  std::chrono::milliseconds key_cache_stale_if_error{keys::KeyCache::default_stale_if_error};
  // [usage]
  std::string journal_dir = ".run/journal";
  std::size_t usage_batch_rows = 5000;
  std::chrono::milliseconds usage_max_delay{100};
  /// Usage records kept in memory (~1.7 KB each) while Postgres is slow or down; beyond, they
  /// wait in the journal on disk only.
  std::size_t usage_max_queued = 100'000;
  // [stripe]: POST /webhooks/stripe (proxy/stripe_webhook.hpp)
  /// The endpoint's signing secrets ("whsec_…"), any of which a delivery may be signed with
  /// (several while a secret is rolled). Empty: the route answers 404. Never logged.
  std::vector<std::string> stripe_webhook_secrets;
  /// The most a Stripe-Signature timestamp may differ from now, either way (Stripe's default 300 s).
  std::chrono::seconds stripe_tolerance{300};
  std::uint64_t stripe_max_body_bytes = 1ull << 20;  ///< a webhook body above this: 413
  // [alerts]: operator alerts from alert_outbox (proxy/alerts.hpp)
  std::string alerts_url;     ///< where alerts are POSTed (http or https); empty: kept in the outbox, not sent
  std::string alerts_secret;  ///< HMAC-SHA256 key of Tollgate-Signature; never logged; required with a URL
  std::chrono::milliseconds alerts_retry_base{1'000};  ///< first retry delay, doubling to 1 h
  std::chrono::milliseconds alerts_poll{1'000};        ///< how often the outbox is looked at
  std::chrono::milliseconds alerts_timeout{10'000};    ///< one POST: connect, send, answer
  std::chrono::milliseconds alerts_max_age{24 * 3'600'000};  ///< then an undelivered alert is abandoned

  /// The [upstream] section as the upstream `default`: the one route while model_routes has
  /// no rows (routing/route_table.hpp).
  routing::DefaultUpstream default_upstream() const;

  /// Reads `path` (if given) then applies the environment overrides. Throws
  /// std::invalid_argument / toml parse errors with the file position.
  static Config load(const std::optional<std::string>& path);
};

}  // namespace tollgate
