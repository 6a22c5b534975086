#pragma once
// One client connection: reads requests and runs each through the phases of DESIGN.md
// (parse & limit → authenticate → read body → admit → forward → price → settle → record).
#include "proxy/app.hpp"
#include "proxy/phase.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core/tcp_stream.hpp>

#include <memory>
#include <string>
#include <unordered_map>

namespace tollgate {

/// Serves HTTP/1.1 requests on `client` until it closes, an error, a non-keep-alive reply, a
/// refused request or a timeout. `slot` is the connection's place under the caps, held till
/// the end.
boost::asio::awaitable<void> run_session(boost::beast::tcp_stream client, App& app, ThreadContext& tc,
                                         ConnectionLimiter::Slot slot);

}  // namespace tollgate
