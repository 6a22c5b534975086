// One client connection and the request path through it. Read top to bottom:
//   run_session     — the connection loop (phase 1: parse & limit)
//   handle_request  — one request: route it (proxy/endpoints.cpp), shed, authenticate
//                     (proxy/auth.cpp), run its endpoint's handler — for the proxied endpoints
//                     read body, parse, admit (proxy/admit.cpp), forward (proxy/forward.cpp),
//                     record and settle (proxy/record.cpp) — then finish: the one place that
//                     writes a local reply and decides keep-alive.
#include "proxy/session.hpp"

#include "proxy/connection.hpp"
#include "proxy/endpoints.hpp"

#include <boost/beast/http.hpp>
#include <spdlog/spdlog.h>

#include <chrono>

namespace tollgate {
namespace http = beast::http;
using net::awaitable;

namespace {

struct ActiveGuard {
  Metrics& m;
  explicit ActiveGuard(Metrics& mm) : m(mm) { ++m.active_requests; }
  ~ActiveGuard() { --m.active_requests; }
};

/// Routing, shedding, authentication and the endpoint's handler.
awaitable<Step> run_phases(Pipe& p, RequestCtx& ctx) {
  const auto& h = p.parser.header();
  Step s = route_request(ctx, h.method(), std::string_view(h.method_string().data(), h.method_string().size()),
                         std::string_view(h.target().data(), h.target().size()));
  if (s.answered()) co_return s;
  // Shed before doing any work when this event loop is saturated: an honest 503, not a Redis
  // deadline missed while the request waited in our own queue.
  if (p.tc.queued >= p.app.cfg.max_queued_requests) {
    ++p.app.metrics.shed_overloaded;
    ctx.headers.emplace_back("retry-after", "1");
    co_return fail(ctx, 503, "tollgate is overloaded; retry shortly.", "service_unavailable", "overloaded");
  }
  ++p.tc.queued;
  p.queued = &p.tc.queued;
  if (ctx.route->auth == AuthPolicy::api_key) {
    s = co_await authenticate(p, ctx);
    if (s.answered()) co_return s;
  }
  ctx.pricing = p.app.pricing.load();
  co_return co_await ctx.route->handler(p, ctx);
}

/// Ends a request: writes its local reply, if any, and decides whether the connection carries
/// another request — the client allows it, the request's body was read whole, and the reply
/// (or the relayed response) reached the client complete.
awaitable<bool> finish(Pipe& p, const RequestCtx& ctx, const Step& s) {
  if (s.hung_up()) co_return false;
  if (s.answered()) {
    const LocalReply& r = s.reply();
    bool body_read = !p.parser.has_body() || p.parser.is_done();
    bool keep = ctx.client_keep_alive && body_read && !r.drain;
    bool written = co_await write_reply(p.client, p.app, ctx, r, keep);
    co_return written && keep;
  }
  co_return ctx.client_keep_alive && ctx.out.response_complete && !ctx.out.client_aborted;
}

/// One request. `last`: the connection's final request (max_requests_per_connection). Returns
/// whether to keep the connection.
awaitable<bool> handle_request(beast::tcp_stream& client, beast::flat_buffer& buf, RequestParser& parser, App& app,
                               ThreadContext& tc, bool last) {
  ActiveGuard active(app.metrics);
  ++app.metrics.requests;
  RequestCtx ctx;
  ctx.client_keep_alive = parser.keep_alive() && !last && !app.stopping;  // a graceful stop closes
  ctx.client_http10 = parser.header().version() == 10;
  Pipe p{app, tc, client, buf, parser};
  Step s = co_await run_phases(p, ctx);
  p.leave_queue();
  co_return co_await finish(p, ctx, s);
}

}  // namespace

awaitable<void> run_session(beast::tcp_stream client, App& app, ThreadContext& tc, ConnectionLimiter::Slot slot) {
  // Phase 1: parse & limit. One read buffer per connection, bounded (a complete head fits);
  // one strict parser per request.
  beast::flat_buffer buf(http_limits(app.cfg).read_buffer());
  std::optional<std::chrono::steady_clock::time_point> head_deadline =
      std::chrono::steady_clock::now() + app.cfg.header_timeout;
  // Named, not temporaries inside co_await expressions: GCC 12 may destroy those twice.
  const RequestCtx no_request;
  const Rejection head_late{408, "request_timeout", "The request head did not arrive in time."};
  for (std::uint32_t served = 0; served < app.cfg.max_requests_per_connection; ++served) {
    RequestParser parser(http_limits(app.cfg));
    HeadRead head = co_await read_head(client, buf, parser, app.cfg, std::exchange(head_deadline, std::nullopt));
    if (head.state == HeadRead::State::rejected) {
      co_await refuse_and_close(client, app, no_request, head.rejection);
      co_return;
    }
    if (head.state == HeadRead::State::timed_out) {
      if (!head.partial) break;  // idle: closed quietly, as nginx does
      ++app.metrics.header_timeouts;
      co_await refuse_and_close(client, app, no_request, head_late);
      co_return;
    }
    if (head.state != HeadRead::State::ok) break;  // end of stream or reset: nothing to answer
    bool last = served + 1 == app.cfg.max_requests_per_connection;
    if (!co_await handle_request(client, buf, parser, app, tc, last)) break;
  }
  beast::error_code ec;
  client.socket().shutdown(net::ip::tcp::socket::shutdown_send, ec);  // peer may already be gone
}

}  // namespace tollgate
