#include "proxy/upstream.hpp"

#include <boost/asio/ssl/host_name_verification.hpp>
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <sys/socket.h>

#include <cerrno>
#include <tuple>

namespace tollgate {

net::ssl::context make_upstream_tls_context() {
  net::ssl::context ctx(net::ssl::context::tls_client);
  ctx.set_options(net::ssl::context::default_workarounds | net::ssl::context::no_sslv2 |
                  net::ssl::context::no_sslv3 | net::ssl::context::no_tlsv1 |
                  net::ssl::context::no_tlsv1_1);
  ctx.set_default_verify_paths();
  ctx.set_verify_mode(net::ssl::verify_peer);
  return ctx;
}

UpstreamPool::UpstreamPool(net::any_io_executor ex, net::ssl::context& tls, routing::UpstreamUrl origin,
                           std::size_t max_idle)
    : ex_(ex), tls_(tls), origin_(std::move(origin)), max_idle_(max_idle), resolver_(ex) {}

namespace {
/// True if the peer has closed (or sent unsolicited bytes on) an idle connection: a
/// non-blocking peek sees EOF or data. Such a connection must not carry a request.
bool closed_by_peer(UpstreamConnection& c) {
  char byte;
  ssize_t n = ::recv(c.lowest().socket().native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  return n >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK);
}
}  // namespace

net::awaitable<std::unique_ptr<UpstreamConnection>> UpstreamPool::acquire(std::chrono::milliseconds connect_timeout) {
  while (!idle_.empty()) {
    auto c = std::move(idle_.back());
    idle_.pop_back();
    if (closed_by_peer(*c)) continue;  // closes it
    co_return c;
  }
  co_return co_await connect(connect_timeout);
}

net::awaitable<std::unique_ptr<UpstreamConnection>> UpstreamPool::connect(std::chrono::milliseconds connect_timeout) {
  const auto& u = origin_;
  // The resolved addresses are kept for resolve_ttl: a new connection costs no getaddrinfo()
  // (which opens files and sockets of its own, and fails obscurely at the open-file limit).
  auto now = std::chrono::steady_clock::now();
  if (endpoints_.empty() || now >= resolved_until_) {
    endpoints_ = co_await resolver_.async_resolve(u.host, u.port, net::use_awaitable);
    resolved_until_ = now + resolve_ttl;
  }
  beast::tcp_stream tcp(ex_);
  tcp.expires_after(connect_timeout);
  // Each address in turn, opening the socket here: an open that fails (EMFILE at the open-file
  // limit) is reported as such, not as the "operation canceled" of a range connect.
  beast::error_code ec = net::error::host_not_found;
  for (const auto& entry : endpoints_) {
    beast::error_code ignored;
    tcp.socket().close(ignored);
    tcp.socket().open(entry.endpoint().protocol(), ec);
    if (ec) break;
    std::tie(ec) = co_await tcp.async_connect(entry.endpoint(), net::as_tuple(net::use_awaitable));
    if (!ec || ec == beast::error::timeout) break;
  }
  if (ec) {
    endpoints_ = {};  // resolve again next time
    throw boost::system::system_error(ec);
  }
  tcp.socket().set_option(net::ip::tcp::no_delay(true));
  if (!u.tls) co_return std::make_unique<UpstreamConnection>(std::move(tcp));

  UpstreamConnection::Tls tls(std::move(tcp), tls_);
  // SNI, and verify that the certificate names the host.
  if (!SSL_set_tlsext_host_name(tls.native_handle(), u.host.c_str()))
    throw boost::system::system_error(
        beast::error_code(static_cast<int>(::ERR_get_error()), net::error::get_ssl_category()));
  tls.set_verify_callback(net::ssl::host_name_verification(u.host));
  co_await tls.async_handshake(net::ssl::stream_base::client, net::use_awaitable);
  co_return std::make_unique<UpstreamConnection>(std::move(tls));
}

void UpstreamPool::release(std::unique_ptr<UpstreamConnection> c) {
  if (idle_.size() >= max_idle_) return;  // closes it
  c->lowest().expires_never();
  idle_.push_back(std::move(c));
}

UpstreamPool& UpstreamPools::pool(const routing::Upstream& u) {
  auto it = pools_.find(u.origin());
  if (it == pools_.end())
    it = pools_.emplace(u.origin(), std::make_unique<UpstreamPool>(ex_, tls_, u.url, u.max_connections)).first;
  return *it->second;
}

net::awaitable<std::unique_ptr<UpstreamConnection>> UpstreamPools::acquire(const routing::Upstream& u) {
  co_return co_await pool(u).acquire(u.connect_timeout);
}

void UpstreamPools::release(const routing::Upstream& u, std::unique_ptr<UpstreamConnection> c) {
  pool(u).release(std::move(c));
}

}  // namespace tollgate
