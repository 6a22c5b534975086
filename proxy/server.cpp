#include "proxy/server.hpp"

#include "proxy/session.hpp"
#include "proxy/upstream.hpp"
#include "sql/store.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <spdlog/spdlog.h>

#include <sys/socket.h>

#include <thread>

namespace tollgate {

using tcp = net::ip::tcp;
using reuse_port = net::detail::socket_option::boolean<SOL_SOCKET, SO_REUSEPORT>;

namespace {
/// The account's balance and version from Postgres, for an account not cached in Redis yet.
net::awaitable<std::optional<std::pair<pricing::Micros, std::int64_t>>> load_balance(App& app, std::string account) {
  auto query = [account](sql::PgConn& db) { return sql::balance_and_version(db, account); };
  co_return co_await app.lookups.run(query);
}

net::awaitable<void> accept_loop(tcp::acceptor& acceptor, App& app, ThreadContext& tc) {
  for (;;) {
    auto [ec, sock] = co_await acceptor.async_accept(net::as_tuple(net::use_awaitable));
    if (ec == net::error::operation_aborted || !acceptor.is_open()) co_return;  // stopping
    if (ec) {
      spdlog::warn("accept: {}", ec.message());  // e.g. EMFILE: keep serving the others
      continue;
    }
    sock.set_option(tcp::no_delay(true));
    net::co_spawn(acceptor.get_executor(), run_session(beast::tcp_stream(std::move(sock)), app, tc),
                  net::detached);
  }
}
}  // namespace

/// One event loop: its own acceptor on the shared port (the kernel spreads connections) and
/// its own upstream pool, so the request path takes no locks of its own.
struct Server::Worker {
  net::io_context ioc{1};
  tcp::acceptor acceptor{ioc};
  UpstreamPool pool;
  std::optional<ratelimit::RedisConnection> redis;
  std::optional<ratelimit::Admitter> admitter;
  ThreadContext tc;
  std::thread thread;

  Worker(App& app, const tcp::endpoint& ep)
      : pool(ioc.get_executor(), app.cfg, app.upstream_tls), tc{pool, nullptr} {
    if (app.cfg.admission.enabled) {
      redis.emplace(ioc.get_executor(), ratelimit::parse_redis_url(app.cfg.redis_url));
      admitter.emplace(
          ioc.get_executor(), *redis, app.cfg.admission,
          [&app](std::string account) { return load_balance(app, std::move(account)); },
          [&app](std::size_t n) { app.metrics.active_requests -= static_cast<std::int64_t>(n); });
      tc.admitter = &*admitter;
    }
    acceptor.open(ep.protocol());
    acceptor.set_option(tcp::acceptor::reuse_address(true));
    acceptor.set_option(reuse_port(true));
    acceptor.bind(ep);
    acceptor.listen(net::socket_base::max_listen_connections);
  }
};


Server::Server(App& app) : app_(app) {
  const Config& cfg = app.cfg;
  int n = cfg.threads > 0 ? cfg.threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  tcp::endpoint ep(net::ip::make_address(cfg.listen_host), cfg.listen_port);
  workers_.push_back(std::make_unique<Worker>(app, ep));
  port_ = workers_.front()->acceptor.local_endpoint().port();
  ep.port(port_);
  for (int i = 1; i < n; ++i) workers_.push_back(std::make_unique<Worker>(app, ep));
}

Server::~Server() {
  for (auto& w : workers_) {
    w->ioc.stop();
    if (w->thread.joinable()) w->thread.join();
  }
}

std::uint16_t Server::port() const { return port_; }

void Server::run() {
  for (auto& w : workers_)
    net::co_spawn(w->ioc, accept_loop(w->acceptor, app_, w->tc), net::detached);
  for (std::size_t i = 1; i < workers_.size(); ++i)
    workers_[i]->thread = std::thread([w = workers_[i].get()] { w->ioc.run(); });
  workers_.front()->ioc.run();
  for (std::size_t i = 1; i < workers_.size(); ++i)
    if (workers_[i]->thread.joinable()) workers_[i]->thread.join();
}

void Server::stop(std::chrono::milliseconds grace) {
  for (auto& w : workers_) {
    net::post(w->ioc, [w = w.get()] {
      beast::error_code ec;
      w->acceptor.close(ec);  // already closed is fine
    });
  }
  auto deadline = std::chrono::steady_clock::now() + grace;
  while (app_.metrics.active_requests.load() > 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  for (auto& w : workers_) w->ioc.stop();
}

}  // namespace tollgate
