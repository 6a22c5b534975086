#include "proxy/accept_backoff.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <spdlog/spdlog.h>

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <utility>

namespace tollgate {
namespace net = boost::asio;

namespace {
constexpr std::string_view busy_response =
    "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
    "Connection: close\r\nContent-Length: 124\r\n\r\n"
    R"({"error":{"message":"tollgate is at its connection limit; retry shortly.","type":"service_unavailable","code":"overloaded"}})";
static_assert(busy_response.size() - busy_response.find("\r\n\r\n") - 4 == 124);
}  // namespace

void refuse_at_accept(net::ip::tcp::socket& sock) {
  boost::system::error_code ec;
  sock.non_blocking(true, ec);
  if (!ec) sock.write_some(net::buffer(busy_response), ec);
  sock.shutdown(net::ip::tcp::socket::shutdown_both, ec);
  sock.close(ec);
}

bool out_of_descriptors(const boost::system::error_code& ec) {
  return ec == net::error::no_descriptors || ec == boost::system::errc::too_many_files_open_in_system ||
         ec == net::error::no_buffer_space || ec == net::error::no_memory;
}

AcceptBackoff::AcceptBackoff(net::any_io_executor ex, std::string_view what)
    : pause_(ex), what_(what), spare_(::open("/dev/null", O_RDONLY | O_CLOEXEC)) {}

AcceptBackoff::~AcceptBackoff() {
  if (spare_ >= 0) ::close(spare_);
}

net::awaitable<std::int64_t> AcceptBackoff::handle(const boost::system::error_code& ec,
                                                   net::ip::tcp::acceptor& acceptor) {
  if (!out_of_descriptors(ec)) co_return -1;
  boost::system::error_code nb;
  acceptor.native_non_blocking(true, nb);  // accept4() below must never block
  if (spare_ >= 0) ::close(std::exchange(spare_, -1));
  std::int64_t refused = 0;
  for (; !nb && refused < 1024; ++refused) {
    int fd = ::accept4(acceptor.native_handle(), nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) break;  // EAGAIN: the backlog is empty; EMFILE: another thread took the room
    [[maybe_unused]] auto sent = ::send(fd, busy_response.data(), busy_response.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    ::shutdown(fd, SHUT_RDWR);
    ::close(fd);
  }
  spare_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  refused_since_log_ += static_cast<std::uint64_t>(refused);
  backoff_ = std::clamp(backoff_ * 2, std::chrono::milliseconds(10), std::chrono::milliseconds(100));
  if (auto now = std::chrono::steady_clock::now(); now - last_log_ >= std::chrono::seconds(10)) {
    spdlog::error("{}: {}: {} connection(s) answered 503 since the last report; backing off up to {} ms "
                  "(raise LimitNOFILE / ulimit -n)", what_, ec.message(), refused_since_log_, backoff_.count());
    last_log_ = now;
    refused_since_log_ = 0;
  }
  pause_.expires_after(backoff_);
  co_await pause_.async_wait(net::as_tuple(net::use_awaitable));
  co_return refused;
}

}  // namespace tollgate
