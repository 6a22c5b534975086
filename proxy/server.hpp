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
  /// Stops accepting, lets in-flight requests finish for up to `grace`, then stops the loops.
  /// Safe to call from any thread, e.g. a signal handler's.
  void stop(std::chrono::milliseconds grace = std::chrono::seconds(10));

 private:
  struct Worker;
  App& app_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::uint16_t port_ = 0, admin_port_ = 0;
};

}  // namespace tollgate
