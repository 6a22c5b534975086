#include "proxy/alert_queue.hpp"

#include "pricing/money.hpp"
#include "ratelimit/spend_period.hpp"

#include <boost/json.hpp>

#include <limits>

namespace tollgate {

std::string SpendLimitEvent::event_id() const {
  return "spend_limit:" + scope + ":" + owner + ":" + ratelimit::iso8601_utc(period_start_ms);
}

std::string SpendLimitEvent::payload_json() const {
  boost::json::object o;
  o["scope"] = scope;
  if (scope == "key") o["key_id"] = owner;
  o["account"] = account;
  o["limit_usd"] = pricing::format_micros(limit_micros);
  o["period_start"] = ratelimit::iso8601_utc(period_start_ms);
  if (period_end_ms == std::numeric_limits<std::int64_t>::max())
    o["resets_at"] = nullptr;
  else
    o["resets_at"] = ratelimit::iso8601_utc(period_end_ms);
  return boost::json::serialize(o);
}

bool AlertQueue::push(SpendLimitEvent e) {
  std::string id = e.event_id();
  std::lock_guard lock(mu_);
  if (seen_.contains(id)) return false;
  if (events_.size() >= capacity_) {
    ++dropped_;
    return false;
  }
  if (seen_.size() >= 16 * capacity_) seen_.clear();
  seen_.insert(std::move(id));
  events_.push_back(std::move(e));
  return true;
}

std::vector<SpendLimitEvent> AlertQueue::take() {
  std::lock_guard lock(mu_);
  std::vector<SpendLimitEvent> out;
  out.swap(events_);
  return out;
}

std::uint64_t AlertQueue::dropped() const {
  std::lock_guard lock(mu_);
  return dropped_;
}

}  // namespace tollgate
