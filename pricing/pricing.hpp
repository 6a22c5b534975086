#pragma once
// Model prices, pricing rules, and the charge for one request.
//
// charge = max(min_cost_usd, ceil_to_micro(upstream_cost × (1 + markup_percentage / 100)))
// where upstream_cost = prompt_tokens × prompt_price + completion_tokens × completion_price
// (Postgres `model_prices`, USD per token) or, when configured, the upstream's `usage.cost`.
// The rule is the highest-priority active `pricing_rules` row whose glob `model_pattern`
// matches the model (ties: the order the rules were loaded in, i.e. created_at, id).
// The same calculation in Postgres NUMERIC is `tollgate_price()` in sql/migrations.
#include "pricing/money.hpp"

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace tollgate::pricing {

/// One row of `model_prices`: USD per token, as Picos (1e-12 USD) per token.
struct ModelPrice {
  Picos prompt_per_token = 0;
  Picos completion_per_token = 0;
  std::int64_t context_length = 0;  ///< tokens; 0 = unknown
};

/// One active row of `pricing_rules`.
struct PricingRule {
  std::string model_pattern;         ///< glob: `*` any run, `?` one character
  std::int64_t markup_centipercent;  ///< markup_percentage × 100 (NUMERIC(7,2)): 2550 = 25.50 %
  Micros min_cost = 0;               ///< min_cost_usd
  std::int64_t priority = 0;
};

/// The cost of one request.
struct Charge {
  Micros cost = 0;    ///< upstream cost, rounded up to the micro-dollar (usage_logs.cost_usd)
  Micros charge = 0;  ///< what the account pays (usage_logs.credits_deducted)
};

/// Shell-style glob match over the whole string (`*`, `?`, everything else literal).
bool glob_match(std::string_view pattern, std::string_view text) noexcept;

/// Immutable snapshot of prices and rules; replaced wholesale on NOTIFY.
class PricingSnapshot {
 public:
  PricingSnapshot(std::unordered_map<std::string, ModelPrice> prices,
                  std::vector<PricingRule> rules_in_priority_order);

  const ModelPrice* price(std::string_view model) const;
  /// The rule that applies to `model`, or nullptr (then no markup and no minimum).
  const PricingRule* rule_for(std::string_view model) const;
  const std::unordered_map<std::string, ModelPrice>& prices() const { return prices_; }

  /// Upstream cost in Picos from token counts and the model's prices: exact, with negative
  /// counts (or prices) taken as 0 and the result saturating at max_request_picos. Never
  /// overflows (128-bit intermediate).
  static Picos token_cost(const ModelPrice& p, std::int64_t prompt_tokens,
                          std::int64_t completion_tokens);
  /// Applies the rule for `model` to an exact upstream cost. A negative cost counts as 0; cost
  /// and charge are in [0, max_request_micros] whatever the cost, markup or minimum (a markup
  /// below -100 % gives 0, never a negative charge that would credit the account).
  Charge charge(std::string_view model, Picos upstream_cost) const;

 private:
  std::unordered_map<std::string, ModelPrice> prices_;
  std::vector<PricingRule> rules_;
};

using PricingSnapshotPtr = std::shared_ptr<const PricingSnapshot>;

}  // namespace tollgate::pricing
