// Property test of the money invariant "the hold bounds the charge" (issue 11): over random
// requests and random upstream outcomes — believable, missing, negative, absurd (10^12 tokens,
// huge costs), aborted, cut — every charge is in [0, hold], and an account admitted only when a
// request's hold fits its balance + overdraft never ends below −overdraft.
#include "proxy/record.hpp"

#include <catch2/catch.hpp>

#include <random>

using namespace tollgate;
using tollgate::pricing::Micros;

namespace {
pricing::PricingSnapshot prices() {
  std::unordered_map<std::string, pricing::ModelPrice> p{
      {"cheap", {150'000, 600'000, 128000}},          // $0.15 / $0.60 per M tokens
      {"dear", {15'000'000, 75'000'000, 200000}},     // $15 / $75 per M tokens
      // Image output at $30 per M tokens, $0.04 per generated image (unpriced image parts are
      // charged from usage.cost: "cheap" and "dear" have neither price).
      {"image", {300'000, 2'500'000, 32768, {}, {}, {}, 0, 0, 0, 30'000'000, 40'000'000'000}},
  };
  std::vector<pricing::PricingRule> rules{{"*", 2500, 0, 1}};  // 25 % markup
  return pricing::PricingSnapshot(std::move(p), std::move(rules));
}

/// A random outcome: what an honest or hostile upstream and client may produce.
Outcome random_outcome(std::mt19937_64& rng) {
  auto pick = [&](std::int64_t lo, std::int64_t hi) { return std::uniform_int_distribution<std::int64_t>(lo, hi)(rng); };
  auto tokens = [&] {
    switch (pick(0, 4)) {
      case 0: return pick(0, 100);
      case 1: return pick(0, 100'000);
      case 2: return wire::Usage::max_tokens;  // what a clamped 10^12 reads as
      default: return pick(0, 5'000);
    }
  };
  Outcome out;
  out.reached_upstream = true;
  out.status = pick(0, 5) == 0 ? static_cast<int>(pick(400, 599)) : 200;
  if (pick(0, 3) != 0) {
    wire::Usage u;
    u.prompt_tokens = tokens();
    u.completion_tokens = tokens();
    u.implausible = pick(0, 3) == 0;
    if (pick(0, 3) == 0) u.image_tokens = pick(0, u.completion_tokens);
    if (pick(0, 5) == 0) u.images = pick(0, 10);
    if (pick(0, 2) == 0) {
      static const char* costs[] = {"0", "0.000001", "0.5", "12.34", "9000000", "1000000", "0.0000000001"};
      u.cost_usd = costs[pick(0, 6)];
    }
    out.usage = u;
  }
  out.delivered_chunks = pick(0, 2) == 0 ? pick(0, 200'000) : 0;
  out.delivered_bytes = pick(0, 2) == 0 ? pick(0, 10'000'000) : 0;
  out.undelivered_output = pick(0, 5) == 0;
  out.client_aborted = pick(0, 5) == 0;
  out.upstream_aborted = pick(0, 8) == 0;
  out.midstream_error = pick(0, 8) == 0;
  return out;
}
}  // namespace

TEST_CASE("property: the charge is in [0, hold] and a balance never goes below -overdraft") {
  const auto snap = prices();
  std::mt19937_64 rng(20261128);
  const std::string models[] = {"cheap", "dear", "image"};
  std::int64_t capped = 0;
  for (int account = 0; account < 200; ++account) {
    Micros overdraft = std::uniform_int_distribution<Micros>(0, 1)(rng) ? 0 : 5'000;
    Micros balance = std::uniform_int_distribution<Micros>(0, 2'000'000)(rng);  // up to $2
    for (int request = 0; request < 50; ++request) {
      const std::string& model = models[rng() % 3];
      std::size_t body_bytes = std::uniform_int_distribution<std::size_t>(2, 200'000)(rng);
      std::int64_t cap = std::uniform_int_distribution<std::int64_t>(1, 100'000)(rng);
      // The hold admission computes: every body byte a prompt token (+1) and the cap.
      Micros hold = snap.charge(model, pricing::PricingSnapshot::token_cost(*snap.price(model),
                                                                           static_cast<std::int64_t>(body_bytes) + 1, cap)).charge;
      if (hold > balance + overdraft) continue;  // admission refuses it (402)
      for (bool from_upstream : {false, true}) {
        Outcome out = random_outcome(rng);
        Bill b = bill(out, body_bytes, hold, snap, model, from_upstream);
        REQUIRE(b.charge >= 0);
        REQUIRE(b.charge <= hold);
        REQUIRE(b.prompt_tokens >= 0);
        REQUIRE(b.completion_tokens >= 0);
        REQUIRE(b.overrun >= 0);
        if (b.overrun > 0) ++capped;
        if (!from_upstream) {
          balance -= b.charge;
          REQUIRE(balance >= -overdraft);
        }
      }
    }
  }
  CHECK(capped > 0);  // the random cases do reach the cap
}

TEST_CASE("a 2xx without believable usage is billed for what was delivered, within the hold") {
  const auto snap = prices();
  Outcome out;
  out.reached_upstream = true;
  out.status = 200;
  out.delivered_bytes = 400;  // a garbage JSON body of 400 bytes reached the client
  Bill b = bill(out, 40, 1'000'000, snap, "cheap", false);
  CHECK(b.status == "usage_missing");
  CHECK(b.prompt_tokens == 10);
  CHECK(b.completion_tokens == 100);
  CHECK(b.charge > 0);
  wire::Usage absurd;
  absurd.prompt_tokens = 10;
  absurd.completion_tokens = wire::Usage::max_tokens;
  absurd.implausible = true;
  out.usage = absurd;
  out.delivered_bytes = 0;
  out.delivered_chunks = 7;
  b = bill(out, 40, 1'000'000, snap, "cheap", false);
  CHECK(b.status == "usage_missing");
  CHECK(b.completion_tokens == 7);
  CHECK(b.prompt_tokens == 10);  // the body estimate: the implausible usage is not believed at all
  wire::Usage over;
  over.prompt_tokens = 10;
  over.completion_tokens = 100'000;  // believable, but beyond the 10 tokens held
  out.usage = over;
  Micros hold = snap.charge("cheap", pricing::PricingSnapshot::token_cost(*snap.price("cheap"), 41, 10)).charge;
  b = bill(out, 40, hold, snap, "cheap", false);
  CHECK(b.status == "success");
  CHECK(b.charge == hold);
  CHECK(b.overrun > 0);
}
