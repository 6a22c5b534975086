#include "proxy/connection.hpp"

#include <boost/beast/http/read.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>

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
    if (deadline) client.expires_at(*deadline);
    else client.expires_after(cfg.keepalive_timeout);
    std::size_t room = std::min<std::size_t>(buf.max_size() - buf.size(), 16 * 1024);
    auto [ec, n] = co_await client.async_read_some(buf.prepare(room), tuple_awaitable);
    if (ec == beast::error::timeout) co_return HeadRead::of(HeadRead::State::timed_out, {}, buf.size() > 0);
    if (ec) co_return HeadRead::of(HeadRead::State::closed);  // end of stream or reset: nothing to answer
    buf.commit(n);
    if (!deadline) deadline = Clock::now() + cfg.header_timeout;
  }
}

awaitable<HeadRead> read_body(beast::tcp_stream& client, beast::flat_buffer& buf, RequestParser& parser,
                              const Config& cfg) {
  parser.eager(true);
  while (!parser.is_done()) {
    client.expires_after(cfg.body_idle_timeout);
    auto [ec, n] = co_await http::async_read_some(client, buf, parser, tuple_awaitable);
    if (!ec) continue;
    if (ec == beast::error::timeout) co_return HeadRead::of(HeadRead::State::timed_out, {}, true);
    const bool parse_error = ec.category() == beast::error_code(http::error::bad_value).category() &&
                             ec != http::error::end_of_stream && ec != http::error::partial_message;
    if (!parse_error) co_return HeadRead::of(HeadRead::State::closed);  // the client went away mid-body
    co_return HeadRead::of(HeadRead::State::rejected, parser.rejection(ec));
  }
  co_return HeadRead::of(HeadRead::State::ok);
}

awaitable<void> refuse_and_close(beast::tcp_stream& client, App& app, const RequestCtx& ctx, const Rejection& why) {
  ++app.metrics.requests_refused;
  co_await reply_error(client, app, ctx, static_cast<http::status>(why.status), why.message,
                       why.status == 503 ? "service_unavailable" : "invalid_request_error", why.code, false);
  co_await drain_and_close(client);
}

}  // namespace tollgate
