#pragma once
// Calendar periods of spend limits (keys::LimitReset): UTC days from midnight, ISO weeks from
// Monday 00:00, months from the 1st 00:00 (as OpenRouter resets key budgets; Postgres'
// tollgate_period_start() in migration 0012 is the same calculation).
#include "keys/key_cache.hpp"

#include <cstdint>
#include <string>

namespace tollgate::ratelimit {

/// The period of `reset` that contains `now_ms` (Unix ms): [start_ms, end_ms). For
/// LimitReset::never, start 0 and end INT64_MAX (one period for ever).
struct SpendPeriod {
  std::int64_t start_ms = 0;
  std::int64_t end_ms = 0;
};
SpendPeriod spend_period(keys::LimitReset reset, std::int64_t now_ms);

/// "daily" | "weekly" | "monthly" | "never".
const char* to_string(keys::LimitReset reset) noexcept;

/// `ms` (Unix ms) as ISO 8601 UTC, "2026-12-01T00:00:00Z".
std::string iso8601_utc(std::int64_t ms);

}  // namespace tollgate::ratelimit
