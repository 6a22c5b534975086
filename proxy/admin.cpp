#include "proxy/admin.hpp"

#include "proxy/accept_backoff.hpp"

#include "proxy/connection.hpp"
#include "proxy/request.hpp"
#include "sql/pg.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/beast/http.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace tollgate {
namespace http = beast::http;
using net::awaitable;
using tcp = net::ip::tcp;

std::string metrics_text(App& app) {
  auto& m = app.metrics;
  auto u = app.usage.stats();
  std::string out = fmt::format(
      "tollgate_requests_total {}\ntollgate_responses_total{{class=\"2xx\"}} {}\n"
      "tollgate_responses_total{{class=\"4xx\"}} {}\ntollgate_responses_total{{class=\"5xx\"}} {}\n"
      "tollgate_auth_failures_total {}\ntollgate_insufficient_balance_total {}\n"
      "tollgate_upstream_errors_total {}\ntollgate_upstream_connect_failures_total {}\n"
      "tollgate_client_aborts_total {}\ntollgate_streams_total {}\n"
      "tollgate_key_cache_hits_total {}\ntollgate_key_cache_misses_total {}\n"
      "tollgate_key_lookups_total {}\ntollgate_key_filter_refusals_total {}\n"
      "tollgate_admission_total{{result=\"ok\"}} {}\ntollgate_admission_total{{result=\"over_limit\"}} {}\n"
      "tollgate_admission_total{{result=\"error\"}} {}\ntollgate_admission_total{{result=\"failure_mode_allowed\"}} {}\n"
      "tollgate_admission_total{{result=\"spend_limit\"}} {}\n"
      "tollgate_active_requests {}\ntollgate_usage_records_appended_total {}\n"
      "tollgate_usage_records_committed_total {}\ntollgate_usage_records_queued {}\n"
      "tollgate_usage_batch_failures_total {}\ntollgate_usage_records_dead_lettered_total {}\n",
      m.requests.load(), m.responses_2xx.load(), m.responses_4xx.load(), m.responses_5xx.load(),
      m.auth_failures.load(), m.insufficient_balance.load(), m.upstream_errors.load(),
      m.upstream_connect_failures.load(), m.client_aborts.load(), m.streams.load(),
      m.key_cache_hits.load(), m.key_cache_misses.load(), m.key_lookups.load(), m.key_filter_refusals.load(),
      m.admission_ok.load(), m.admission_over_limit.load(),
      m.admission_errors.load(), m.failure_mode_allowed.load(), m.spend_limit_refusals.load(), m.active_requests.load(),
      u.appended,
      u.committed, u.queued, u.failures, u.dead_lettered);
  fmt::format_to(std::back_inserter(out),
                 "tollgate_connections_open {}\ntollgate_connections_refused_total{{cap=\"total\"}} {}\n"
                 "tollgate_connections_refused_total{{cap=\"per_address\"}} {}\n"
                 "tollgate_requests_refused_total {}\ntollgate_timeouts_total{{phase=\"header\"}} {}\n"
                 "tollgate_timeouts_total{{phase=\"body\"}} {}\ntollgate_shed_total{{reason=\"overloaded\"}} {}\n"
                 "tollgate_connection_failures_total {}\ntollgate_key_cache_stale_served_total {}\n"
                 "tollgate_accept_out_of_descriptors_total {}\ntollgate_overruns_total {}\n"
                 "tollgate_overrun_micros_total {}\ntollgate_usage_missing_total {}\ntollgate_cost_drift_total {}\n",
                 app.connections.open(), m.connections_refused_total.load(),
                 m.connections_refused_per_address.load(), m.requests_refused.load(), m.header_timeouts.load(),
                 m.body_timeouts.load(), m.shed_overloaded.load(), m.session_failures.load(),
                 app.key_cache.stale_served(), m.accept_out_of_descriptors.load(), m.overruns.load(),
                 m.overrun_micros.load(), m.usage_missing.load(), m.cost_drift.load());
  fmt::format_to(std::back_inserter(out),
                 "tollgate_stripe_webhooks_total{{result=\"applied\"}} {}\n"
                 "tollgate_stripe_webhooks_total{{result=\"refused\"}} {}\n"
                 "tollgate_stripe_webhooks_total{{result=\"failed\"}} {}\n",
                 m.stripe_applied.load(), m.stripe_refused.load(), m.stripe_failed.load());
  fmt::format_to(std::back_inserter(out),
                 "tollgate_alerts_total{{result=\"delivered\"}} {}\ntollgate_alerts_total{{result=\"failed\"}} {}\n"
                 "tollgate_alerts_total{{result=\"abandoned\"}} {}\ntollgate_alerts_dropped_total {}\n",
                 m.alerts_delivered.load(), m.alerts_failed.load(), m.alerts_abandoned.load(),
                 app.alert_queue.dropped());
  routing::render_circuit_metrics(app.circuits, out);
  return out;
}

