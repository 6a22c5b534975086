#pragma once
// Delivery of operator alerts (issue 14, part 4): events in Postgres' alert_outbox (migration
// 0014) are POSTed as JSON to alerts.url, signed the way Stripe signs webhooks, at least once,
// retried with exponential backoff for up to alerts.max_age (24 h), surviving restarts.
//
// Body: {"id": event_id, "type": "balance.low" | "spend_limit.reached", "created": Unix s,
//        "data": {…}}.
// Header: `Tollgate-Signature: t=<Unix s>,v1=<hex HMAC-SHA256 of "<t>.<body>" keyed by alerts.secret>`.
#include "proxy/app.hpp"
#include "sql/alert_outbox.hpp"

#include <boost/asio/ssl/context.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <thread>

namespace tollgate {

/// The Tollgate-Signature header's value for `body` sent at `t` (Unix seconds):
/// "t=<t>,v1=<64 lowercase hex digits of HMAC-SHA256(secret, "<t>.<body>")>".
std::string alert_signature(std::string_view secret, std::int64_t t, std::string_view body);

/// How long to wait after the `failures`-th failed delivery (1, 2, …) of one alert:
/// min(base × 2^(failures−1), cap), scaled by a jitter factor 0.8 + 0.4 × `jitter_unit`
/// (`jitter_unit` in [0, 1), random in production) and never above cap. With base 1 s and
/// cap 1 h: ~1 s, 2 s, 4 s … 2048 s, then 1 h.
std::chrono::milliseconds alert_retry_delay(int failures, std::chrono::milliseconds base,
                                            std::chrono::milliseconds cap, double jitter_unit);

/// The JSON body POSTed for one outbox row (see above); throws if payload_json is not JSON.
std::string alert_body(const sql::OutboxAlert& a);

/// The alert task of `tollgate serve`: one thread of its own (blocking libpq calls and a Beast
/// HTTP client on its own io_context, never on the request-serving event loops). Every
/// alerts.poll_ms it moves queued spend_limit.reached events into the outbox, then, if
/// alerts.url is set, claims due rows (sql::claim_due_alerts) and POSTs each: 2xx marks it
/// delivered, anything else (or no answer within alerts.timeout_ms) schedules a retry
/// (alert_retry_delay with alerts.retry_base_ms, cap 1 h). Without alerts.url the outbox fills
/// and nothing is sent. Postgres errors are logged and retried next poll; the secret is never
/// logged. Counts into app.metrics (alerts_delivered, alerts_failed, alerts_abandoned).
class AlertDelivery {
 public:
  /// Uses app.cfg ([alerts], database.url), app.alert_queue, app.upstream_tls (https) and app.metrics.
  explicit AlertDelivery(App& app);
  ~AlertDelivery();
  AlertDelivery(const AlertDelivery&) = delete;
  AlertDelivery& operator=(const AlertDelivery&) = delete;

  void start();
  /// Stops the thread; a POST in flight is cut (its row is sent again after its lease ends).
  void stop();

 private:
  void run();
  struct Impl;
  const Config& cfg_;
  AlertQueue& queue_;
  boost::asio::ssl::context& tls_;
  Metrics& metrics_;
  std::unique_ptr<Impl> impl_;
  std::thread thread_;
  std::atomic<bool> stopping_{false};
};

}  // namespace tollgate
