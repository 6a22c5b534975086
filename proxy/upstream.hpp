#pragma once
// Phase 5 transport: keep-alive connections to the upstream (HTTPS with certificate and host
// name verification and SNI, or plain HTTP for local upstreams). One pool per event-loop
// thread, so no locking. An idle connection the upstream has closed is detected before reuse
// (non-blocking peek) and discarded; a request is never retried once written.
#include "proxy/config.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/beast/core/flat_buffer.hpp>

#include <chrono>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>

#include <memory>
#include <string>
#include <unordered_set>
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

class UpstreamPool {
 public:
  UpstreamPool(net::any_io_executor ex, const Config& cfg, net::ssl::context& tls);

  /// An idle connection if one is pooled, else a new one (resolve, connect, TLS handshake),
  /// all within the connect timeout. Throws boost::system::system_error on failure.
  net::awaitable<std::unique_ptr<UpstreamConnection>> acquire();
  /// A fresh connection, never from the pool.
  net::awaitable<std::unique_ptr<UpstreamConnection>> connect();

  /// Returns a connection whose last response was read completely and allows keep-alive.
  void release(std::unique_ptr<UpstreamConnection> c);

  std::size_t idle() const { return idle_.size(); }

  /// Registers `c` as carrying a request until the returned guard dies, so that cut_all()
  /// reaches it.
  [[nodiscard]] auto in_use(UpstreamConnection& c) {
    in_use_.insert(&c);
    auto forget = [this](UpstreamConnection* p) { in_use_.erase(p); };
    return std::unique_ptr<UpstreamConnection, decltype(forget)>(&c, forget);
  }
  /// Closes every connection carrying a request (a graceful stop's drain deadline): their
  /// pending reads fail at once, so each request ends as an upstream cut — the stream gets its
  /// error event, and the request is recorded and settled. Call on the pool's event loop.
  void cut_all();

  /// The upstream request's fields that never change, each "name: value\r\n": Host,
  /// Authorization (the operator's key), Content-Type and User-Agent. Built once from the
  /// configuration, whose host and key were checked at start (no CR, LF or NUL).
  const std::string& fixed_fields() const { return fixed_fields_; }

 private:
  net::any_io_executor ex_;
  const Config& cfg_;
  std::string fixed_fields_;
  net::ssl::context& tls_;
  net::ip::tcp::resolver resolver_;
  static constexpr std::chrono::seconds resolve_ttl{30};
  net::ip::tcp::resolver::results_type endpoints_;  ///< the upstream's addresses, kept resolve_ttl
  std::chrono::steady_clock::time_point resolved_until_{};
  std::vector<std::unique_ptr<UpstreamConnection>> idle_;
  std::unordered_set<UpstreamConnection*> in_use_;
};

}  // namespace tollgate
