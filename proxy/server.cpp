#include "proxy/server.hpp"

#include "proxy/accept_backoff.hpp"
#include "proxy/admin.hpp"
#include "proxy/concrete_seams.hpp"
#include "proxy/connection.hpp"
#include "proxy/session.hpp"
#include "proxy/upstream.hpp"
#include "sql/store.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
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

/// What a key or account was charged since a spend limit's period began (Postgres), to seed its
/// window in Redis.
net::awaitable<pricing::Micros> load_spend(App& app, std::string scope, std::string owner, std::int64_t since_ms) {
  auto query = [scope = std::move(scope), owner = std::move(owner), since_ms](sql::PgConn& db) {
    return sql::charged_since(db, scope, owner, since_ms);
  };
  co_return co_await app.lookups.run(query);
}

/// Accepts connections until the acceptor closes. Out of file descriptors, it backs off and
/// answers the backlog with 503s (AcceptBackoff): the connections already open keep being served.
net::awaitable<void> accept_loop(tcp::acceptor& acceptor, App& app, ThreadContext& tc) {
  AcceptBackoff backoff(acceptor.get_executor(), "accept");
  for (;;) {
    auto [ec, sock] = co_await acceptor.async_accept(net::as_tuple(net::use_awaitable));
    if (ec == net::error::operation_aborted || !acceptor.is_open()) co_return;  // stopping
    if (ec) {
      std::int64_t refused = co_await backoff.handle(ec, acceptor);
      if (refused < 0) spdlog::warn("accept: {}", ec.message());
      else {
        ++app.metrics.accept_out_of_descriptors;
        app.metrics.connections_refused_total += static_cast<std::uint64_t>(refused);
      }
      continue;
    }
    backoff.reset();
    auto peer = sock.remote_endpoint(ec);
    if (ec) continue;  // already reset by the peer: the socket closes here
    ConnectionLimiter::Refusal refusal;
    auto slot = app.connections.acquire(peer.address(), refusal);
    if (refusal == ConnectionLimiter::Refusal::per_address) {
      ++app.metrics.connections_refused_per_address;
      continue;  // closed at accept: one address must not take every slot
    }
    if (refusal == ConnectionLimiter::Refusal::total) {
      ++app.metrics.connections_refused_total;
      refuse_at_accept(sock);
      continue;
    }
    sock.set_option(tcp::no_delay(true), ec);  // a failure only costs latency
    net::co_spawn(acceptor.get_executor(), run_session(beast::tcp_stream(std::move(sock)), app, tc, std::move(slot)),
                  LogFailure{&app, "connection"});
  }
}

/// Runs an event loop until it is stopped. An exception that escapes a handler is logged and
/// counted, and the loop goes on serving every other connection.
void run_loop(net::io_context& ioc, App& app) {
  for (;;) {
    try {
      ioc.run();
      return;
    } catch (const std::exception& e) {
      ++app.metrics.session_failures;
      spdlog::error("event loop: an exception escaped a handler: {}", e.what());
    } catch (...) {
      ++app.metrics.session_failures;
      spdlog::error("event loop: an unknown exception escaped a handler");
    }
  }
}
}  // namespace

/// One event loop: its own acceptor on the shared port (the kernel spreads connections) and
/// its own upstream pools, so the request path takes no locks of its own.
struct Server::Worker {
  net::io_context ioc{1};
  tcp::acceptor acceptor{ioc};
  UpstreamPools pools;
  std::optional<ratelimit::RedisConnection> redis;
  std::optional<ratelimit::Admitter> admitter;
  std::optional<RedisAdmission> admission;
  ThreadContext tc;
  std::thread thread;

  std::optional<tcp::acceptor> admin;  ///< the first worker's: /metrics, /healthz, /readyz

  Worker(App& app, const tcp::endpoint& ep)
      : pools(ioc.get_executor(), app.upstream_tls), tc{pools} {
    if (app.cfg.admission.enabled) {
      redis.emplace(ioc.get_executor(), ratelimit::parse_redis_url(app.cfg.redis_url));
      admitter.emplace(
          ioc.get_executor(), *redis, app.cfg.admission,
          [&app](std::string account) { return load_balance(app, std::move(account)); },
          [&app](std::size_t n) { app.metrics.active_requests -= static_cast<std::int64_t>(n); }, nullptr,
          [&app](std::string scope, std::string owner, std::int64_t since_ms) {
            return load_spend(app, std::move(scope), std::move(owner), since_ms);
          });
      admission.emplace(*admitter);
      tc.admission = &*admission;
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
  auto& first = *workers_.front();
  first.admin.emplace(first.ioc, tcp::endpoint(net::ip::make_address(cfg.admin_host), cfg.admin_port));
  admin_port_ = first.admin->local_endpoint().port();
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
std::uint16_t Server::admin_port() const { return admin_port_; }

void Server::run() {
  for (auto& w : workers_)
    net::co_spawn(w->ioc, accept_loop(w->acceptor, app_, w->tc), LogFailure{&app_, "accept loop"});
  auto& first = *workers_.front();
  net::co_spawn(first.ioc, admin_accept_loop(*first.admin, app_, first.redis ? &*first.redis : nullptr),
                LogFailure{&app_, "admin accept loop"});
  for (std::size_t i = 1; i < workers_.size(); ++i)
    workers_[i]->thread = std::thread([w = workers_[i].get(), this] { run_loop(w->ioc, app_); });
  run_loop(first.ioc, app_);
  for (std::size_t i = 1; i < workers_.size(); ++i)
    if (workers_[i]->thread.joinable()) workers_[i]->thread.join();
}

void Server::settle(std::vector<ratelimit::Settlement> settles) {
  auto& first = *workers_.front();
  if (!first.admitter || settles.empty()) return;
  net::post(first.ioc, [this, &first, settles = std::move(settles)]() mutable {
    for (auto& s : settles) {
      ++app_.metrics.active_requests;  // until Redis answered, as for any settle
      first.admitter->settle(std::move(s));
    }
  });
}

void Server::stop(std::chrono::milliseconds grace) {
  app_.stopping = true;  // from now on every response says `Connection: close`
  for (auto& w : workers_) {
    net::post(w->ioc, [w = w.get()] {
      beast::error_code ec;
      w->acceptor.close(ec);  // already closed is fine
      if (w->admin) w->admin->close(ec);
    });
  }
  // active_requests counts requests in flight and settles Redis has not answered yet.
  auto drained_by = [this](std::chrono::steady_clock::time_point deadline) {
    while (app_.metrics.active_requests.load() > 0 && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    return app_.metrics.active_requests.load() <= 0;
  };
  if (!drained_by(std::chrono::steady_clock::now() + grace)) {
    // The drain deadline: cut what still runs upstream. Each cut request ends as it would on an
    // upstream failure (error event, billed for what was delivered, recorded, settled), which
    // takes milliseconds; 5 s bounds a settle that cannot reach Redis.
    spdlog::warn("drain deadline: cutting {} request(s) still in flight", app_.metrics.active_requests.load());
    for (auto& w : workers_) net::post(w->ioc, [w = w.get()] { cut_upstreams(w->tc); });
    if (!drained_by(std::chrono::steady_clock::now() + std::chrono::seconds(5)))
      spdlog::error("stopping with {} request(s) unfinished: the journal replays them at the next start",
                    app_.metrics.active_requests.load());
  }
  for (auto& w : workers_) w->ioc.stop();
}

}  // namespace tollgate
