#pragma once
// Invariants shared by the fuzz targets that read upstream JSON (sse_usage, response_json):
// what wire::inspect_json returns, and what billing makes of it (pricing::parse_decimal for
// `usage.cost`, token_cost, cost and charge for token counts) never overflows or goes negative,
// and the detail counts are parts of their whole whenever the usage is believed.
#include "pricing/money.hpp"
#include "pricing/pricing.hpp"
#include "proxy/wire.hpp"
#include "tests/fuzz/fuzz_check.hpp"

#include <string_view>

namespace tollgate::fuzz {

/// True if `s` is a JSON number (RFC 8259 §6).
inline bool is_json_number(std::string_view s) {
  std::size_t i = 0;
  auto digits = [&] {
    std::size_t from = i;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i;
    return i > from;
  };
  if (i < s.size() && s[i] == '-') ++i;
  if (i < s.size() && s[i] == '0') ++i;
  else if (!digits()) return false;
  if (i < s.size() && s[i] == '.') {
    ++i;
    if (!digits()) return false;
  }
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
    if (!digits()) return false;
  }
  return i == s.size();
}

/// Checks one inspect_json result and runs billing's arithmetic on it (session.cpp, record())
/// with the dearest prices a model could have: 1 USD per token and a 10000 % markup.
inline void check_chunk_info(const wire::ChunkInfo& info) {
  FUZZ_CHECK(!info.usage_only || info.usage);
  if (!info.usage) return;
  static const pricing::PricingSnapshot dearest({}, {pricing::PricingRule{"*", 1'000'000, 0, 0}});
  auto check_charge = [](pricing::Picos cost) {
    pricing::Charge c = dearest.charge("m", cost);
    FUZZ_CHECK(c.charge >= 0);
    if (cost >= 0) FUZZ_CHECK(c.cost >= 0 && c.charge >= c.cost);
  };
  const wire::Usage& u = *info.usage;
  if (u.cost_usd) {
    FUZZ_CHECK(is_json_number(*u.cost_usd));
    if (auto picos = pricing::parse_decimal(*u.cost_usd, 12)) check_charge(*picos);
    (void)pricing::parse_decimal(*u.cost_usd, 6);
  }
  const pricing::ModelPrice dear{1'000'000'000'000, 1'000'000'000'000, 0};
  pricing::Picos cost = pricing::PricingSnapshot::token_cost(dear, u.prompt_tokens, u.completion_tokens);
  FUZZ_CHECK(cost >= 0);
  check_charge(cost);
  // The detail counts: in range, and parts of their whole unless the usage is flagged
  // implausible (then billing does not believe it); priced with every component dearer still.
  for (std::int64_t n : {u.cached_tokens, u.cache_write_tokens, u.reasoning_tokens})
    FUZZ_CHECK(n >= 0 && n <= wire::Usage::max_tokens);
  if (u.cached_tokens + u.cache_write_tokens > u.prompt_tokens || u.reasoning_tokens > u.completion_tokens)
    FUZZ_CHECK(u.implausible);
  pricing::ModelPrice dearer = dear;
  dearer.cache_read_per_token = dearer.reasoning_per_token = 10'000'000'000'000;
  dearer.cache_write_per_token = 0;
  dearer.per_request = 1'000'000'000'000;
  dearer.image_output_per_token = 20'000'000'000'000;
  dearer.per_generated_image = 1'000'000'000'000'000;
  pricing::Metered m{u.prompt_tokens, u.cached_tokens, u.cache_write_tokens, u.completion_tokens, u.reasoning_tokens, 1};
  m.image_output = u.image_tokens;
  m.images_generated = u.images;
  pricing::Picos full = pricing::PricingSnapshot::cost(dearer, m);
  FUZZ_CHECK(full >= 0 && full <= pricing::max_request_picos);
  check_charge(full);
  if (!u.implausible)
    FUZZ_CHECK(full <= pricing::PricingSnapshot::worst_case_cost(dearer, u.prompt_tokens, u.completion_tokens, u.images));
}

}  // namespace tollgate::fuzz
