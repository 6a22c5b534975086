#pragma once
// Model prices, pricing rules, and the charge for one request.
//
// charge = max(min_cost_usd, ceil_to_micro(upstream_cost × (1 + markup_percentage / 100)))
// where upstream_cost is cost(price, metered): every metered quantity × its `model_prices`
// price (USD per token, request, image or search; see Metered) or, when configured (or for
// image output the model has no price for: proxy/record.cpp), the upstream's `usage.cost`.
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

/// One row of `model_prices`, every price in Picos (1e-12 USD) per unit. A component without a
/// price of its own (NULL in SQL: nullopt or 0 here) is "not priced separately": cache reads and
/// writes then cost the prompt price, reasoning and image output the completion price, the rest
/// nothing. New members go at the end: callers brace-initialize the leading ones in order.
struct ModelPrice {
  Picos prompt_per_token = 0;
  Picos completion_per_token = 0;
  std::int64_t context_length = 0;  ///< tokens; 0 = unknown
  std::optional<Picos> cache_read_per_token = std::nullopt;  ///< input_cache_read_price; nullopt: prompt price
  std::optional<Picos> cache_write_per_token = std::nullopt; ///< input_cache_write_price; nullopt: prompt price
  std::optional<Picos> reasoning_per_token = std::nullopt;   ///< internal_reasoning_price; nullopt: completion price
  Picos per_request = 0;     ///< request_price (NULL: 0)
  Picos per_image = 0;       ///< image_price, per image input (NULL: 0)
  Picos per_web_search = 0;  ///< web_search_price (NULL: 0)
  /// image_output_price, per image-output token (a part of the completion); nullopt: not priced
  /// separately (the completion price, or the upstream's usage.cost: proxy/record.cpp).
  std::optional<Picos> image_output_per_token = std::nullopt;
  Picos per_generated_image = 0;  ///< image_generation_price, per image an Images API request generated (NULL: 0)
  /// Display name (model_prices.name; load_pricing() gives the model id for NULL). Empty (a
  /// price made in code): the model id.
  std::string name = {};
  std::int64_t created_at_s = 0;  ///< when the price was added (model_prices.created_at), Unix seconds
};

/// What one request used, as priced: counts of tokens, requests, images and web searches.
/// `cached_read` and `cache_write` are parts of `prompt` (OpenRouter's and OpenAI's
/// prompt_tokens include them), `reasoning` and `image_output` are parts of `completion`
/// (OpenRouter counts reasoning and image tokens inside completion_tokens); they are never added
/// on top. cost() reads negative counts as 0 and clamps the parts to their whole (cache writes
/// to what cached reads leave of the prompt, image output to what reasoning leaves of the
/// completion), as tollgate_price() does. New members go at the end (brace initialization).
struct Metered {
  std::int64_t prompt = 0;        ///< tokens, cached and cache writes included
  std::int64_t cached_read = 0;   ///< prompt tokens read from the provider's cache
  std::int64_t cache_write = 0;   ///< prompt tokens written to the provider's cache
  std::int64_t completion = 0;    ///< tokens, reasoning included
  std::int64_t reasoning = 0;     ///< completion tokens spent reasoning
  std::int64_t requests = 0;      ///< requests (1 for a billed request)
  std::int64_t images = 0;        ///< image inputs
  std::int64_t web_searches = 0;  ///< web searches
  std::int64_t image_output = 0;      ///< completion tokens that are image output
  std::int64_t images_generated = 0;  ///< images generated (Images API `data` entries)
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
  /// Upstream cost in Picos of everything metered, each part at its own price (see Metered and
  /// ModelPrice): exact, never negative, saturating at max_request_picos, never overflowing.
  /// The same calculation in NUMERIC is the eleven-argument tollgate_price() (migration 0009):
  ///   (prompt − cached − cache_write) × prompt + cached × cache-read + cache_write × cache-write
  ///   + (completion − reasoning − image_output) × completion + reasoning × reasoning price
  ///   + image_output × image-output price + requests, images, web searches and generated
  ///   images × their prices (each price as ModelPrice says when not set).
  static Picos cost(const ModelPrice& p, const Metered& m);
  /// The most cost() can be for a request of at most `prompt_max` prompt tokens,
  /// `completion_max` completion tokens and `images_max` generated images (the admission hold):
  /// prompt_max × the dearest of the prompt, cache-read and cache-write prices + completion_max
  /// × the dearest of the completion, reasoning and image-output prices + images_max × the
  /// price per generated image + one request fee (all in Picos). Image inputs and web searches
  /// are not bounded (none are metered today: OpenRouter's usage reports no count of them).
  /// Saturates like cost(). A charge from the upstream's usage.cost (record.cpp) is bounded by
  /// the hold instead.
  static Picos worst_case_cost(const ModelPrice& p, std::int64_t prompt_max, std::int64_t completion_max,
                               std::int64_t images_max = 0);
  /// Applies the rule for `model` to an exact upstream cost. A negative cost counts as 0; cost
  /// and charge are in [0, max_request_micros] whatever the cost, markup or minimum (a markup
  /// below -100 % gives 0, never a negative charge that would credit the account).
  Charge charge(std::string_view model, Picos upstream_cost) const;

  /// Whether a computed cost and an upstream's reported cost (both Picos) differ by more than
  /// 1 % of the reported one (any difference when it reported 0): tollgate_cost_drift.
  static bool drifts(Picos computed, Picos reported) noexcept;

 private:
  std::unordered_map<std::string, ModelPrice> prices_;
  std::vector<PricingRule> rules_;
};

using PricingSnapshotPtr = std::shared_ptr<const PricingSnapshot>;

}  // namespace tollgate::pricing
