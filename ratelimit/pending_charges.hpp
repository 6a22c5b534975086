#pragma once
// Charges settled in Redis but not yet committed to Postgres, process-wide: what Redis' pending
// must be rebuilt from when Redis lost its state (restart without persistence, FLUSHALL,
// failover to a replica lacking recent writes). Postgres' balance does not include them yet,
// and Redis' pending hash that did is gone.
#include "pricing/money.hpp"

#include <chrono>
#include <cstddef>
#include <deque>
#include <mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace tollgate::ratelimit {

/// Thread-safe (one mutex): the event loops add a request's charge when they settle it, the usage
/// writer's Redis sync (sync_balance) removes the requests Postgres committed.
class PendingCharges {
 public:
  struct Charge {
    std::string account, request_id;
    pricing::Micros charge = 0;  ///< credit units, > 0
  };

  /// The one every Admitter of this process uses by default (sync_balance clears it).
  static PendingCharges& process();

  /// A request settled with `charge` (credit units; ≤ 0 is ignored). Ignored if Postgres already
  /// committed it (its commit may be reported before its settle is queued). Beyond `max_entries`
  /// the charge is not remembered (logged): after a Redis state loss it would not count as
  /// pending until Postgres commits it.
  void add(const std::string& account, const std::string& request_id, pricing::Micros charge);
  /// Postgres committed these requests: their charges are in Postgres' balance now.
  void committed(const std::vector<std::string>& request_ids);
  /// Whether `request_id` is remembered as settled and not committed.
  bool contains(const std::string& request_id) const;
  std::vector<Charge> snapshot() const;
  std::size_t size() const;

  static constexpr std::size_t max_entries = 1'000'000;
  /// How long a commit is remembered for add() (its report races the settle by microseconds).
  static constexpr std::chrono::seconds recent_commits{5};

 private:
  void forget_old_commits(std::chrono::steady_clock::time_point now);

  mutable std::mutex mu_;
  std::unordered_map<std::string, Charge> charges_;  ///< by request id
  std::unordered_set<std::string> recent_;
  std::deque<std::pair<std::chrono::steady_clock::time_point, std::string>> recent_order_;
  bool warned_full_ = false;
};

}  // namespace tollgate::ratelimit
