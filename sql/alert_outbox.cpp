#include "sql/alert_outbox.hpp"

#include <string>

namespace tollgate::sql {

namespace {
std::string interval_ms(std::chrono::milliseconds ms) { return std::to_string(ms.count()) + " milliseconds"; }
}  // namespace

std::vector<OutboxAlert> claim_due_alerts(PgConn& db, int limit, std::chrono::milliseconds lease) {
  auto r = db.exec(
      "UPDATE alert_outbox o SET next_attempt_at = now() + $2::interval"
      " FROM (SELECT id FROM alert_outbox"
      "       WHERE delivered_at IS NULL AND abandoned_at IS NULL AND next_attempt_at <= now()"
      "       ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) due"
      " WHERE o.id = due.id"
      " RETURNING o.id, o.event_id, o.type, o.payload::text, floor(extract(epoch FROM o.created_at))::bigint,"
      "           o.attempts",
      {std::to_string(limit), interval_ms(lease)});
  std::vector<OutboxAlert> out;
  out.reserve(static_cast<std::size_t>(r.rows()));
  for (int i = 0; i < r.rows(); ++i)
    out.push_back({r.i64(i, 0), r.str(i, 1), r.str(i, 2), r.str(i, 3), r.i64(i, 4), static_cast<int>(r.i64(i, 5))});
  return out;
}

void release_alerts(PgConn& db, const std::vector<std::int64_t>& ids) {
  if (ids.empty()) return;
  std::string array = "{";
  for (std::size_t i = 0; i < ids.size(); ++i) array += (i ? "," : "") + std::to_string(ids[i]);
  array += "}";
  db.exec("UPDATE alert_outbox SET next_attempt_at = now() WHERE id = ANY($1::bigint[]) AND delivered_at IS NULL",
          {array});
}

void mark_alert_delivered(PgConn& db, std::int64_t id) {
  db.exec("UPDATE alert_outbox SET delivered_at = now(), last_error = NULL WHERE id = $1", {std::to_string(id)});
}

bool mark_alert_failed(PgConn& db, std::int64_t id, const std::string& error, std::chrono::milliseconds retry_in,
                       std::chrono::milliseconds max_age) {
  auto r = db.exec(
      "UPDATE alert_outbox SET attempts = attempts + 1, last_error = left($2, 500),"
      " next_attempt_at = now() + $3::interval,"
      " abandoned_at = CASE WHEN now() + $3::interval > created_at + $4::interval THEN now() END"
      " WHERE id = $1 RETURNING abandoned_at IS NOT NULL",
      {std::to_string(id), error, interval_ms(retry_in), interval_ms(max_age)});
  return r.rows() > 0 && r.boolean(0, 0);
}

bool insert_alert(PgConn& db, const std::string& event_id, const std::string& type, const std::string& account,
                  const std::string& payload_json) {
  auto r = db.exec(
      "INSERT INTO alert_outbox (event_id, type, account, payload) VALUES ($1, $2, $3::uuid, $4::jsonb)"
      " ON CONFLICT (event_id) DO NOTHING RETURNING id",
      {event_id, type, account.empty() ? std::nullopt : std::optional<std::string_view>(account), payload_json});
  return r.rows() > 0;
}

void set_low_balance_alert(PgConn& db, const std::string& account, const std::optional<std::string>& usd) {
  db.exec("INSERT INTO balances (user_id, low_balance_alert_usd) VALUES ($1::uuid, $2::numeric)"
          " ON CONFLICT (user_id) DO UPDATE SET low_balance_alert_usd = EXCLUDED.low_balance_alert_usd",
          {account, usd ? std::optional<std::string_view>(*usd) : std::nullopt});
}

}  // namespace tollgate::sql
