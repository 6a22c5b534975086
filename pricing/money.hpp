#pragma once
// Fixed-point money. No floating point anywhere money flows.
//
//   credit unit (Micros) = 1e-6 USD  — balances, charges, costs as stored (NUMERIC(18,6))
//   Picos                = 1e-12 USD — per-token prices (NUMERIC(20,12)) and exact costs
//
// Rounding rule (the only one): a charge or cost in Picos becomes Micros by rounding UP to the
// next micro-dollar (ceil), the same as Postgres `ceil(x * 1e6) / 1e6` on NUMERIC.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace tollgate::pricing {

using Micros = std::int64_t;  ///< 1e-6 USD
using Picos = std::int64_t;   ///< 1e-12 USD

inline constexpr Picos picos_per_micro = 1'000'000;

/// The most one request can cost or be charged: USD 1,000,000 (no real request comes near it;
/// 10^7 tokens at today's dearest prices is ~USD 1,000). Token costs and charges saturate here
/// instead of at INT64_MAX, so a hostile upstream's usage (10^12 tokens, say) still gives a
/// charge that every later sum can hold: int64 in C++, Redis' Lua numbers (doubles, exact below
/// 2^53 ≈ 9·10^15 µUSD) and Postgres' NUMERIC(18,6) columns (below 10^12 USD). Up to this bound
/// the result equals Postgres' tollgate_price() to the unit.
inline constexpr Micros max_request_micros = 1'000'000'000'000;
inline constexpr Picos max_request_picos = max_request_micros * picos_per_micro;  ///< 10^18 < 2^63

/// Parses a decimal USD amount ("0.000015", "-1.5", "1e-5", "2.5E-06") into units of
/// 10^-scale USD, rounding any finer digits UP (toward +infinity). nullopt on bad syntax or
/// overflow. Accepts what JSON numbers and Postgres NUMERIC text produce.
std::optional<std::int64_t> parse_decimal(std::string_view text, int scale);

/// Micros as a decimal USD string with 6 fraction digits ("12.000345", "-0.000001").
std::string format_micros(Micros v);
/// format_micros(v) appended to `out`, with no allocation beyond `out` growing (hot paths).
void append_micros(std::string& out, Micros v);
/// Picos as a decimal USD string with 12 fraction digits.
std::string format_picos(Picos v);

/// ceil(p / 1e6) for a non-negative or negative Picos amount.
constexpr Micros picos_to_micros_ceil(Picos p) {
  Micros q = p / picos_per_micro;
  return (p % picos_per_micro > 0) ? q + 1 : q;
}

}  // namespace tollgate::pricing
