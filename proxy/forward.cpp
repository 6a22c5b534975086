// Phase 5: forward. The request goes to the upstreams its model routes to, in the route
// table's order (priority, then weight), skipping those whose circuit is open, and falls back to
// the next on a connect failure, a timeout, a failure before the response head, or a status in
// [routing] retry_statuses — only while nothing has been sent to the client, at most
// routing.max_attempts attempts, within the request's deadline. The serving upstream's response
// is relayed: a complete JSON body here, server-sent events in proxy/relay.cpp.
#include "proxy/forward.hpp"

#include "proxy/accept_backoff.hpp"
#include "proxy/http_head.hpp"
#include "proxy/relay.hpp"

#include <boost/asio/write.hpp>
#include <boost/beast/http.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <optional>
#include <string>
#include <utility>

namespace tollgate {
namespace http = beast::http;
using net::awaitable;
using Kind = routing::AttemptOutcome::Kind;
using Clock = std::chrono::steady_clock;

namespace {

/// How one attempt on one upstream ended.
struct Attempt {
  routing::AttemptOutcome outcome;
  beast::error_code ec;  ///< the transport error, when there was one
  bool served = false;   ///< the upstream's response went (or began to go) to the client: done
};

std::string_view outcome_name(Kind k) {
  switch (k) {
    case Kind::connect_failed: return "connect_failed";
    case Kind::timed_out: return "timed_out";
    case Kind::failed_before_head: return "failed_before_head";
    case Kind::response: return "status";
    case Kind::cut_mid_body: return "cut_mid_body";
    case Kind::circuit_open: return "circuit_open";
  }
  return "unknown";
}

bool retry_status(const routing::RoutingConfig& rc, int status) {
  return std::find(rc.retry_statuses.begin(), rc.retry_statuses.end(), status) != rc.retry_statuses.end();
}

/// One attempt over an open connection: send the request, read the response head, then either
/// give up on it (a retryable status while `may_retry`: nothing reaches the client) or relay it.
template <class Stream>
awaitable<Attempt> exchange(Stream& up, beast::flat_buffer& upbuf, Pipe& p, RequestCtx& ctx,
                            const routing::Upstream& u, std::string_view upstream_model, bool may_retry,
                            bool& upstream_reusable) {
  App& app = p.app;
  Outcome& out = ctx.out;
  upstream_reusable = false;
  const std::string_view key = u.api_key ? std::string_view(u.api_key->reveal()) : std::string_view{};
  std::string body = ctx.dialect->upstream_body(ctx, upstream_model);
  std::string head;
  head.reserve(128 + u.wire_fields().size());
  http_head::request_line(head, "POST", u.url.base_path, ctx.upstream_path);
  head += u.wire_fields();  // Host, Authorization (or x-api-key), extra headers, Content-Type, User-Agent
  head += ctx.passthrough;  // the client's anthropic-version / anthropic-beta
  // Anthropic itself refuses a request without anthropic-version.
  if (u.auth_style == routing::AuthStyle::x_api_key && ctx.passthrough.find("anthropic-version:") == std::string::npos)
    http_head::field(head, "anthropic-version", "2023-06-01");
  http_head::field(head, "Accept", ctx.client_accept.empty() ? "application/json" : ctx.client_accept);
  http_head::finish(head, body.size(), true);

  beast::get_lowest_layer(up).expires_after(u.response_timeout);
  // Exactly once across crashes: marked sent before the first byte goes upstream (the intent
  // was journaled at admission, and is ended once the usage record is journaled).
  app.intents.sent(ctx.request_id);
  std::array<net::const_buffer, 2> request{net::buffer(head), net::buffer(body)};
  auto [send_ec, sent] = co_await net::async_write(up, request, tuple_awaitable);
  auto before_head = [](beast::error_code ec) {
    return Attempt{{ec == beast::error::timeout ? Kind::timed_out : Kind::failed_before_head}, ec};
  };
  if (send_ec) co_return before_head(send_ec);
  out.reached_upstream = true;

  http::response_parser<http::empty_body> hp;
  hp.header_limit(64 * 1024);
  auto [head_ec, head_n] = co_await http::async_read_header(up, upbuf, hp, tuple_awaitable);
  if (head_ec) co_return before_head(head_ec);
  out.status = hp.get().result_int();
  Attempt done{{Kind::response, out.status}, {}, true};
  if (may_retry && retry_status(app.cfg.routing, out.status)) {
    done.served = false;  // the connection is dropped with the unread body
    co_return done;
  }
  std::string content_type(hp.get()[http::field::content_type]);
  std::string generation_id(hp.get()["x-generation-id"]);
  if (!generation_id.empty()) out.generation_id = generation_id;

  bool error_status = out.status < 200 || out.status > 299;
  if (!error_status && content_type.rfind("text/event-stream", 0) == 0) {
    co_await relay_stream(up, upbuf, hp, p, ctx, u, content_type, upstream_reusable);
    // The upstream broke the stream off (lost, stalled, an oversized event): served (no fallback
    // after the first byte), but a failure for its circuit — unless the client left (the watch
    // closed the upstream) or a graceful stop cut it.
    if (out.upstream_aborted && !out.client_aborted && !app.stopping) done.outcome.kind = Kind::cut_mid_body;
    co_return done;
  }
  // A complete body: a non-streaming response, or an upstream error (whatever its type).
  http::response_parser<http::string_body> sp{std::move(hp)};
  sp.body_limit(app.cfg.upstream_max_response_bytes);
  auto [body_ec, body_n] = co_await http::async_read(up, upbuf, sp, tuple_awaitable);
  if (body_ec) co_return Attempt{{Kind::cut_mid_body}, body_ec};
  auto& res = sp.get();
  int client_status = out.status;
  if (!error_status) {
    ctx.dialect->read_response(res.body(), ctx);
  } else {
    // The upstream's status (a 1xx or 3xx means nothing to the client: 502), its Retry-After,
    // and its error in the dialect's envelope without the upstream's key or cost.
    ++app.metrics.upstream_errors;
    if (out.status < 400 || out.status > 599) client_status = 502;
    res.body() = ctx.dialect->upstream_error_body(out.status, res.body(), content_type, key);
    content_type = "application/json";
  }
  upstream_reusable = res.keep_alive();
  std::string to_client =
      response_head(client_status, content_type.empty() ? "application/json" : content_type, ctx,
                    res.body().size(), ctx.client_keep_alive, out.generation_id, res[http::field::retry_after]);
  count_status(app, client_status);
  p.client.expires_after(client_write_timeout);
  out.client_started = true;
  std::array<net::const_buffer, 2> reply{net::buffer(to_client), net::buffer(res.body())};
  auto [reply_ec, reply_n] = co_await net::async_write(p.client, reply, tuple_awaitable);
  if (reply_ec) out.client_aborted = true;
  else {
    out.response_complete = true;
    if (!error_status) out.delivered_bytes = static_cast<std::int64_t>(res.body().size());
  }
  co_return done;
}

/// One attempt on `u`: a pooled or new connection, then the exchange. A POST is never sent
/// twice on one upstream: a billing proxy must not pay for a generation twice, so the pool
/// discards idle connections the upstream has already closed rather than retrying on them.
awaitable<Attempt> attempt(Pipe& p, RequestCtx& ctx, const routing::Upstream& u, std::string_view upstream_model,
                           bool may_retry) {
  std::unique_ptr<UpstreamConnection> conn;
  beast::error_code ec;
  try {
    conn = co_await p.tc.upstreams.acquire(u);
  } catch (const boost::system::system_error& e) {
    ec = e.code();
  }
  if (!conn) co_return Attempt{{Kind::connect_failed}, ec};
  p.tc.in_flight.insert(conn.get());  // a graceful stop's deadline can cut it
  struct Forget {
    ThreadContext& tc;
    UpstreamConnection* c;
    ~Forget() { tc.in_flight.erase(c); }
  } forget{p.tc, conn.get()};
  bool reusable = false;
  // Streams only: a stream may run for minutes, and watching costs a wait and a cancel on the
  // client socket per request (~10 µs per request in bench/run.sh --quick at max throughput).
  std::optional<ClientWatch> watch;
  if (ctx.req.stream) watch.emplace(p.client, conn->lowest());
  Attempt a = co_await std::visit(
      [&](auto& s) { return exchange(s, conn->buffer, p, ctx, u, upstream_model, may_retry, reusable); },
      conn->stream);
  if (watch && watch->client_left()) {
    ctx.out.client_aborted = true;
    ctx.out.response_complete = false;
    reusable = false;
  }
  if (a.served && reusable) p.tc.upstreams.release(u, std::move(conn));
  co_return a;
}

/// The local reply when no upstream served the request (nothing reached the client).
Step no_upstream_reply(Pipe& p, RequestCtx& ctx, const std::optional<Attempt>& last) {
  App& app = p.app;
  if (!last)
    return fail(ctx, 503, "No upstream is available for this model right now; retry shortly.", "service_unavailable",
                "upstream_unavailable");
  const Attempt& a = *last;
  if (a.outcome.kind == Kind::connect_failed && out_of_descriptors(a.ec)) {
    // Our own limit (the open-file limit), not the upstream's fault: an honest 503.
    ++app.metrics.shed_overloaded;
    ctx.headers.emplace_back("retry-after", "1");
    return fail(ctx, 503, "tollgate is out of connections; retry shortly.", "service_unavailable", "overloaded");
  }
  if (a.outcome.kind == Kind::response) {  // a retryable status, and every other upstream refused by its circuit
    if (a.outcome.status == 429) {
      ctx.headers.emplace_back("retry-after", "1");
      return fail(ctx, 429, "The upstreams for this model are rate limited; retry shortly.", "rate_limit_error",
                  "upstream_rate_limited");
    }
    return fail(ctx, 503, "No upstream is available for this model right now; retry shortly.", "service_unavailable",
                "upstream_unavailable");
  }
  ++app.metrics.upstream_connect_failures;
  if (a.outcome.kind == Kind::timed_out)
    return fail(ctx, 504, "The upstream did not answer in time.", "upstream_error", "upstream_timeout");
  return fail(ctx, 502,
              a.outcome.kind == Kind::connect_failed ? "The upstream could not be reached."
                                                     : "The upstream connection broke before the response was complete.",
              "upstream_error", "bad_gateway");
}

}  // namespace

void cut_upstreams(ThreadContext& tc) {
  for (auto* c : tc.in_flight) {
    beast::error_code ec;
    c->lowest().socket().close(ec);  // pending operations complete with operation_aborted
  }
}

awaitable<Step> forward(Pipe& p, RequestCtx& ctx) {
  const routing::RoutingConfig& rc = p.app.cfg.routing;
  const Clock::time_point deadline = Clock::now() + p.app.cfg.upstream_response_timeout;
  std::uint32_t attempts = 0;
  std::optional<Attempt> last;
  // The last failed attempt whose request was written to its upstream (which may have begun the
  // work): what is recorded when no upstream serves the request.
  std::optional<Outcome> reached;
  std::string reached_upstream;
  for (std::size_t i = 0; i < ctx.candidates.size(); ++i) {
    const routing::Candidate& c = ctx.candidates[i];
    const routing::Upstream& u = *c.upstream;
    auto permit = u.circuit->acquire(Clock::now());
    if (!permit) {
      ctx.failed_attempts.push_back({u.name, outcome_name(Kind::circuit_open)});
      continue;  // not an attempt
    }
    ++attempts;
    bool may_retry = i + 1 < ctx.candidates.size() && attempts < rc.max_attempts && Clock::now() < deadline;
    ctx.out = Outcome{};
    Attempt a = co_await attempt(p, ctx, u, c.upstream_model, may_retry);
    // A client that left before the upstream answered had the exchange cut (ClientWatch closes
    // the upstream connection): that says nothing against the upstream.
    bool client_cut = ctx.out.client_aborted && !a.served;
    u.circuit->record(permit, client_cut || !routing::counts_against_circuit(a.outcome), Clock::now());
    if (a.served || ctx.out.client_aborted) {
      ctx.upstream = u.name;
      co_return Step::next();
    }
    ctx.failed_attempts.push_back({u.name, outcome_name(a.outcome.kind), a.outcome.status});
    spdlog::warn("{}: upstream {} failed ({}{}): {}", ctx.request_id, u.name, outcome_name(a.outcome.kind),
                 a.outcome.status ? " " + std::to_string(a.outcome.status) : "", a.ec.message());
    last = a;
    if (ctx.out.reached_upstream) {
      reached = ctx.out;
      reached_upstream = u.name;
    }
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (!routing::may_try_next(rc, a.outcome, attempts, left)) break;
  }
  // Nothing reached the client. If a request was written to an upstream, the last such attempt
  // is recorded (phase 8) as aborted, naming its upstream — also when a later attempt did not
  // connect, and never an upstream skipped by its circuit after it; every failed attempt is in
  // response_metadata "attempts".
  if (reached) {
    ctx.out = std::move(*reached);
    ctx.out.upstream_aborted = true;
    ctx.upstream = std::move(reached_upstream);
  }
  co_return no_upstream_reply(p, ctx, last);
}

}  // namespace tollgate
