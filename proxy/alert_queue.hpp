#pragma once
// spend_limit.reached events on their way from the request path to the alert outbox: admit
// pushes one when a spend limit refuses a request (no I/O, a mutex held for a set lookup); the
// alert task (proxy/alerts.hpp) takes them and inserts them into alert_outbox off the event
// loops. Bounded, and deduplicated per limit and period, so a flood of refusals costs nothing.
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>
#include <unordered_set>
#include <vector>

namespace tollgate {

/// A key's or an account's spend limit refused a request.
struct SpendLimitEvent {
  std::string scope;                ///< "key" | "account"
  std::string owner;                ///< api_keys.id or users.id the limit is on
  std::string account;              ///< users.id of the request's account
  std::int64_t limit_micros = 0;    ///< the limit, credit units (1e-6 USD) per period
  std::int64_t period_start_ms = 0; ///< Unix ms; 0 for a limit that never resets
  std::int64_t period_end_ms = 0;   ///< Unix ms; INT64_MAX for a limit that never resets

  /// "spend_limit:<scope>:<owner>:<period start, ISO 8601 UTC>": the same on every instance, so
  /// the outbox's unique event_id keeps one event per limit and period.
  std::string event_id() const;
  /// The event's data: {"scope","key_id"|absent,"account","limit_usd","period_start","resets_at"}
  /// (resets_at null when the limit never resets); amounts as decimal USD strings.
  std::string payload_json() const;
};

/// Thread-safe, bounded, deduplicating queue of SpendLimitEvent.
class AlertQueue {
 public:
  /// `capacity`: events waiting at most (more are dropped and counted); the dedup memory is
  /// forgotten once it holds 16 × capacity ids (a forgotten duplicate is then stopped by the
  /// outbox's unique event_id).
  explicit AlertQueue(std::size_t capacity = 1024) : capacity_(capacity) {}

  /// Queues `e` unless its event id was queued already or the queue is full. Returns true if
  /// queued. Never blocks on I/O: safe on the request path.
  bool push(SpendLimitEvent e);
  /// Everything queued, oldest first; the queue is then empty.
  std::vector<SpendLimitEvent> take();
  /// Events dropped because the queue was full.
  std::uint64_t dropped() const;

 private:
  const std::size_t capacity_;
  mutable std::mutex mu_;
  std::vector<SpendLimitEvent> events_;
  std::unordered_set<std::string> seen_;
  std::uint64_t dropped_ = 0;
};

}  // namespace tollgate
