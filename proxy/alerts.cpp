#include "proxy/alerts.hpp"

#include "proxy/stripe_signature.hpp"  // hmac_sha256_hex: Stripe's scheme, reused
#include "proxy/upstream.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/http.hpp>
#include <boost/json.hpp>
#include <boost/url/parse.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <random>

namespace tollgate {

namespace http = beast::http;

std::string alert_signature(std::string_view secret, std::int64_t t, std::string_view body) {
  std::string signed_payload = std::to_string(t);
  signed_payload += '.';
  signed_payload.append(body);
  return "t=" + std::to_string(t) + ",v1=" + stripe::hmac_sha256_hex(secret, signed_payload);
}

std::chrono::milliseconds alert_retry_delay(int failures, std::chrono::milliseconds base,
                                            std::chrono::milliseconds cap, double jitter_unit) {
  const std::int64_t c = cap.count();
  std::int64_t d = std::max<std::int64_t>(base.count(), 1);
  for (int i = 1; i < failures && d < c; ++i) d *= 2;
  d = std::min(d, c);
  auto jittered = static_cast<std::int64_t>(static_cast<double>(d) * (0.8 + 0.4 * std::clamp(jitter_unit, 0.0, 1.0)));
  return std::chrono::milliseconds(std::clamp<std::int64_t>(jittered, 1, c));
}

std::string alert_body(const sql::OutboxAlert& a) {
  boost::json::object o;
  o["id"] = a.event_id;
  o["type"] = a.type;
  o["created"] = a.created_s;
  o["data"] = boost::json::parse(a.payload_json);
  return boost::json::serialize(o);
}

namespace {

/// Where alerts go: the origin (for the connection) and the request target (path and query).
struct Destination {
  routing::UpstreamUrl origin;
  std::string target;
  std::string host_header;
};

Destination parse_destination(const std::string& url) {
  Destination d;
  d.origin = routing::parse_upstream_url(url);
  auto u = boost::urls::parse_absolute_uri(url);
  d.target = u ? std::string(u->encoded_target()) : std::string();
  if (d.target.empty() || d.target.front() != '/') d.target.insert(0, "/");
  bool default_port = d.origin.port == (d.origin.tls ? "443" : "80");
  d.host_header = default_port ? d.origin.host : d.origin.host + ":" + d.origin.port;
  return d;
}

/// POSTs `body` and returns the status, or throws boost::system::system_error.
net::awaitable<unsigned> post(net::ssl::context& tls, const Destination& dest, std::string body,
                              std::string signature, std::chrono::milliseconds timeout) {
  auto ex = co_await net::this_coro::executor;
  UpstreamPool pool(ex, tls, dest.origin, 0);
  auto conn = co_await pool.connect(timeout);
  http::request<http::string_body> req{http::verb::post, dest.target, 11};
  req.set(http::field::host, dest.host_header);
  req.set(http::field::user_agent, "tollgate-alerts");
  req.set(http::field::content_type, "application/json");
  req.set("Tollgate-Signature", signature);
  req.body() = std::move(body);
  req.prepare_payload();
  http::response_parser<http::string_body> parser;
  parser.body_limit(64 * 1024);
  conn->lowest().expires_after(timeout);
  co_await std::visit(
      [&](auto& s) -> net::awaitable<void> {
        co_await http::async_write(s, req, net::use_awaitable);
        co_await http::async_read(s, conn->buffer, parser, net::use_awaitable);
      },
      conn->stream);
  co_return parser.get().result_int();
}

}  // namespace

struct AlertDelivery::Impl {
  std::mutex mu;
  std::condition_variable wake;
  net::io_context* io = nullptr;  ///< the POST in flight, stopped by stop()
};

AlertDelivery::AlertDelivery(App& app)
    : cfg_(app.cfg), queue_(app.alert_queue), tls_(app.upstream_tls), metrics_(app.metrics), impl_(std::make_unique<Impl>()) {}

AlertDelivery::~AlertDelivery() { stop(); }

void AlertDelivery::start() {
  if (cfg_.alerts_url.empty())
    spdlog::warn("alerts.url is not set: alerts are written to alert_outbox but not delivered");
  else
    spdlog::info("alerts: delivering to {}", parse_destination(cfg_.alerts_url).host_header);
  thread_ = std::thread([this] { run(); });
}

void AlertDelivery::stop() {
  {
    std::lock_guard lock(impl_->mu);
    stopping_ = true;
    if (impl_->io) impl_->io->stop();
  }
  impl_->wake.notify_all();
  if (thread_.joinable()) thread_.join();
}

void AlertDelivery::run() {
  std::optional<Destination> dest;
  if (!cfg_.alerts_url.empty()) dest = parse_destination(cfg_.alerts_url);
  std::optional<sql::PgConn> db;
  std::vector<SpendLimitEvent> pending;  // taken from the queue, not yet in the outbox
  std::mt19937_64 rng(std::random_device{}());
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  constexpr auto cap = std::chrono::hours(1);
  while (!stopping_) {
    try {
      if (!db || !db->healthy()) db.emplace(cfg_.database_url);
      for (auto& e : queue_.take()) pending.push_back(std::move(e));
      while (!pending.empty()) {
        const auto& e = pending.back();
        try {
          if (sql::insert_alert(*db, e.event_id(), "spend_limit.reached", e.account, e.payload_json()))
            spdlog::info("alert spend_limit.reached queued: {}", e.event_id());
        } catch (const sql::PgError& err) {
          if (err.sqlstate != "23503") throw;  // else the account is gone: nothing to alert
        }
        pending.pop_back();
      }
      if (dest) {
        // Leased for longer than the POSTs of one batch can take, then sent one by one.
        const int batch = 20;
        auto lease = cfg_.alerts_timeout * (batch + 1);
        auto claimed = sql::claim_due_alerts(*db, batch, lease);
        std::size_t done = 0;
        for (; done < claimed.size(); ++done) {
          const auto& a = claimed[done];
          if (stopping_) break;
          std::string error;
          unsigned status = 0;
          try {
            std::string body = alert_body(a);
            auto now_s = std::chrono::duration_cast<std::chrono::seconds>(
                             std::chrono::system_clock::now().time_since_epoch()).count();
            std::string sig = alert_signature(cfg_.alerts_secret, now_s, body);
            net::io_context io;
            {
              std::lock_guard lock(impl_->mu);
              if (stopping_) break;
              impl_->io = &io;
            }
            std::exception_ptr failure;
            net::co_spawn(io, post(tls_, *dest, std::move(body), std::move(sig), cfg_.alerts_timeout),
                          [&](std::exception_ptr ep, unsigned s) { failure = ep, status = s; });
            io.run();
            {
              std::lock_guard lock(impl_->mu);
              impl_->io = nullptr;
            }
            if (stopping_) break;  // cut mid-POST: released below, sent again (at least once)
            if (failure) std::rethrow_exception(failure);
            if (status < 200 || status > 299) error = fmt::format("HTTP {}", status);
          } catch (const std::exception& ex) {
            error = ex.what();
          }
          if (error.empty()) {
            sql::mark_alert_delivered(*db, a.id);
            ++metrics_.alerts_delivered;
            spdlog::info("alert {} {} delivered (HTTP {})", a.type, a.event_id, status);
          } else {
            ++metrics_.alerts_failed;
            auto delay = alert_retry_delay(a.attempts + 1, cfg_.alerts_retry_base, cap, unit(rng));
            bool abandoned = sql::mark_alert_failed(*db, a.id, error, delay, cfg_.alerts_max_age);
            if (abandoned) ++metrics_.alerts_abandoned;
            spdlog::warn("alert {} {} not delivered ({}): {}", a.type, a.event_id, error,
                         abandoned ? "abandoned" : fmt::format("retry in {} ms", delay.count()));
          }
        }
        // Stopping: the rows not sent (and one cut mid-POST) are due again now, for the next
        // instance, instead of at the end of their lease.
        if (done < claimed.size()) {
          std::vector<std::int64_t> left;
          for (std::size_t i = done; i < claimed.size(); ++i) left.push_back(claimed[i].id);
          sql::release_alerts(*db, left);
        }
      }
    } catch (const std::exception& e) {
      spdlog::error("alerts: {}; retrying", e.what());
      db.reset();
    }
    std::unique_lock lock(impl_->mu);
    impl_->wake.wait_for(lock, cfg_.alerts_poll, [&] { return stopping_.load(); });
  }
  // Stopping: what the request path queued since the last poll goes into the outbox if it can.
  for (auto& e : queue_.take()) pending.push_back(std::move(e));
  if (pending.empty()) return;
  try {
    if (!db || !db->healthy()) db.emplace(cfg_.database_url, std::chrono::seconds(2));
    for (const auto& e : pending) sql::insert_alert(*db, e.event_id(), "spend_limit.reached", e.account, e.payload_json());
  } catch (const std::exception& e) {
    spdlog::warn("alerts: {} spend_limit.reached event(s) not written at stop: {}", pending.size(), e.what());
  }
}

}  // namespace tollgate
