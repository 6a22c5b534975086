#pragma once
// The queries behind OpenRouter's self-service endpoints (proxy/self_service.cpp): what one API
// key was charged, the account's credits and charges, one generation (usage row) of an account.
// Every amount is what the customer was charged (usage_logs.credits_deducted, the ledger),
// never the operator's cost (cost_usd, upstream_cost_usd): those columns are not even read.
// Sums are done in Postgres NUMERIC and returned in credit units (1 credit unit = 1e-6 USD,
// exact: the columns are numeric(18,6)). Blocking; call off the event loop. Errors: PgError.
#include "pricing/money.hpp"
#include "sql/pg.hpp"

#include <cstdint>
#include <optional>
#include <string>

namespace tollgate::sql {

/// One API key's budget and charges (GET /api/v1/key). Periods are calendar UTC
/// (tollgate_period_start, migration 0012): the day from 00:00, the ISO week from Monday 00:00,
/// the month from the 1st 00:00. A usage row counts in the period of its created_at (the
/// request's start).
struct KeyUsage {
  std::string label;                       ///< api_keys.name, or the display prefix when unnamed
  std::optional<pricing::Micros> limit;    ///< api_keys.spend_limit_usd (credit units); nullopt: none
  std::string limit_reset = "never";       ///< daily | weekly | monthly | never
  std::optional<std::string> expires_at;   ///< ISO 8601 UTC ("2026-12-01T00:00:00.000000Z"); nullopt: never
  pricing::Micros usage = 0;               ///< all-time charges of the key (credit units)
  pricing::Micros usage_daily = 0;         ///< charged since 00:00 UTC today
  pricing::Micros usage_weekly = 0;        ///< since Monday 00:00 UTC
  pricing::Micros usage_monthly = 0;       ///< since the 1st 00:00 UTC
  pricing::Micros usage_in_period = 0;     ///< since the start of the key's own limit_reset period
};

/// The account's ledger in two sums (GET /api/v1/credits), credit units:
/// total_credits − total_usage = the balance (conservation, DESIGN.md invariant 2).
struct AccountCredits {
  /// Σ ledger rows that are not usage charges: purchases, bonuses, grants, net of money taken
  /// back (refund rows, expired allowance and other negative adjustments).
  pricing::Micros total_credits = 0;
  /// What usage was charged: −Σ usage ledger rows (= Σ usage_logs.credits_deducted).
  pricing::Micros total_usage = 0;
};

/// One committed usage row as a generation (GET /api/v1/generation).
struct Generation {
  std::string id;                        ///< the upstream's generation id, else the request id
  std::string request_id;                ///< tollgate's request id (x-request-id, "req_…")
  std::string model;
  std::optional<std::string> upstream;   ///< the upstream that served it (operator's name); none reached: nullopt
  std::int64_t tokens_prompt = 0;
  std::int64_t tokens_completion = 0;
  std::int64_t native_tokens_cached = 0;     ///< cache reads (a part of tokens_prompt)
  std::int64_t native_tokens_reasoning = 0;  ///< a part of tokens_completion
  pricing::Micros total_cost = 0;        ///< the customer's charge (credit units)
  bool streamed = false;                 ///< request_metadata.stream
  bool cancelled = false;                ///< status client_aborted
  std::string status;                    ///< usage_logs.status (success, client_aborted, …)
  std::optional<std::string> finish_reason;
  std::optional<std::int64_t> duration_ms;  ///< request start to end through tollgate (ms, floored)
  std::string created_at;                ///< ISO 8601 UTC, microseconds
};

/// The key `key_id` (uuid text) of account `user_id` with its charges summed as of `at`
/// (a timestamptz literal; nullopt: now()): rows created at or before `at`, from each period's
/// start. nullopt: no such key of that account.
/// Uses usage_logs_api_key_created_idx (migration 0013): an index-only scan of the key's rows.
std::optional<KeyUsage> key_usage(PgConn& db, const std::string& key_id, const std::string& user_id,
                                  const std::optional<std::string>& at = std::nullopt);

/// The account's total credits and total usage (see AccountCredits). Reads the non-usage ledger
/// rows (credit_transactions_credits_idx, migration 0013) and the balance, in one snapshot;
/// total_usage = total_credits − balance, which equals −Σ usage rows by conservation.
AccountCredits account_credits(PgConn& db, const std::string& user_id);

/// The account's usage row whose request_id, or else whose response_metadata.generation_id,
/// is `id`; nullopt when there is none of this account (another account's, or not yet
/// committed). Several rows with one generation id: the latest.
std::optional<Generation> find_generation(PgConn& db, const std::string& user_id, const std::string& id);

}  // namespace tollgate::sql
