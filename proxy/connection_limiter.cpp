#include "proxy/connection_limiter.hpp"

namespace tollgate {
namespace net = boost::asio;

ConnectionLimiter::Slot::~Slot() {
  if (owner_) owner_->release(address_);
}

ConnectionLimiter::Slot ConnectionLimiter::acquire(const net::ip::address& address, Refusal& refusal) {
  std::lock_guard lock(mutex_);
  refusal = Refusal::none;
  if (open_ >= total_) {
    refusal = Refusal::total;
    return {};
  }
  if (per_address_ > 0) {
    auto& n = by_address_[address];
    if (n >= per_address_) {
      refusal = Refusal::per_address;
      return {};
    }
    ++n;
  }
  ++open_;
  Slot s;
  s.owner_ = this;
  s.address_ = address;
  return s;
}

void ConnectionLimiter::release(const net::ip::address& address) noexcept {
  std::lock_guard lock(mutex_);
  --open_;
  if (per_address_ == 0) return;
  auto it = by_address_.find(address);
  if (it != by_address_.end() && --it->second == 0) by_address_.erase(it);
}

std::size_t ConnectionLimiter::open() const {
  std::lock_guard lock(mutex_);
  return open_;
}

}  // namespace tollgate
