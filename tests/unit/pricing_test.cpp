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

TEST_CASE("hostile amounts: token cost and charge saturate at USD 1,000,000 and are never negative") {
  auto s = snapshot({{"*", 99'999'99, max_request_micros, 0}});  // markup 99,999.99 %, min cost at the bound
  const ModelPrice dear{INT64_MAX, INT64_MAX, 0};                // 9.2 million USD per token
  CHECK(PricingSnapshot::token_cost(dear, INT64_MAX, INT64_MAX) == max_request_picos);
  CHECK(PricingSnapshot::token_cost(dear, -1, -1) == 0);
  CHECK(PricingSnapshot::token_cost({-5, -5, 0}, 10, 10) == 0);
  const ModelPrice* p = s.price("openai/gpt-4o-mini");
  // 10^12 tokens (what a hostile upstream may report) at $0.60 per million: $600,000, exact.
  CHECK(PricingSnapshot::token_cost(*p, 0, 1'000'000'000'000) == 600'000'000'000'000'000);
  auto c = s.charge("m", PricingSnapshot::token_cost(dear, INT64_MAX, INT64_MAX));
  CHECK(c.cost == max_request_micros);
  CHECK(c.charge == max_request_micros);
  c = s.charge("m", INT64_MAX);
  CHECK(c.cost == max_request_micros);
  CHECK(c.charge == max_request_micros);
  auto plain = snapshot({});
  c = plain.charge("m", -1'000'000'000);  // a negative cost (a hostile usage.cost) is 0
  CHECK(c.cost == 0);
  CHECK(c.charge == 0);
  c = plain.charge("m", INT64_MIN);
  CHECK(c.cost == 0);
  CHECK(c.charge == 0);
  auto below = snapshot({{"*", -20'000, 0, 0}});  // -200 %: CHECK'd away in SQL, 0 here
  CHECK(below.charge("m", 5'000'000).charge == 0);
  auto huge_min = snapshot({{"*", 0, INT64_MAX, 0}});
  CHECK(huge_min.charge("m", 1).charge == max_request_micros);
  // The bound survives later sums: exact in Redis' Lua (doubles), far inside NUMERIC(18,6).
  CHECK(static_cast<Micros>(static_cast<double>(max_request_micros) * 1000) == max_request_micros * 1000);
  CHECK(max_request_micros * 1000 < 1'000'000'000'000'000'000);  // 1,000 of them: below 10^12 USD
}
