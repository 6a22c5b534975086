#include "pricing/pricing.hpp"

#include <catch2/catch.hpp>

using namespace tollgate::pricing;

namespace {
PricingSnapshot snapshot(std::vector<PricingRule> rules) {
  std::unordered_map<std::string, ModelPrice> prices{
      {"openai/gpt-4o-mini", {150'000, 600'000, 128000}},      // $0.15 / $0.60 per M tokens
      {"anthropic/claude-3.5-sonnet", {3'000'000, 15'000'000, 200000}},
  };
  return PricingSnapshot(std::move(prices), std::move(rules));
}
}  // namespace

TEST_CASE("glob patterns") {
  CHECK(glob_match("*", "anything"));
  CHECK(glob_match("openai/*", "openai/gpt-4o"));
  CHECK_FALSE(glob_match("openai/*", "anthropic/claude"));
  CHECK(glob_match("*mini", "openai/gpt-4o-mini"));
  CHECK(glob_match("openai/gpt-4?-mini", "openai/gpt-4o-mini"));
  CHECK_FALSE(glob_match("openai/gpt-4?-mini", "openai/gpt-4-mini"));
  CHECK(glob_match("a*b*c", "aXXbYYc"));
  CHECK_FALSE(glob_match("a*b*c", "aXXbYY"));
  CHECK(glob_match("exact", "exact"));
  CHECK_FALSE(glob_match("exact", "exactly"));
  CHECK(glob_match("gpt_4%", "gpt_4%"));  // SQL wildcards are literal
  CHECK_FALSE(glob_match("gpt_4%", "gptX4Y"));
}

TEST_CASE("token cost is exact") {
  auto s = snapshot({});
  const ModelPrice* p = s.price("openai/gpt-4o-mini");
  REQUIRE(p);
  CHECK(PricingSnapshot::token_cost(*p, 1000, 500) == 1000 * 150'000 + 500 * 600'000);
  CHECK(s.price("nope") == nullptr);
}

TEST_CASE("charge = max(min_cost, ceil(cost × (1 + markup)))") {
  auto s = snapshot({{"openai/*", 2550, 0, 10}, {"*", 1000, 5, 0}});
  // 1000 prompt + 500 completion on gpt-4o-mini: 0.00045 USD = 450 µUSD; +25.5 % = 564.75 → 565.
  auto c = s.charge("openai/gpt-4o-mini", PricingSnapshot::token_cost(*s.price("openai/gpt-4o-mini"), 1000, 500));
  CHECK(c.cost == 450);
  CHECK(c.charge == 565);
  // A tiny request: cost 0.15 µUSD → cost rounds up to 1; 10 % markup → 0.165 → 1; min_cost 5 wins.
  auto tiny = s.charge("anthropic/claude-3.5-sonnet", 150'000);
  CHECK(tiny.cost == 1);
  CHECK(tiny.charge == 5);
}

TEST_CASE("the highest-priority matching rule wins, ties by load order") {
  auto s = snapshot({{"*", 0, 0, 1}, {"openai/*", 5000, 0, 5}, {"openai/gpt-4o-mini", 10000, 0, 5}});
  REQUIRE(s.rule_for("openai/gpt-4o-mini"));
  CHECK(s.rule_for("openai/gpt-4o-mini")->markup_centipercent == 5000);  // first of the two priority-5 rules
  CHECK(s.rule_for("anthropic/x")->markup_centipercent == 0);
  auto none = snapshot({{"openai/*", 5000, 0, 5}});
  CHECK(none.rule_for("anthropic/x") == nullptr);
  CHECK(none.charge("anthropic/x", 2'500'000).charge == 3);  // no rule: cost, rounded up
}

TEST_CASE("negative markup (discount) and rounding at exact boundaries") {
  auto s = snapshot({{"*", -5000, 0, 0}});
  CHECK(s.charge("m", 2'000'000).charge == 1);  // 2 µUSD − 50 % = 1 exactly
  CHECK(s.charge("m", 2'000'002).charge == 2);  // 1.000001 → 2
  CHECK(s.charge("m", 0).charge == 0);
}
