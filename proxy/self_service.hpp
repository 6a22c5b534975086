#pragma once
// The bodies of OpenRouter's self-service endpoints (reference/WIRE.md "OpenRouter
// self-service endpoints"), built from what the AccountSource read (proxy/seams.hpp) and the
// caller's key. The handlers (key_info, credits_info, generation_info) are declared with the
// endpoint table, proxy/endpoints.hpp. Every amount is a JSON number in USD with at most 6
// decimals, written from credit units (1e-6 USD) exactly, never through a double.
#include "keys/key_cache.hpp"
#include "pricing/money.hpp"
#include "sql/account_queries.hpp"

#include <string>

namespace tollgate {

/// Credit units as a JSON number in USD: 1234567 → "1.234567", 1500000 → "1.5", 0 → "0".
std::string usd_number(pricing::Micros v);

/// OpenRouter's `rate_limit` object from the key's request limits (0 = none): per interval
/// (minute, hour, day) the stricter nonzero one of the key's and the account's binds, as
/// admission counts both; reported is the shortest interval that has a limit —
/// {"requests":N,"interval":"1m"|"1h"|"1d","note":"…all three…"} — or, with none,
/// {"requests":-1,"interval":"1m","note":"No request rate limit."}.
std::string rate_limit_json(const keys::KeyRecord& key);

/// GET /api/v1/key: {"data":{label, limit, limit_remaining, limit_reset, usage, usage_daily,
/// usage_weekly, usage_monthly, is_free_tier, expires_at, rate_limit}}. limit and
/// limit_remaining are USD or null (no spend limit); limit_remaining = limit − what the key was
/// charged in its current limit_reset period, never below 0; limit_reset is null for "never".
std::string key_body(const keys::KeyRecord& key, const sql::KeyUsage& u);

/// GET /api/v1/credits: {"data":{"total_credits","total_usage"}} in USD.
std::string credits_body(const sql::AccountCredits& c);

/// GET /api/v1/generation: {"data":{id, request_id, model, upstream, provider_name (= upstream),
/// created_at, total_cost (the customer's charge, USD), usage (= total_cost, as OpenRouter),
/// tokens_prompt, tokens_completion, native_tokens_prompt/completion (= the same counts),
/// native_tokens_cached, native_tokens_reasoning, streamed, cancelled, finish_reason,
/// latency and generation_time (ms, both the request's time through tollgate)}}.
std::string generation_body(const sql::Generation& g);

}  // namespace tollgate
