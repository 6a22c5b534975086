#include "ratelimit/spend_period.hpp"

#include <fmt/format.h>

#include <chrono>
#include <limits>

namespace tollgate::ratelimit {

namespace ch = std::chrono;

SpendPeriod spend_period(keys::LimitReset reset, std::int64_t now_ms) {
  const ch::sys_time<ch::milliseconds> now{ch::milliseconds(now_ms)};
  const ch::sys_days today = ch::floor<ch::days>(now);
  auto ms = [](ch::sys_days d) { return ch::duration_cast<ch::milliseconds>(d.time_since_epoch()).count(); };
  switch (reset) {
    case keys::LimitReset::daily:
      return {ms(today), ms(today + ch::days(1))};
    case keys::LimitReset::weekly: {
      const ch::sys_days monday = today - (ch::weekday(today) - ch::Monday);
      return {ms(monday), ms(monday + ch::days(7))};
    }
    case keys::LimitReset::monthly: {
      const ch::year_month_day ymd(today);
      const ch::sys_days first = ch::sys_days(ymd.year() / ymd.month() / 1);
      const ch::sys_days next = ch::sys_days((ch::year_month(ymd.year(), ymd.month()) + ch::months(1)) / 1);
      return {ms(first), ms(next)};
    }
    case keys::LimitReset::never:
      break;
  }
  return {0, std::numeric_limits<std::int64_t>::max()};
}

const char* to_string(keys::LimitReset reset) noexcept {
  switch (reset) {
    case keys::LimitReset::daily: return "daily";
    case keys::LimitReset::weekly: return "weekly";
    case keys::LimitReset::monthly: return "monthly";
    case keys::LimitReset::never: break;
  }
  return "never";
}

std::string iso8601_utc(std::int64_t ms) {
  const ch::sys_time<ch::milliseconds> t{ch::milliseconds(ms)};
  const ch::sys_days day = ch::floor<ch::days>(t);
  const ch::year_month_day ymd(day);
  const ch::hh_mm_ss<ch::milliseconds> hms(t - day);
  return fmt::format("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z", static_cast<int>(ymd.year()),
                     static_cast<unsigned>(ymd.month()), static_cast<unsigned>(ymd.day()), hms.hours().count(),
                     hms.minutes().count(), hms.seconds().count());
}

}  // namespace tollgate::ratelimit
