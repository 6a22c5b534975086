#pragma once
// Phase 5 transport: keep-alive connections to upstreams (HTTPS with certificate and host
// name verification and SNI, or plain HTTP for local upstreams). One pool per event-loop
// thread, so no locking. An idle connection the upstream has closed is detected before reuse
// (non-blocking peek) and discarded; a request is never retried once written.
#include "proxy/config.hpp"
#include "proxy/seams.hpp"
#include "routing/route_table.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/beast/core/flat_buffer.hpp>

#include <chrono>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>

#include <memory>
#include <string>
#include <unordered_map>
#include <variant>
#include <vector>

namespace tollgate {

namespace net = boost::asio;
namespace beast = boost::beast;

/// One connection to the upstream and its read buffer.
struct UpstreamConnection {
  using Plain = beast::tcp_stream;
  using Tls = beast::ssl_stream<beast::tcp_stream>;
  std::variant<Plain, Tls> stream;
  beast::flat_buffer buffer;

  /// Bytes read from the upstream per read(2): a whole small response, or several SSE events
  /// (Beast's default, 512, took two reads for a 600-byte completion). Every open stream holds
  /// this buffer, and another as large in its relay loop: 10,000 streams × 4 KiB = 40 MiB.
  static constexpr std::size_t read_size = 2048;

  explicit UpstreamConnection(Plain s) : stream(std::move(s)) { buffer.reserve(read_size); }
  explicit UpstreamConnection(Tls s) : stream(std::move(s)) { buffer.reserve(read_size); }
  beast::tcp_stream& lowest() {
    return std::visit([](auto& s) -> beast::tcp_stream& { return beast::get_lowest_layer(s); }, stream);
  }
};

/// Creates the TLS context for upstream connections: TLS ≥ 1.2, system trust store, peer
/// verification on.
net::ssl::context make_upstream_tls_context();

/// Keep-alive connections to one upstream origin (scheme, host, port) on one event-loop thread.
class UpstreamPool {
 public:
  /// `max_idle`: connections kept for reuse; more are closed on release.
  UpstreamPool(net::any_io_executor ex, net::ssl::context& tls, routing::UpstreamUrl origin, std::size_t max_idle);

  /// An idle connection if one is pooled, else a new one (resolve, connect, TLS handshake),
  /// the connect within `connect_timeout`. Throws boost::system::system_error on failure.
  net::awaitable<std::unique_ptr<UpstreamConnection>> acquire(std::chrono::milliseconds connect_timeout);
  /// A fresh connection, never from the pool.
  net::awaitable<std::unique_ptr<UpstreamConnection>> connect(std::chrono::milliseconds connect_timeout);

  /// Returns a connection whose last response was read completely and allows keep-alive.
  void release(std::unique_ptr<UpstreamConnection> c);

  std::size_t idle() const { return idle_.size(); }

 private:
  net::any_io_executor ex_;
  net::ssl::context& tls_;
  routing::UpstreamUrl origin_;
  std::size_t max_idle_;
  net::ip::tcp::resolver resolver_;
  static constexpr std::chrono::seconds resolve_ttl{30};
  net::ip::tcp::resolver::results_type endpoints_;  ///< the origin's addresses, kept resolve_ttl
  std::chrono::steady_clock::time_point resolved_until_{};
  std::vector<std::unique_ptr<UpstreamConnection>> idle_;
};

/// The pools of one event-loop thread, one per upstream origin: the concrete UpstreamConnector
/// (proxy/seams.hpp). Upstreams on the same origin share a pool (a route-table reload that keeps
/// an upstream's URL keeps its connections).
class UpstreamPools final : public UpstreamConnector {
 public:
  UpstreamPools(net::any_io_executor ex, net::ssl::context& tls) : ex_(ex), tls_(tls) {}
  net::awaitable<std::unique_ptr<UpstreamConnection>> acquire(const routing::Upstream& u) override;
  void release(const routing::Upstream& u, std::unique_ptr<UpstreamConnection> c) override;

 private:
  UpstreamPool& pool(const routing::Upstream& u);
  net::any_io_executor ex_;
  net::ssl::context& tls_;
  std::unordered_map<std::string, std::unique_ptr<UpstreamPool>> pools_;  ///< by "scheme://host:port"
};

}  // namespace tollgate
