#include "sql/account_queries.hpp"

namespace tollgate::sql {

namespace {
std::optional<std::string> opt_str(const PgResult& r, int row, int col) {
  return r.is_null(row, col) ? std::nullopt : std::optional<std::string>(r.str(row, col));
}
}  // namespace

std::optional<KeyUsage> key_usage(PgConn& db, const std::string& key_id, const std::string& user_id,
                                  const std::optional<std::string>& at) {
  // One row per key whatever its usage (LEFT JOIN); the sums in NUMERIC, then exact credit
  // units (numeric(18,6) × 10^6 is an integer). The FILTERs share one scan of the key's rows;
  // rows created after `at` are left out (only a test asks about the past).
  auto r = db.exec(
      "WITH k AS ("
      "  SELECT id, coalesce(nullif(name, ''), key_prefix) AS label, spend_limit_usd, limit_reset,"
      "         to_char(expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS expires_at,"
      "         coalesce($3::timestamptz, now()) AS at"
      "  FROM api_keys WHERE id = $1::uuid AND user_id = $2::uuid)"
      " SELECT k.label, (k.spend_limit_usd * 1000000)::bigint, k.limit_reset, k.expires_at,"
      "  (coalesce(sum(u.credits_deducted), 0) * 1000000)::bigint,"
      "  (coalesce(sum(u.credits_deducted) FILTER (WHERE u.created_at >= tollgate_period_start('daily', k.at)), 0)"
      "    * 1000000)::bigint,"
      "  (coalesce(sum(u.credits_deducted) FILTER (WHERE u.created_at >= tollgate_period_start('weekly', k.at)), 0)"
      "    * 1000000)::bigint,"
      "  (coalesce(sum(u.credits_deducted) FILTER (WHERE u.created_at >= tollgate_period_start('monthly', k.at)), 0)"
      "    * 1000000)::bigint,"
      "  (coalesce(sum(u.credits_deducted) FILTER (WHERE u.created_at >= tollgate_period_start(k.limit_reset, k.at)),"
      "    0) * 1000000)::bigint"
      " FROM k LEFT JOIN usage_logs u ON u.api_key_id = k.id AND u.created_at <= k.at"
      " GROUP BY k.label, k.spend_limit_usd, k.limit_reset, k.expires_at, k.at",
      {key_id, user_id, at ? std::optional<std::string_view>(*at) : std::nullopt});
  if (r.rows() == 0) return std::nullopt;
  KeyUsage k;
  k.label = r.str(0, 0);
  if (!r.is_null(0, 1)) k.limit = r.i64(0, 1);
  k.limit_reset = r.str(0, 2);
  k.expires_at = opt_str(r, 0, 3);
  k.usage = r.i64(0, 4);
  k.usage_daily = r.i64(0, 5);
  k.usage_weekly = r.i64(0, 6);
  k.usage_monthly = r.i64(0, 7);
  k.usage_in_period = r.i64(0, 8);
  return k;
}

AccountCredits account_credits(PgConn& db, const std::string& user_id) {
  auto r = db.exec(
      "SELECT (c.total * 1000000)::bigint, ((c.total - coalesce(b.credits, 0)) * 1000000)::bigint"
      " FROM (SELECT coalesce(sum(amount), 0) AS total FROM credit_transactions"
      "       WHERE user_id = $1::uuid AND transaction_type <> 'usage') c"
      " LEFT JOIN balances b ON b.user_id = $1::uuid",
      {user_id});
  return {r.i64(0, 0), r.i64(0, 1)};
}

std::optional<Generation> find_generation(PgConn& db, const std::string& user_id, const std::string& id) {
  // Both lookups are indexed: request_id is unique, the generation id has
  // usage_logs_generation_id_idx (migration 0013); the account is checked on the rows found.
  auto r = db.exec(
      "SELECT request_id, coalesce(response_metadata->>'generation_id', request_id), model, upstream,"
      "  prompt_tokens, completion_tokens, cached_tokens, reasoning_tokens,"
      "  (credits_deducted * 1000000)::bigint,"
      "  coalesce(request_metadata->'stream' = 'true'::jsonb, false), status,"
      "  response_metadata->>'finish_reason',"
      "  CASE WHEN jsonb_typeof(response_metadata->'duration_us') = 'number'"
      "       THEN floor((response_metadata->>'duration_us')::numeric / 1000)::bigint END,"
      "  to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
      " FROM usage_logs"
      " WHERE (request_id = $2 OR response_metadata->>'generation_id' = $2) AND user_id = $1::uuid"
      " ORDER BY request_id = $2 DESC, created_at DESC LIMIT 1",
      {user_id, id});
  if (r.rows() == 0) return std::nullopt;
  Generation g;
  g.request_id = r.str(0, 0);
  g.id = r.str(0, 1);
  g.model = r.str(0, 2);
  g.upstream = opt_str(r, 0, 3);
  g.tokens_prompt = r.i64(0, 4);
  g.tokens_completion = r.i64(0, 5);
  g.native_tokens_cached = r.i64(0, 6);
  g.native_tokens_reasoning = r.i64(0, 7);
  g.total_cost = r.i64(0, 8);
  g.streamed = r.boolean(0, 9);
  g.status = r.str(0, 10);
  g.cancelled = g.status == "client_aborted";
  g.finish_reason = opt_str(r, 0, 11);
  if (!r.is_null(0, 12)) g.duration_ms = r.i64(0, 12);
  g.created_at = r.str(0, 13);
  return g;
}

}  // namespace tollgate::sql
