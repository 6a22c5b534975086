#pragma once
// What an accept loop does when it cannot take a connection: the 503 written at accept, and the
// backoff when accept(2) fails for want of file descriptors (EMFILE, ENFILE).
#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/system/error_code.hpp>

#include <chrono>
#include <cstdint>
#include <string_view>

namespace tollgate {

/// Refuses an accepted connection with a canned 503 `overloaded` (Retry-After: 1) written at
/// once, without reading the request, then closes it. Best effort: a full socket buffer drops it.
void refuse_at_accept(boost::asio::ip::tcp::socket& sock);

/// True for the errors of a process or system out of descriptors or socket buffers (EMFILE,
/// ENFILE, ENOBUFS, ENOMEM): accept(2) and socket(2) fail with these at the open-file limit.
bool out_of_descriptors(const boost::system::error_code& ec);

/// One per accept loop. At the open-file limit, accept(2) fails and the connections wait in the
/// backlog unanswered; a naive loop retries at once (a busy loop, a log line per try). handle()
/// instead spends a descriptor kept in reserve (libev's and nginx's trick) to accept the waiting
/// connections one at a time and answer each with the 503, takes the reserve back, logs at most
/// one line per 10 s, and waits 10 ms, doubling to 100 ms while the failures go on (each wait is
/// a connection held that long before its answer; each wake-up costs a few system calls).
class AcceptBackoff {
 public:
  /// `what` names the listener in the log ("accept", "admin accept").
  AcceptBackoff(boost::asio::any_io_executor ex, std::string_view what);
  ~AcceptBackoff();
  AcceptBackoff(const AcceptBackoff&) = delete;
  AcceptBackoff& operator=(const AcceptBackoff&) = delete;

  /// After a failed accept: if `ec` is out_of_descriptors(), refuses the backlog of `acceptor`,
  /// waits the backoff and returns the number refused (≥ 0); otherwise returns -1 at once.
  boost::asio::awaitable<std::int64_t> handle(const boost::system::error_code& ec,
                                              boost::asio::ip::tcp::acceptor& acceptor);
  /// After a successful accept: the next failure starts again at 10 ms.
  void reset() { backoff_ = std::chrono::milliseconds(0); }

 private:
  boost::asio::steady_timer pause_;
  std::string_view what_;
  int spare_ = -1;  ///< an open /dev/null, closed to make room for one accept
  std::chrono::milliseconds backoff_{0};
  std::chrono::steady_clock::time_point last_log_{};
  std::uint64_t refused_since_log_ = 0;
};

}  // namespace tollgate
