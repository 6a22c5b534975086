#include "pricing/money.hpp"

#include <charconv>
#include <limits>

namespace tollgate::pricing {

std::optional<std::int64_t> parse_decimal(std::string_view s, int scale) {
  if (s.empty()) return std::nullopt;
  bool neg = false;
  std::size_t i = 0;
  if (s[i] == '-' || s[i] == '+') neg = s[i++] == '-';
  // Collect digits as an integer mantissa with a decimal exponent: value = mant * 10^exp10.
  __int128 mant = 0;
  int exp10 = 0;
  bool any_digit = false, seen_dot = false, lost_nonzero = false;
  for (; i < s.size(); ++i) {
    char c = s[i];
    if (c == '.') {
      if (seen_dot) return std::nullopt;
      seen_dot = true;
    } else if (c >= '0' && c <= '9') {
      any_digit = true;
      if (mant < (static_cast<__int128>(1) << 100)) {
        mant = mant * 10 + (c - '0');
        if (seen_dot) --exp10;
      } else {
        // Precision beyond 30 digits: keep the magnitude, remember we dropped a non-zero digit.
        if (!seen_dot) ++exp10;
        if (c != '0') lost_nonzero = true;
      }
    } else {
      break;
    }
  }
  if (!any_digit) return std::nullopt;
  if (i < s.size()) {
    if (s[i] != 'e' && s[i] != 'E') return std::nullopt;
    ++i;
    bool eneg = false;
    if (i < s.size() && (s[i] == '-' || s[i] == '+')) eneg = s[i++] == '-';
    if (i >= s.size()) return std::nullopt;
    int e = 0;
    for (; i < s.size(); ++i) {
      if (s[i] < '0' || s[i] > '9') return std::nullopt;
      if (e < 10000) e = e * 10 + (s[i] - '0');
    }
    exp10 += eneg ? -e : e;
  }
  // Scale to 10^-scale units.
  int shift = exp10 + scale;
  __int128 v = mant;
  if (shift > 0) {
    for (int k = 0; k < shift; ++k) {
      if (v > std::numeric_limits<std::int64_t>::max()) return std::nullopt;
      v *= 10;
    }
  } else if (shift < 0) {
    for (int k = 0; k < -shift && v != 0; ++k) {
      if (v % 10 != 0) lost_nonzero = true;
      v /= 10;
    }
  }
  // Round up (toward +inf): a positive amount with dropped digits grows by one unit.
  if (lost_nonzero && !neg) v += 1;
  if (v > std::numeric_limits<std::int64_t>::max()) return std::nullopt;
  std::int64_t r = static_cast<std::int64_t>(v);
  return neg ? -r : r;
}

namespace {
/// `v` units of 10^-digits as "[-]whole.fraction" with exactly `digits` fraction digits (≤ 12).
void append_fixed(std::string& out, std::int64_t v, int digits) {
  std::uint64_t a = v < 0 ? 0 - static_cast<std::uint64_t>(v) : static_cast<std::uint64_t>(v);
  if (v < 0) out.push_back('-');
  std::uint64_t scale = 1;
  for (int i = 0; i < digits; ++i) scale *= 10;
  char buf[24];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, a / scale);
  out.append(buf, end);
  char frac[13] = {'.'};
  std::uint64_t f = a % scale;
  for (int i = digits; i >= 1; --i, f /= 10) frac[i] = static_cast<char>('0' + f % 10);
  out.append(frac, static_cast<std::size_t>(digits) + 1);
}

std::string format_fixed(std::int64_t v, int digits) {
  std::string s;
  append_fixed(s, v, digits);
  return s;
}
}  // namespace

std::string format_micros(Micros v) { return format_fixed(v, 6); }
void append_micros(std::string& out, Micros v) { append_fixed(out, v, 6); }
std::string format_picos(Picos v) { return format_fixed(v, 12); }

}  // namespace tollgate::pricing