namespace {

/// /readyz: every dependency a request needs answers now. Returns what is not ready ("" = ready).
awaitable<std::string> not_ready(App& app, ratelimit::RedisConnection* redis) {
  std::string missing;
  if (!app.pricing.load()) missing += " caches";  // set once the key filter and prices are loaded
  bool pg_ok = true;
  try {
    auto ping = [](sql::PgConn& db) { return db.exec("SELECT 1").rows() == 1; };
    pg_ok = co_await app.lookups.run(ping);
  } catch (const std::exception&) {
    pg_ok = false;
  }
  if (!pg_ok) missing += " postgres";
  if (redis) {
    std::vector<std::string> argv{"PING"};
    auto [ec, reply] = co_await redis->command(std::move(argv), std::chrono::milliseconds(1000));
    if (ec) missing += " redis";
  }
  co_return missing;
}

awaitable<void> admin_session(beast::tcp_stream stream, App& app, ratelimit::RedisConnection* redis) {
  beast::flat_buffer buf(16 * 1024);
  for (;;) {
    http::request_parser<http::empty_body> parser;
    parser.header_limit(8 * 1024);
    parser.body_limit(0);  // the admin endpoints take no body
    stream.expires_after(std::chrono::seconds(10));
    auto [ec, n] = co_await http::async_read(stream, buf, parser, tuple_awaitable);
    if (ec) break;  // end of stream, timeout, or a malformed request: close
    const auto& req = parser.get();
    http::response<http::string_body> res{http::status::ok, 11};
    res.keep_alive(req.keep_alive());
    std::string_view target(req.target().data(), req.target().size());
    target = target.substr(0, target.find('?'));
    if (req.method() != http::verb::get) {
      res.result(http::status::method_not_allowed);
      res.body() = "use GET\n";
    } else if (target == "/metrics") {
      res.set(http::field::content_type, "text/plain; version=0.0.4");
      res.body() = metrics_text(app);
    } else if (target == "/healthz") {
      res.set(http::field::content_type, "application/json");
      res.body() = R"({"status":"ok"})";
    } else if (target == "/readyz") {
      std::string missing = co_await not_ready(app, redis);
      res.set(http::field::content_type, "application/json");
      if (missing.empty()) {
        res.body() = R"({"status":"ready"})";
      } else {
        res.result(http::status::service_unavailable);
        res.body() = fmt::format(R"({{"status":"not ready","waiting_for":"{}"}})", missing.substr(1));
      }
    } else {
      res.result(http::status::not_found);
      res.body() = "not found: /metrics, /healthz, /readyz\n";
    }
    res.prepare_payload();
    auto [wec, wn] = co_await http::async_write(stream, res, tuple_awaitable);
    if (wec || !res.keep_alive()) break;
  }
  beast::error_code ec;
  stream.socket().shutdown(tcp::socket::shutdown_send, ec);  // the peer may be gone already
}

}  // namespace

awaitable<void> admin_accept_loop(tcp::acceptor& acceptor, App& app, ratelimit::RedisConnection* redis) {
  AcceptBackoff backoff(acceptor.get_executor(), "admin accept");
  for (;;) {
    auto [ec, sock] = co_await acceptor.async_accept(tuple_awaitable);
    if (ec == net::error::operation_aborted || !acceptor.is_open()) co_return;  // stopping
    if (ec) {
      if (co_await backoff.handle(ec, acceptor) < 0) spdlog::warn("admin accept: {}", ec.message());
      continue;
    }
    backoff.reset();
    net::co_spawn(acceptor.get_executor(), admin_session(beast::tcp_stream(std::move(sock)), app, redis),
                  LogFailure{&app, "admin connection"});
  }
}

}  // namespace tollgate
