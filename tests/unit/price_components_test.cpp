// Every part of a price (issue 12, section 3): cache reads and writes, reasoning, the request
// fee, image output tokens and generated images (issue 13), and the worst case that the
// admission hold takes.
#include "pricing/pricing.hpp"

#include <catch2/catch.hpp>

#include <random>

using namespace tollgate::pricing;

namespace {
/// Anthropic-like prices per token: $3 / $15 per M, cache read $0.30, cache write $3.75,
/// reasoning $20 (dearer than completion, so that it shows), $0.005 per request.
ModelPrice components() {
  ModelPrice p{3'000'000, 15'000'000, 200000};
  p.cache_read_per_token = 300'000;
  p.cache_write_per_token = 3'750'000;
  p.reasoning_per_token = 20'000'000;
  p.per_request = 5'000'000'000;
  p.per_image = 1'000'000'000;
  p.per_web_search = 4'000'000'000;
  return p;
}
}  // namespace

TEST_CASE("cached prompt tokens cost the cache-read price, the rest the prompt price") {
  ModelPrice p = components();
  CHECK(PricingSnapshot::cost(p, {.prompt = 1000, .cached_read = 800}) == 200 * 3'000'000LL + 800 * 300'000LL);
  p.cache_read_per_token.reset();  // not priced separately: the prompt price
  CHECK(PricingSnapshot::cost(p, {.prompt = 1000, .cached_read = 800}) == 1000 * 3'000'000LL);
  p.cache_read_per_token = 0;  // priced at 0 on purpose: free
  CHECK(PricingSnapshot::cost(p, {.prompt = 1000, .cached_read = 800}) == 200 * 3'000'000LL);
}

TEST_CASE("cache writes cost the cache-write price") {
  ModelPrice p = components();
  CHECK(PricingSnapshot::cost(p, {.prompt = 1000, .cached_read = 100, .cache_write = 600}) ==
        300 * 3'000'000LL + 100 * 300'000LL + 600 * 3'750'000LL);
  p.cache_write_per_token.reset();
  CHECK(PricingSnapshot::cost(p, {.prompt = 1000, .cache_write = 600}) == 1000 * 3'000'000LL);
}

TEST_CASE("reasoning tokens are part of the completion and cost the reasoning price when it is set") {
  ModelPrice p = components();
  CHECK(PricingSnapshot::cost(p, {.completion = 500, .reasoning = 300}) == 200 * 15'000'000LL + 300 * 20'000'000LL);
  p.reasoning_per_token.reset();  // OpenRouter's "internal_reasoning": "0" → billed as completion
  CHECK(PricingSnapshot::cost(p, {.completion = 500, .reasoning = 300}) == 500 * 15'000'000LL);
}

TEST_CASE("the request fee, image inputs and web searches are priced per unit; null prices are 0") {
  ModelPrice p = components();
  CHECK(PricingSnapshot::cost(p, {.requests = 1}) == 5'000'000'000LL);
  CHECK(PricingSnapshot::cost(p, {.prompt = 10, .requests = 1, .images = 2, .web_searches = 3}) ==
        10 * 3'000'000 + 5'000'000'000 + 2 * 1'000'000'000 + 3 * 4'000'000'000LL);
  ModelPrice plain{3'000'000, 15'000'000, 0};
  CHECK(PricingSnapshot::cost(plain, {.prompt = 10, .requests = 1, .images = 2, .web_searches = 3}) == 10 * 3'000'000LL);
  // With no component metered, cost() is token_cost().
  CHECK(PricingSnapshot::cost(p, {.prompt = 123, .completion = 45}) == PricingSnapshot::token_cost(p, 123, 45));
}

TEST_CASE("cost() clamps inconsistent counts and saturates instead of overflowing") {
  ModelPrice p = components();
  // Parts beyond their whole count as the whole; negatives as 0.
  CHECK(PricingSnapshot::cost(p, {.prompt = 100, .cached_read = 500}) == 100 * 300'000LL);
  CHECK(PricingSnapshot::cost(p, {.prompt = 100, .cached_read = 60, .cache_write = 60}) == 60 * 300'000LL + 40 * 3'750'000LL);
  CHECK(PricingSnapshot::cost(p, {.completion = 10, .reasoning = 99}) == 10 * 20'000'000LL);
  CHECK(PricingSnapshot::cost(p, {.prompt = -5, .cached_read = -1, .completion = -3, .requests = -1}) == 0);
  CHECK(PricingSnapshot::cost(p, {.completion = 10, .reasoning = 4, .image_output = 99}) ==
        4 * 20'000'000LL + 6 * 15'000'000LL);  // image output unpriced: the completion price
  CHECK(PricingSnapshot::cost(p, {.images_generated = -2}) == 0);
  ModelPrice dear{INT64_MAX, INT64_MAX, 0, INT64_MAX, INT64_MAX, INT64_MAX, INT64_MAX, INT64_MAX, INT64_MAX,
                  INT64_MAX, INT64_MAX};
  Metered huge{INT64_MAX, INT64_MAX / 3, INT64_MAX / 3, INT64_MAX, INT64_MAX / 2, INT64_MAX,
               INT64_MAX, INT64_MAX, INT64_MAX / 2, INT64_MAX};
  CHECK(PricingSnapshot::cost(dear, huge) == max_request_picos);
  CHECK(PricingSnapshot::worst_case_cost(dear, INT64_MAX, INT64_MAX, INT64_MAX) == max_request_picos);
  // One part alone past the bound saturates too (each part is bounded before the sum).
  ModelPrice one_image{0, 0, 0};
  one_image.per_generated_image = INT64_MAX;
  CHECK(PricingSnapshot::cost(one_image, {.images_generated = 2}) == max_request_picos);
}

TEST_CASE("image output tokens are part of the completion and cost the image-output price when it is set") {
  ModelPrice p = components();
  p.image_output_per_token = 40'000'000;  // $40 per M, gpt-image-1's image output
  CHECK(PricingSnapshot::cost(p, {.completion = 1500, .reasoning = 300, .image_output = 1000}) ==
        200 * 15'000'000LL + 300 * 20'000'000LL + 1000 * 40'000'000LL);
  p.image_output_per_token = 0;  // priced at 0 on purpose: free
  CHECK(PricingSnapshot::cost(p, {.completion = 1500, .image_output = 1000}) == 500 * 15'000'000LL);
  p.image_output_per_token.reset();  // not priced separately: the completion price
  CHECK(PricingSnapshot::cost(p, {.completion = 1500, .image_output = 1000}) == 1500 * 15'000'000LL);
  // Image tokens beyond what reasoning leaves of the completion count as that rest.
  p.image_output_per_token = 40'000'000;
  CHECK(PricingSnapshot::cost(p, {.completion = 1000, .reasoning = 700, .image_output = 900}) ==
        700 * 20'000'000LL + 300 * 40'000'000LL);
}

TEST_CASE("generated images cost the price per generated image; null is 0") {
  ModelPrice dalle{0, 0, 4000};
  dalle.per_generated_image = 40'000'000'000;  // $0.04 per image
  CHECK(PricingSnapshot::cost(dalle, {.prompt = 12, .requests = 1, .images_generated = 3}) == 3 * 40'000'000'000LL);
  ModelPrice p = components();  // per_generated_image 0: generated images cost nothing
  CHECK(PricingSnapshot::cost(p, {.prompt = 10, .images_generated = 3}) == 10 * 3'000'000LL);
  // Generated images and image inputs are different prices.
  dalle.per_image = 1'000'000'000;
  CHECK(PricingSnapshot::cost(dalle, {.images = 1, .images_generated = 2}) == 1'000'000'000LL + 2 * 40'000'000'000LL);
}

TEST_CASE("the worst case takes the dearest prompt and completion prices and the request fee") {
  ModelPrice p = components();
  CHECK(PricingSnapshot::worst_case_cost(p, 1000, 500) == 1000 * 3'750'000LL + 500 * 20'000'000LL + 5'000'000'000LL);
  ModelPrice cheap_cache{3'000'000, 15'000'000, 0};
  cheap_cache.cache_read_per_token = 300'000;
  CHECK(PricingSnapshot::worst_case_cost(cheap_cache, 1000, 500) == PricingSnapshot::token_cost(cheap_cache, 1000, 500));
  // An image-output price dearer than the reasoning price is the completion's worst case.
  p.image_output_per_token = 40'000'000;
  CHECK(PricingSnapshot::worst_case_cost(p, 1000, 500) == 1000 * 3'750'000LL + 500 * 40'000'000LL + 5'000'000'000LL);
  // images_max generated images at their price; the default (0) holds none.
  p.per_generated_image = 40'000'000'000;
  CHECK(PricingSnapshot::worst_case_cost(p, 1000, 500, 3) ==
        1000 * 3'750'000LL + 500 * 40'000'000LL + 5'000'000'000LL + 3 * 40'000'000'000LL);
  CHECK(PricingSnapshot::worst_case_cost(p, 1000, 500) == 1000 * 3'750'000LL + 500 * 40'000'000LL + 5'000'000'000LL);
}

TEST_CASE("property: the worst case bounds the cost and the charge of every request within its caps") {
  std::mt19937_64 rng(20261128);
  auto pick = [&](std::int64_t lo, std::int64_t hi) { return std::uniform_int_distribution<std::int64_t>(lo, hi)(rng); };
  auto maybe_price = [&]() -> std::optional<Picos> {
    if (pick(0, 2) == 0) return std::nullopt;
    return pick(0, 80'000'000);
  };
  int checked = 0;
  for (int i = 0; i < 20'000; ++i) {
    ModelPrice p{pick(0, 50'000'000), pick(0, 80'000'000), 0, maybe_price(), maybe_price(), maybe_price(),
                 pick(0, 2) ? 0 : pick(0, 10'000'000'000), 0, 0, maybe_price(),
                 pick(0, 2) ? 0 : pick(0, 80'000'000'000)};
    PricingSnapshot snap({{"m", p}}, {{"*", pick(-10000, 30000), pick(0, 50), 0}});
    std::int64_t prompt_max = pick(1, 200'000), completion_max = pick(0, 100'000), images_max = pick(0, 10);
    Metered m;
    m.prompt = pick(0, prompt_max);
    m.cached_read = pick(0, m.prompt);
    m.cache_write = pick(0, m.prompt - m.cached_read);
    m.completion = pick(0, completion_max);
    m.reasoning = pick(0, m.completion);
    m.image_output = pick(0, m.completion - m.reasoning);
    m.images_generated = pick(0, images_max);
    m.requests = 1;
    Picos worst = PricingSnapshot::worst_case_cost(p, prompt_max, completion_max, images_max);
    Picos actual = PricingSnapshot::cost(p, m);
    INFO("case " << i);
    REQUIRE(actual >= 0);
    REQUIRE(actual <= worst);
    REQUIRE(snap.charge("m", actual).charge <= snap.charge("m", worst).charge);
    ++checked;
  }
  CHECK(checked == 20'000LL);
}

TEST_CASE("cost drift: more than 1 % away from the reported cost") {
  CHECK_FALSE(PricingSnapshot::drifts(100'000LL, 100'000LL));
  CHECK_FALSE(PricingSnapshot::drifts(101'000LL, 100'000LL));  // exactly 1 %
  CHECK(PricingSnapshot::drifts(101'001LL, 100'000LL));
  CHECK(PricingSnapshot::drifts(98'999LL, 100'000LL));
  CHECK_FALSE(PricingSnapshot::drifts(0, 0));
  CHECK(PricingSnapshot::drifts(1, 0));
}
