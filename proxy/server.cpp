#include "proxy/server.hpp"

#include "proxy/admin.hpp"
#include "proxy/connection.hpp"
#include "proxy/session.hpp"
#include "proxy/upstream.hpp"
#include "sql/store.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <spdlog/spdlog.h>

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>

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

/// The answer to a connection tollgate cannot take (over max_connections, or out of file
/// descriptors), written at once without reading the request.
constexpr std::string_view busy_response =
    "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
    "Connection: close\r\nContent-Length: 124\r\n\r\n"
    R"({"error":{"message":"tollgate is at its connection limit; retry shortly.","type":"service_unavailable","code":"overloaded"}})";
static_assert(busy_response.size() - busy_response.find("\r\n\r\n") - 4 == 124);

/// Refuses a connection over the instance's cap with a 503 written at once (no coroutine, no
/// read: a full instance spends nothing more on it), then closes it.
void refuse_at_accept(tcp::socket& sock) {
  beast::error_code ec;
  sock.non_blocking(true, ec);
  if (!ec) sock.write_some(net::buffer(busy_response), ec);  // best effort: a full socket buffer drops it
  sock.shutdown(tcp::socket::shutdown_both, ec);
  sock.close(ec);
}

bool out_of_descriptors(const beast::error_code& ec) {
  return ec == net::error::no_descriptors || ec == boost::system::errc::too_many_files_open_in_system ||
         ec == net::error::no_buffer_space || ec == net::error::no_memory;
}

/// At the open-file limit, accept(2) fails and the connections wait in the backlog, unanswered.
/// This spends the descriptor kept in reserve (`spare`, libev's and nginx's trick) to accept
/// the waiting ones one at a time and answer each with the 503, then takes the reserve back.
/// Returns how many it refused (at most 1,024 a call).
std::size_t refuse_backlog(tcp::acceptor& acceptor, int& spare) {
  if (spare >= 0) ::close(std::exchange(spare, -1));
  std::size_t n = 0;
  for (; n < 1024; ++n) {
    int fd = ::accept4(acceptor.native_handle(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) break;  // EAGAIN: the backlog is empty; EMFILE: another thread took the reserve
    [[maybe_unused]] auto sent = ::send(fd, busy_response.data(), busy_response.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    ::shutdown(fd, SHUT_RDWR);
    ::close(fd);
  }
  spare = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  return n;
}

/// Accepts connections until the acceptor closes. Out of file descriptors (EMFILE, ENFILE), it
/// refuses the backlog with 503s (refuse_backlog), backs off from 10 ms to 1 s before accepting
/// again, and logs at most one line per 10 s: no busy loop, no log flood, and the connections
/// already open keep being served.
net::awaitable<void> accept_loop(tcp::acceptor& acceptor, App& app, ThreadContext& tc, int& spare) {
  beast::error_code nb_ec;
  acceptor.native_non_blocking(true, nb_ec);  // refuse_backlog's accept4() must never block
  std::chrono::milliseconds backoff{0};
  std::chrono::steady_clock::time_point last_log{};
  std::uint64_t refused_since_log = 0;
  net::steady_timer pause(acceptor.get_executor());
  for (;;) {
    auto [ec, sock] = co_await acceptor.async_accept(net::as_tuple(net::use_awaitable));
    if (ec == net::error::operation_aborted || !acceptor.is_open()) co_return;  // stopping
    if (ec && out_of_descriptors(ec)) {
      ++app.metrics.accept_out_of_descriptors;
      auto refused = refuse_backlog(acceptor, spare);
      app.metrics.connections_refused_total += refused;
      refused_since_log += refused;
      if (auto now = std::chrono::steady_clock::now(); now - last_log >= std::chrono::seconds(10)) {
        spdlog::error("accept: {}: {} connection(s) refused with 503 since the last report; backing off {} ms "
                      "(raise LimitNOFILE / ulimit -n)", ec.message(), refused_since_log, backoff.count());
        last_log = now;
        refused_since_log = 0;
      }
      backoff = std::clamp(backoff * 2, std::chrono::milliseconds(10), std::chrono::milliseconds(1000));
      pause.expires_after(backoff);
      co_await pause.async_wait(net::as_tuple(net::use_awaitable));
      continue;
    }
    if (ec) {
      spdlog::warn("accept: {}", ec.message());
      continue;
    }
    backoff = std::chrono::milliseconds(0);
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
/// its own upstream pool, so the request path takes no locks of its own.
struct Server::Worker {
  net::io_context ioc{1};
  tcp::acceptor acceptor{ioc};
  UpstreamPool pool;
  std::optional<ratelimit::RedisConnection> redis;
  std::optional<ratelimit::Admitter> admitter;
  ThreadContext tc;
  std::thread thread;
  int spare_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);  ///< kept for refuse_backlog()

  std::optional<tcp::acceptor> admin;  ///< the first worker's: /metrics, /healthz, /readyz

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
    if (w->spare_fd >= 0) ::close(w->spare_fd);
  }
}

std::uint16_t Server::port() const { return port_; }
std::uint16_t Server::admin_port() const { return admin_port_; }

void Server::run() {
  for (auto& w : workers_)
    net::co_spawn(w->ioc, accept_loop(w->acceptor, app_, w->tc, w->spare_fd), LogFailure{&app_, "accept loop"});
  auto& first = *workers_.front();
  net::co_spawn(first.ioc, admin_accept_loop(*first.admin, app_, first.redis ? &*first.redis : nullptr),
                LogFailure{&app_, "admin accept loop"});
  for (std::size_t i = 1; i < workers_.size(); ++i)
    workers_[i]->thread = std::thread([w = workers_[i].get(), this] { run_loop(w->ioc, app_); });
  run_loop(first.ioc, app_);
  for (std::size_t i = 1; i < workers_.size(); ++i)
    if (workers_[i]->thread.joinable()) workers_[i]->thread.join();
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
    for (auto& w : workers_) net::post(w->ioc, [w = w.get()] { w->pool.cut_all(); });
    if (!drained_by(std::chrono::steady_clock::now() + std::chrono::seconds(5)))
      spdlog::error("stopping with {} request(s) unfinished: the journal replays them at the next start",
                    app_.metrics.active_requests.load());
  }
  for (auto& w : workers_) w->ioc.stop();
}

}  // namespace tollgate
