#pragma once
// One client connection: reads requests and runs each through the phases of DESIGN.md
// (parse & limit → authenticate → read body → admit → forward → price → settle → record).
#include "proxy/app.hpp"
#include "proxy/upstream.hpp"
#include "ratelimit/admission.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/beast/core/tcp_stream.hpp>

namespace tollgate {

/// What one event-loop thread owns: its upstream pool and its admission client (null when
/// admission is off).
struct ThreadContext {
  UpstreamPool& upstream;
  ratelimit::Admitter* admitter;
};

/// Serves HTTP/1.1 requests on `client` until it closes, an error, or a non-keep-alive reply.
boost::asio::awaitable<void> run_session(boost::beast::tcp_stream client, App& app, ThreadContext& tc);

}  // namespace tollgate
