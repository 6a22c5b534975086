#include "proxy/connection.hpp"

#include "proxy/dialect.hpp"

#include <boost/asio/steady_timer.hpp>
#include <boost/beast/http/error.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <memory>

namespace tollgate {
namespace http = beast::http;
using net::awaitable;
using Clock = std::chrono::steady_clock;

void LogFailure::operator()(std::exception_ptr e) const noexcept {
  if (!e) return;
  ++app->metrics.session_failures;
  try {
    std::rethrow_exception(e);
  } catch (const std::exception& x) {
    spdlog::error("{} ended by an exception: {}", what, x.what());
  } catch (...) {
    spdlog::error("{} ended by an unknown exception", what);
  }
}

HttpLimits http_limits(const Config& cfg) {
  HttpLimits l;
  l.body = cfg.max_body_bytes;
  return l;
}

namespace {

/// Reads what the client sent next into `buf`, until `deadline`. Returns beast::error::timeout
/// when it passed, http::error::buffer_overflow when `buf` is full, or the socket's error. Not
/// tcp_stream's timeout: that closes the socket, and a client that ran out of time is owed a 408.
awaitable<beast::error_code> read_more(beast::tcp_stream& client, beast::flat_buffer& buf, Clock::time_point deadline) {
  std::size_t room = std::min<std::size_t>(buf.max_size() - buf.size(), 16 * 1024);
  if (room == 0) co_return http::error::buffer_overflow;
  auto& sock = client.socket();
  // 0: reading, 1: the deadline cancelled the read, 2: the read completed first. Shared with the
  // timer's handler, which may run after this frame is gone (it then touches nothing else).
  auto state = std::make_shared<int>(0);
  net::steady_timer timer(sock.get_executor());
  timer.expires_at(deadline);
  timer.async_wait([state, &sock](beast::error_code ec) {
    if (ec || *state != 0) return;
    *state = 1;
    sock.cancel();  // still reading, so the socket is alive
  });
  auto [ec, n] = co_await sock.async_read_some(buf.prepare(room), tuple_awaitable);
  if (*state == 1) co_return beast::error::timeout;
  *state = 2;
  if (!ec) buf.commit(n);
  co_return ec;
}

}  // namespace

awaitable<HeadRead> read_head(beast::tcp_stream& client, beast::flat_buffer& buf, RequestParser& parser,
                              const Config& cfg, std::optional<Clock::time_point> deadline) {
  const HttpLimits limits = http_limits(cfg);
  if (!deadline && buf.size() > 0) deadline = Clock::now() + cfg.header_timeout;  // pipelined bytes
  for (;;) {
    if (buf.size() > 0) {
      // Rescanned from the start on every read: memchr speed, about what the read itself costs,
      // and the head is at most HttpLimits::read_buffer() bytes.
      auto bytes = static_cast<const char*>(buf.data().data());
      HeadScan scan = scan_head(std::string_view(bytes, buf.size()), limits);
      if (scan.state == HeadScan::State::rejected) co_return HeadRead::of(HeadRead::State::rejected, scan.rejection);
      if (scan.state == HeadScan::State::complete) {
        buf.consume(scan.skip);
        beast::error_code ec;
        std::size_t used = parser.put(net::buffer(buf.data().data(), scan.size), ec);
        buf.consume(used);
        if (ec || !parser.is_header_done())
          co_return HeadRead::of(HeadRead::State::rejected, parser.rejection(ec ? ec : http::error::need_more));
        co_return HeadRead::of(HeadRead::State::ok);
      }
    }
    // Idle between requests: keepalive_timeout until a first byte, then header_timeout.
    auto ec = co_await read_more(client, buf, deadline.value_or(Clock::now() + cfg.keepalive_timeout));
    if (ec == beast::error::timeout) co_return HeadRead::of(HeadRead::State::timed_out, {}, buf.size() > 0);
    if (ec) co_return HeadRead::of(HeadRead::State::closed);  // end of stream or reset: nothing to answer
    if (!deadline) deadline = Clock::now() + cfg.header_timeout;
  }
}

awaitable<HeadRead> read_body(beast::tcp_stream& client, beast::flat_buffer& buf, RequestParser& parser,
                              const Config& cfg) {
  for (;;) {
    if (parser.is_done()) co_return HeadRead::of(HeadRead::State::ok);
    if (buf.size() > 0) {
      beast::error_code ec;
      std::size_t used = parser.put_body(buf.data(), ec);
      buf.consume(used);
      if (ec && ec != http::error::need_more) co_return HeadRead::of(HeadRead::State::rejected, parser.rejection(ec));
      if (parser.is_done()) co_return HeadRead::of(HeadRead::State::ok);
      if (!ec && used > 0 && buf.size() > 0) continue;  // more of the buffer to parse
    }
    auto ec = co_await read_more(client, buf, Clock::now() + cfg.body_idle_timeout);
    if (ec == beast::error::timeout) co_return HeadRead::of(HeadRead::State::timed_out, {}, true);
    // A chunk-size line longer than the read buffer: refused like other bad chunking.
    if (ec == http::error::buffer_overflow) co_return HeadRead::of(HeadRead::State::rejected, parser.rejection(ec));
    if (ec) co_return HeadRead::of(HeadRead::State::closed);  // the client went away mid-body
  }
}

awaitable<void> refuse_and_close(beast::tcp_stream& client, App& app, const RequestCtx& ctx, const Rejection& why) {
  ++app.metrics.requests_refused;
  const Dialect& d = ctx.dialect ? *ctx.dialect : openai_dialect();
  LocalReply r{static_cast<int>(why.status),
               d.error_body(static_cast<int>(why.status), why.message,
                            why.status == 503 ? "service_unavailable" : "invalid_request_error", why.code),
               true};
  co_await write_reply(client, app, ctx, r, false);
}

}  // namespace tollgate
