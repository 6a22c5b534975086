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
