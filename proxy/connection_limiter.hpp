#pragma once
// The connection caps of one instance (config [server] max_connections,
// max_connections_per_address), checked at accept by every event loop.
#include <boost/asio/ip/address.hpp>

#include <cstddef>
#include <mutex>
#include <unordered_map>
#include <utility>

namespace tollgate {

/// The connection caps of one instance, shared by its event loops: at most `total` open client
/// connections, and at most `per_address` from one client IP (0 = no per-address cap).
class ConnectionLimiter {
 public:
  ConnectionLimiter(std::size_t total, std::size_t per_address) : total_(total), per_address_(per_address) {}

  /// A held connection slot; released when destroyed. Movable.
  class Slot {
   public:
    Slot() = default;
    Slot(Slot&& o) noexcept : owner_(std::exchange(o.owner_, nullptr)), address_(o.address_) {}
    Slot& operator=(Slot&&) = delete;
    ~Slot();
    explicit operator bool() const { return owner_ != nullptr; }

   private:
    friend class ConnectionLimiter;
    ConnectionLimiter* owner_ = nullptr;
    boost::asio::ip::address address_;
  };
  enum class Refusal { none, total, per_address };

  /// Takes a slot for a connection from `address`, or says which cap refuses it.
  Slot acquire(const boost::asio::ip::address& address, Refusal& refusal);
  /// Open connections now.
  std::size_t open() const;

 private:
  void release(const boost::asio::ip::address& address) noexcept;

  const std::size_t total_, per_address_;
  mutable std::mutex mutex_;
  std::size_t open_ = 0;
  std::unordered_map<boost::asio::ip::address, std::size_t> by_address_;
};

}  // namespace tollgate
