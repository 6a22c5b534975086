// Spend limits' calendar periods (ratelimit/spend_period.hpp): UTC days, ISO weeks from Monday,
// months from the 1st, as Postgres' tollgate_period_start() cuts them.
#include "ratelimit/admission.hpp"
#include "ratelimit/spend_period.hpp"

#include <catch2/catch.hpp>

#include <climits>

using namespace tollgate;
using namespace tollgate::ratelimit;
using keys::LimitReset;

namespace {
constexpr std::int64_t day = 86'400'000;
/// 2026-11-29T01:00:00Z, a Sunday, in Unix ms.
constexpr std::int64_t sun_0100 = 1'795'914'000'000;
}  // namespace

TEST_CASE("spend periods: calendar UTC days, weeks from Monday, months from the 1st", "[spend]") {
  CHECK(iso8601_utc(sun_0100) == "2026-11-29T01:00:00Z");
  auto d = spend_period(LimitReset::daily, sun_0100);
  CHECK(iso8601_utc(d.start_ms) == "2026-11-29T00:00:00Z");
  CHECK(iso8601_utc(d.end_ms) == "2026-11-30T00:00:00Z");
  // The last millisecond of a day is in it; the next one starts the next period.
  CHECK(spend_period(LimitReset::daily, d.end_ms - 1).start_ms == d.start_ms);
  CHECK(spend_period(LimitReset::daily, d.end_ms).start_ms == d.end_ms);
  auto w = spend_period(LimitReset::weekly, sun_0100);  // a Sunday belongs to the week of Monday the 23rd
  CHECK(iso8601_utc(w.start_ms) == "2026-11-23T00:00:00Z");
  CHECK(iso8601_utc(w.end_ms) == "2026-11-30T00:00:00Z");
  CHECK(spend_period(LimitReset::weekly, w.end_ms).start_ms == w.end_ms);  // Monday 00:00 starts a week
  auto m = spend_period(LimitReset::monthly, sun_0100);
  CHECK(iso8601_utc(m.start_ms) == "2026-11-01T00:00:00Z");
  CHECK(iso8601_utc(m.end_ms) == "2026-12-01T00:00:00Z");
  auto dec = spend_period(LimitReset::monthly, m.end_ms + 31 * day - 1);  // December runs into January
  CHECK(iso8601_utc(dec.end_ms) == "2027-01-01T00:00:00Z");
  auto feb = spend_period(LimitReset::monthly, 1'709'164'800'000);  // 2024-02-29T00:00:00Z, a leap day
  CHECK(iso8601_utc(feb.start_ms) == "2024-02-01T00:00:00Z");
  CHECK(iso8601_utc(feb.end_ms) == "2024-03-01T00:00:00Z");
  auto never = spend_period(LimitReset::never, sun_0100);
  CHECK(never.start_ms == 0);
  CHECK(never.end_ms == INT64_MAX);
}

TEST_CASE("spend windows: one per limit and period, costing the hold, after the rate windows", "[spend]") {
  keys::KeyRecord k;
  k.key_id = "k1";
  k.user_id = "u1";
  k.key_limits.requests_per_minute = 10;
  k.key_spend = {5'000'000, LimitReset::daily};
  k.account_spend = {9'000'000, LimitReset::monthly};
  auto ws = windows_for(k, 100, 1234, sun_0100);
  REQUIRE(ws.size() == 3);
  CHECK_FALSE(ws[0].spend);
  CHECK(ws[1].spend);
  CHECK(ws[1].name == "key_spend_limit");
  CHECK(ws[1].key == "tg:{u1}:k:k1:spend:daily:" + std::to_string(spend_period(LimitReset::daily, sun_0100).start_ms));
  CHECK(ws[1].cost == 1234);
  CHECK(ws[1].limit == 5'000'000);
  CHECK(ws[1].spend_owner == "k1");
  CHECK(ws[2].name == "account_spend_limit");
  CHECK(ws[2].spend_owner == "u1");
  CHECK(ws[2].key.starts_with("tg:{u1}:a:spend:monthly:"));  // one hash slot with the account
  // The next day is another window: requests count in the period they were admitted in.
  CHECK(windows_for(k, 100, 1234, sun_0100 + day)[1].key != ws[1].key);
  k.key_spend = {};  // no limit, no window
  CHECK(windows_for(k, 100, 1234, sun_0100).size() == 2);
}
