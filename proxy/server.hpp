#pragma once
// The HTTP/1.1 server: `threads` event loops, each with its own SO_REUSEPORT acceptor and
// upstream pool, running one coroutine per client connection (proxy/session.cpp).
#include "proxy/app.hpp"

#include <cstdint>
#include <memory>
#include <vector>

namespace tollgate {

class Server {
 public:
  /// Binds the listen address (throws boost::system::system_error if it cannot).
  explicit Server(App& app);
  ~Server();
  /// The bound port (useful with port 0).
  std::uint16_t port() const;
  /// The admin listener's bound port (server.admin_listen).
  std::uint16_t admin_port() const;
  /// Serves until stop(); blocks the calling thread (which becomes one of the event loops).
  void run();
  /// Releases holds of requests an earlier process left in flight (recovery.hpp), through the
  /// first event loop's admission client once run() starts. A no-op when admission is off.
  void settle(std::vector<ratelimit::Settlement> settles);
  /// Graceful stop: stops accepting (responses from now on say `Connection: close`), lets
  /// requests in flight finish for up to `grace` (server.drain_timeout_ms), then cuts the
  /// upstream connections still in use — each cut stream ends with an error event and is
  /// recorded and settled — waits up to 5 s more for that, and stops the event loops. Blocks;
  /// safe to call from any thread (the signal thread calls it).
  void stop(std::chrono::milliseconds grace);

 private:
  struct Worker;
  App& app_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::uint16_t port_ = 0, admin_port_ = 0;
};

}  // namespace tollgate
