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
  __int128 c = static_cast<__int128>(std::max<std::int64_t>(prompt_tokens, 0)) * p.prompt_per_token +
               static_cast<__int128>(std::max<std::int64_t>(completion_tokens, 0)) * p.completion_per_token;
  return c > std::numeric_limits<Picos>::max() ? std::numeric_limits<Picos>::max()
                                               : static_cast<Picos>(c);
}

Charge PricingSnapshot::charge(std::string_view model, Picos upstream_cost) const {
  Charge out;
  out.cost = picos_to_micros_ceil(upstream_cost);
  const PricingRule* rule = rule_for(model);
  std::int64_t markup = rule ? rule->markup_centipercent : 0;
  // cost × (1 + markup/100) = cost × (10000 + markup_centipercent) / 10000, then ceil to micros.
  __int128 num = static_cast<__int128>(upstream_cost) * (10000 + markup);
  __int128 den = static_cast<__int128>(10000) * picos_per_micro;
  __int128 q = num / den;
  if (num % den > 0) ++q;
  Micros marked = q > std::numeric_limits<Micros>::max() ? std::numeric_limits<Micros>::max()
                                                          : static_cast<Micros>(q);
  out.charge = std::max(marked, rule ? rule->min_cost : Micros{0});
  return out;
}

}  // namespace tollgate::pricing
