#pragma once
// Phase 1 (parse & limit) for one client connection: connection caps at accept, reading a
// request head and body under the strict parser (proxy/request_parser.hpp) and the connection's
// timers, and answering a refused request before closing.
#include "proxy/request.hpp"
#include "proxy/request_parser.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>

#include <chrono>
#include <optional>

namespace tollgate {

/// A co_spawn completion handler for a connection's coroutine: an exception that ended it is
/// logged and counted (Metrics::session_failures), never rethrown into the event loop.
struct LogFailure {
  App* app;
  const char* what;  ///< e.g. "connection"
  void operator()(std::exception_ptr e) const noexcept;
};

/// How reading a request head ended.
struct HeadRead {
  enum class State { ok, closed, timed_out, rejected };
  State state = State::closed;
  Rejection rejection;   ///< when rejected
  bool partial = false;  ///< when timed out: some bytes of a head had arrived

  static HeadRead of(State s, Rejection why = {}, bool partial = false) {
    HeadRead r;
    r.state = s;
    r.rejection = std::move(why);
    r.partial = partial;
    return r;
  }
};

/// The limits of a request under this configuration.
HttpLimits http_limits(const Config& cfg);

/// Reads one request head into `parser` (leftover bytes stay in `buf`, whose max_size must be
/// HttpLimits::read_buffer()). The head must be complete by `deadline` when set (the first
/// request: accept time + header_timeout); otherwise the connection may idle for
/// keepalive_timeout before the first byte, then has header_timeout for the head.
boost::asio::awaitable<HeadRead> read_head(boost::beast::tcp_stream& client, boost::beast::flat_buffer& buf,
                                           RequestParser& parser, const Config& cfg,
                                           std::optional<std::chrono::steady_clock::time_point> deadline);

/// Reads the body the head announced into parser.body(), each read within body_idle_timeout.
/// Returns ok, closed (client gone), timed_out, or rejected (bad chunking, body over the limit).
boost::asio::awaitable<HeadRead> read_body(boost::beast::tcp_stream& client, boost::beast::flat_buffer& buf,
                                           RequestParser& parser, const Config& cfg);

/// Answers a refused request in OpenAI's error envelope with `Connection: close`, then closes
/// gracefully: stops sending and discards what the client still sends (bounded), so that it
/// reads the answer instead of a reset.
boost::asio::awaitable<void> refuse_and_close(beast::tcp_stream& client, App& app, const RequestCtx& ctx,
                                              const Rejection& why);

}  // namespace tollgate
