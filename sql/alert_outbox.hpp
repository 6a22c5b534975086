#pragma once
// The operator alerts' outbox (migration 0014, table alert_outbox): rows written in Postgres —
// balance.low by a trigger on balances, spend_limit.reached by the proxy's alert task — and
// delivered by that task (proxy/alerts.hpp). Blocking libpq calls: use off the event loops.
#include "sql/pg.hpp"

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace tollgate::sql {

/// One alert to deliver.
struct OutboxAlert {
  std::int64_t id = 0;        ///< alert_outbox.id
  std::string event_id;       ///< unique; receivers deduplicate on it
  std::string type;           ///< "balance.low" | "spend_limit.reached"
  std::string payload_json;   ///< the event's data, a JSON object
  std::int64_t created_s = 0; ///< created_at, Unix seconds
  int attempts = 0;           ///< failed deliveries before this one
};

/// Claims up to `limit` due, undelivered, not abandoned rows: selected `FOR UPDATE SKIP LOCKED`
/// (several instances never claim one row at once) and leased, i.e. their next_attempt_at moved
/// `lease` ahead, so nobody else claims them while this caller delivers them. A caller that dies
/// before marking a row leaves it to be claimed again when the lease ends (at least once).
/// Throws PgError.
std::vector<OutboxAlert> claim_due_alerts(PgConn& db, int limit, std::chrono::milliseconds lease);

/// Ends the lease of claimed rows not delivered (a stop): they are due again now. Throws PgError.
void release_alerts(PgConn& db, const std::vector<std::int64_t>& ids);

/// Marks a row delivered (the receiver answered 2xx). Throws PgError.
void mark_alert_delivered(PgConn& db, std::int64_t id);

/// Records a failed delivery: attempts + 1, last_error, next attempt `retry_in` from now; when
/// that would fall later than `max_age` after the row was created, the row is abandoned
/// instead. Returns true if abandoned. `error` must hold no secret. Throws PgError.
bool mark_alert_failed(PgConn& db, std::int64_t id, const std::string& error, std::chrono::milliseconds retry_in,
                       std::chrono::milliseconds max_age);

/// Inserts an alert unless one with `event_id` exists (ON CONFLICT DO NOTHING); `account` may be
/// empty (NULL). Returns true if inserted. Throws PgError.
bool insert_alert(PgConn& db, const std::string& event_id, const std::string& type, const std::string& account,
                  const std::string& payload_json);

/// Sets an account's balance.low threshold (balances.low_balance_alert_usd), a decimal USD
/// string >= 0, or removes it (nullopt). Throws PgError (e.g. 22P02 for a malformed amount).
void set_low_balance_alert(PgConn& db, const std::string& account, const std::optional<std::string>& usd);

}  // namespace tollgate::sql
