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

UpstreamPool::UpstreamPool(net::any_io_executor ex, const Config& cfg, net::ssl::context& tls)
    : ex_(ex), cfg_(cfg), tls_(tls), resolver_(ex) {
  const bool default_port = cfg.upstream.port == (cfg.upstream.tls ? "443" : "80");
  fixed_fields_ = "Host: " + cfg.upstream.host + (default_port ? "" : ":" + cfg.upstream.port) + "\r\n";
  if (!cfg.upstream_key.empty()) fixed_fields_ += "Authorization: Bearer " + cfg.upstream_key + "\r\n";
  fixed_fields_ += "Content-Type: application/json\r\nUser-Agent: tollgate/0.1\r\n";
}

namespace {
/// True if the peer has closed (or sent unsolicited bytes on) an idle connection: a
/// non-blocking peek sees EOF or data. Such a connection must not carry a request.
bool closed_by_peer(UpstreamConnection& c) {
  char byte;
  ssize_t n = ::recv(c.lowest().socket().native_handle(), &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  return n >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK);
}
}  // namespace

net::awaitable<std::unique_ptr<UpstreamConnection>> UpstreamPool::acquire() {
  while (!idle_.empty()) {
    auto c = std::move(idle_.back());
    idle_.pop_back();
    if (closed_by_peer(*c)) continue;  // closes it
    co_return c;
  }
  co_return co_await connect();
}

net::awaitable<std::unique_ptr<UpstreamConnection>> UpstreamPool::connect() {
  const auto& u = cfg_.upstream;
  // The resolved addresses are kept for resolve_ttl: a new connection costs no getaddrinfo()
  // (which opens files and sockets of its own, and fails obscurely at the open-file limit).
  auto now = std::chrono::steady_clock::now();
  if (endpoints_.empty() || now >= resolved_until_) {
    endpoints_ = co_await resolver_.async_resolve(u.host, u.port, net::use_awaitable);
    resolved_until_ = now + resolve_ttl;
  }
  beast::tcp_stream tcp(ex_);
  tcp.expires_after(cfg_.upstream_connect_timeout);
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

void UpstreamPool::cut_all() {
  for (auto* c : in_use_) {
    beast::error_code ec;
    c->lowest().socket().close(ec);  // pending operations complete with operation_aborted
  }
}

void UpstreamPool::release(std::unique_ptr<UpstreamConnection> c) {
  if (idle_.size() >= cfg_.upstream_max_idle_connections) return;  // closes it
  c->lowest().expires_never();
  idle_.push_back(std::move(c));
}

}  // namespace tollgate
