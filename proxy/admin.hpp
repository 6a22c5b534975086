#pragma once
// The admin listener (config server.admin_listen, default 127.0.0.1:9464), apart from the
// public API: GET /metrics (Prometheus text), /healthz (the process serves), /readyz
// (PostgreSQL and Redis answer, and the key filter and price snapshot are loaded).
#include "proxy/app.hpp"
#include "ratelimit/redis_client.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <string>

namespace tollgate {

/// The counters of App::metrics and the usage writer, in Prometheus' text format 0.0.4.
std::string metrics_text(App& app);

/// Accepts admin connections until `acceptor` is closed. `redis` (null when admission is off)
/// is pinged by /readyz; it must live on the acceptor's event loop.
boost::asio::awaitable<void> admin_accept_loop(boost::asio::ip::tcp::acceptor& acceptor, App& app,
                                               ratelimit::RedisConnection* redis);

}  // namespace tollgate
