#include "pricing/pricing.hpp"

#include <algorithm>
#include <limits>

namespace tollgate::pricing {

bool glob_match(std::string_view p, std::string_view t) noexcept {
  // Iterative matcher with single-star backtracking: O(|p|·|t|) worst case, no recursion.
  std::size_t pi = 0, ti = 0, star = std::string_view::npos, mark = 0;
  while (ti < t.size()) {
    if (pi < p.size() && (p[pi] == '?' || p[pi] == t[ti])) {
      ++pi;
      ++ti;
    } else if (pi < p.size() && p[pi] == '*') {
      star = pi++;
      mark = ti;
    } else if (star != std::string_view::npos) {
      pi = star + 1;
      ti = ++mark;
    } else {
      return false;
    }
  }
  while (pi < p.size() && p[pi] == '*') ++pi;
  return pi == p.size();
}

PricingSnapshot::PricingSnapshot(std::unordered_map<std::string, ModelPrice> prices,
                                 std::vector<PricingRule> rules)
    : prices_(std::move(prices)), rules_(std::move(rules)) {
  std::stable_sort(rules_.begin(), rules_.end(),
                   [](const PricingRule& a, const PricingRule& b) { return a.priority > b.priority; });
}

const ModelPrice* PricingSnapshot::price(std::string_view model) const {
  auto it = prices_.find(std::string(model));
  return it == prices_.end() ? nullptr : &it->second;
}

const PricingRule* PricingSnapshot::rule_for(std::string_view model) const {
  for (const auto& r : rules_)
    if (glob_match(r.model_pattern, model)) return &r;
  return nullptr;
}

Picos PricingSnapshot::token_cost(const ModelPrice& p, std::int64_t prompt_tokens,
                                  std::int64_t completion_tokens) {
  // Each product is below 2^63 · 2^63 = 2^126 and so is their sum: no 128-bit overflow.
  auto part = [](std::int64_t tokens, Picos price) {
    return static_cast<__int128>(std::max<std::int64_t>(tokens, 0)) * std::max<Picos>(price, 0);
  };
  __int128 c = part(prompt_tokens, p.prompt_per_token) + part(completion_tokens, p.completion_per_token);
  return c > max_request_picos ? max_request_picos : static_cast<Picos>(c);
}

namespace {
/// tokens × price, each taken as ≥ 0, saturated at max_request_picos (so that a sum of any
/// few of them cannot overflow 128 bits).
__int128 part(std::int64_t count, Picos price) {
  __int128 v = static_cast<__int128>(std::max<std::int64_t>(count, 0)) * std::max<Picos>(price, 0);
  return v > max_request_picos ? max_request_picos : v;
}
Picos saturate(__int128 c) { return c > max_request_picos ? max_request_picos : static_cast<Picos>(c); }
}  // namespace

Picos PricingSnapshot::cost(const ModelPrice& p, const Metered& m) {
  std::int64_t prompt = std::max<std::int64_t>(m.prompt, 0), completion = std::max<std::int64_t>(m.completion, 0);
  std::int64_t cached = std::clamp<std::int64_t>(m.cached_read, 0, prompt);
  std::int64_t written = std::clamp<std::int64_t>(m.cache_write, 0, prompt - cached);
  std::int64_t reasoning = std::clamp<std::int64_t>(m.reasoning, 0, completion);
  std::int64_t image = std::clamp<std::int64_t>(m.image_output, 0, completion - reasoning);
  // Eleven parts, each ≤ 10^18: the sum stays far below 2^127.
  __int128 c = part(prompt - cached - written, p.prompt_per_token) +
               part(cached, p.cache_read_per_token.value_or(p.prompt_per_token)) +
               part(written, p.cache_write_per_token.value_or(p.prompt_per_token)) +
               part(completion - reasoning - image, p.completion_per_token) +
               part(reasoning, p.reasoning_per_token.value_or(p.completion_per_token)) +
               part(image, p.image_output_per_token.value_or(p.completion_per_token)) +
               part(m.requests, p.per_request) + part(m.images, p.per_image) +
               part(m.web_searches, p.per_web_search) + part(m.images_generated, p.per_generated_image);
  return saturate(c);
}

Picos PricingSnapshot::worst_case_cost(const ModelPrice& p, std::int64_t prompt_max, std::int64_t completion_max,
                                       std::int64_t images_max) {
  Picos prompt_price = std::max({p.prompt_per_token, p.cache_read_per_token.value_or(0), p.cache_write_per_token.value_or(0)});
  Picos completion_price = std::max({p.completion_per_token, p.reasoning_per_token.value_or(0),
                                     p.image_output_per_token.value_or(0)});
  return saturate(part(prompt_max, prompt_price) + part(completion_max, completion_price) + part(1, p.per_request) +
                  part(images_max, p.per_generated_image));
}

bool PricingSnapshot::drifts(Picos computed, Picos reported) noexcept {
  // |computed − reported| > reported / 100, in 128 bits.
  __int128 diff = static_cast<__int128>(computed) - reported;
  if (diff < 0) diff = -diff;
  return diff * 100 > static_cast<__int128>(reported < 0 ? 0 : reported);
}

Charge PricingSnapshot::charge(std::string_view model, Picos upstream_cost) const {
  upstream_cost = std::clamp<Picos>(upstream_cost, 0, max_request_picos);
  Charge out;
  out.cost = picos_to_micros_ceil(upstream_cost);  // ≤ max_request_micros
  const PricingRule* rule = rule_for(model);
  std::int64_t markup = rule ? rule->markup_centipercent : 0;
  // cost × (1 + markup/100) = cost × (10000 + markup_centipercent) / 10000, then ceil to micros.
  // |num| < 10^18 · 2^63 < 2^123: no 128-bit overflow; a factor below 0 (markup < -100 %) gives 0.
  __int128 num = static_cast<__int128>(upstream_cost) * std::max<__int128>(10000 + static_cast<__int128>(markup), 0);
  __int128 den = static_cast<__int128>(10000) * picos_per_micro;
  __int128 q = num / den;
  if (num % den > 0) ++q;
  Micros marked = q > max_request_micros ? max_request_micros : static_cast<Micros>(q);
  out.charge = std::clamp<Micros>(std::max(marked, rule ? rule->min_cost : Micros{0}), 0, max_request_micros);
  return out;
}

}  // namespace tollgate::pricing
