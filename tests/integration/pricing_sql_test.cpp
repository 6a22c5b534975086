// The proxy's fixed-point pricing equals the same calculation in Postgres NUMERIC, to the unit.
#include "db_fixture.hpp"
#include "pricing/pricing.hpp"

#include <array>
#include <random>

using namespace tollgate;
using namespace tollgate::test;

namespace {
constexpr std::int64_t wire_max_tokens = 1'000'000'000;  ///< wire::Usage::max_tokens (proxy/wire.hpp)
}  // namespace

TEST_CASE("C++ charge == tollgate_price() in NUMERIC over random prices, rules and tokens", "[pricing]") {
  sql::PgConn db(database_url());
  std::string ns = unique("px");
  std::mt19937_64 rng(12345);
  // Rules for this namespace only: a catch-all and a narrower, higher-priority one.
  db.exec("INSERT INTO pricing_rules (model_pattern, markup_percentage, min_cost_usd, priority)"
          " VALUES ($1, 12.34, 0.000003, 500), ($2, 250.5, 0, 501)",
          {ns + "/*", ns + "/big-?"});
  std::vector<std::string> models;
  for (int m = 0; m < 6; ++m) {
    std::string model = ns + (m % 2 ? "/big-" : "/small-") + std::to_string(m);
    // Prices with up to 12 decimals, like OpenRouter's per-token strings.
    std::string prompt = pricing::format_picos(static_cast<pricing::Picos>(rng() % 50'000'000));
    std::string completion = pricing::format_picos(static_cast<pricing::Picos>(rng() % 80'000'000));
    sql::upsert_model_price(db, model, prompt, completion, 0);
    models.push_back(model);
  }
  auto snap = sql::load_pricing(db);
  int compared = 0;
  for (int i = 0; i < 300; ++i) {
    const auto& model = models[i % models.size()];
    std::int64_t p = static_cast<std::int64_t>(rng() % 200'000), c = static_cast<std::int64_t>(rng() % 100'000);
    if (i % 10 == 0) p = 0, c = static_cast<std::int64_t>(rng() % 3);  // tiny: min_cost and rounding
    const auto* price = snap->price(model);
    REQUIRE(price);
    auto ours = snap->charge(model, pricing::PricingSnapshot::token_cost(*price, p, c));
    auto r = db.exec("SELECT (cost_usd * 1000000)::bigint, (charge_usd * 1000000)::bigint,"
                     " cost_usd * 1000000 = round(cost_usd * 1000000), charge_usd * 1000000 = round(charge_usd * 1000000)"
                     " FROM tollgate_price($1, $2, $3)",
                     {model, std::to_string(p), std::to_string(c)});
    REQUIRE(r.rows() == 1);
    REQUIRE(r.boolean(0, 2));  // NUMERIC results are whole micro-dollars
    REQUIRE(r.boolean(0, 3));
    INFO(model << " prompt=" << p << " completion=" << c);
    CHECK(ours.cost == r.i64(0, 0));
    CHECK(ours.charge == r.i64(0, 1));
    ++compared;
  }
  CHECK(compared == 300);
  db.exec("DELETE FROM pricing_rules WHERE model_pattern LIKE $1", {ns + "/%"});
  db.exec("DELETE FROM model_prices WHERE model LIKE $1", {ns + "/%"});
}

// Issue 12 §3: every price component (cache read and write, reasoning, request fee, images, web
// searches) priced the same in C++ and in tollgate_price()'s nine-argument form, and the
// admission hold (worst_case_cost) above every charge of a request within its caps.
TEST_CASE("C++ charge == nine-argument tollgate_price() with every price component; the hold bounds it", "[pricing]") {
  sql::PgConn db(database_url());
  std::string ns = unique("pc");
  std::mt19937_64 rng(67890);
  db.exec("INSERT INTO pricing_rules (model_pattern, markup_percentage, min_cost_usd, priority)"
          " VALUES ($1, 33.3, 0.000002, 500)",
          {ns + "/*"});
  auto price_text = [&](std::uint64_t max) { return pricing::format_picos(static_cast<pricing::Picos>(rng() % max)); };
  std::vector<std::string> models;
  for (int m = 0; m < 8; ++m) {
    std::string model = ns + "/m-" + std::to_string(m);
    sql::upsert_model_price(db, model, price_text(50'000'000), price_text(80'000'000), 0);
    // Half the components NULL in turn (not priced separately), the others random; cache writes
    // and reasoning often dearer than the plain price, as providers price them.
    auto maybe = [&](int bit, std::uint64_t max) -> std::optional<std::string> {
      if ((m >> (bit % 3)) & 1) return std::nullopt;
      return price_text(max);
    };
    std::vector<std::optional<std::string>> comps{maybe(0, 20'000'000), maybe(1, 120'000'000), maybe(2, 150'000'000),
                                                  maybe(0, 5'000'000'000), maybe(1, 3'000'000'000),
                                                  maybe(2, 9'000'000'000)};
    auto sv = [](const std::optional<std::string>& o) -> std::optional<std::string_view> {
      if (!o) return std::nullopt;
      return std::string_view(*o);
    };
    const char* sql = "UPDATE model_prices SET input_cache_read_price = $2::numeric, input_cache_write_price = $3::numeric,"
                      " internal_reasoning_price = $4::numeric, request_price = $5::numeric, image_price = $6::numeric,"
                      " web_search_price = $7::numeric WHERE model = $1";
    db.exec(sql, {model, sv(comps[0]), sv(comps[1]), sv(comps[2]), sv(comps[3]), sv(comps[4]), sv(comps[5])});
    models.push_back(model);
  }
  auto snap = sql::load_pricing(db);
  int compared = 0;
  for (int i = 0; i < 400; ++i) {
    const auto& model = models[i % models.size()];
    const auto* price = snap->price(model);
    REQUIRE(price);
    pricing::Metered m;
    m.prompt = static_cast<std::int64_t>(rng() % 200'000);
    m.cached_read = m.prompt ? static_cast<std::int64_t>(rng() % (m.prompt + 1)) : 0;
    m.cache_write = static_cast<std::int64_t>(rng() % (m.prompt - m.cached_read + 1));
    m.completion = static_cast<std::int64_t>(rng() % 100'000);
    m.reasoning = static_cast<std::int64_t>(rng() % (m.completion + 1));
    m.requests = 1;
    if (i % 10 == 0) m = pricing::Metered{0, 0, 0, static_cast<std::int64_t>(rng() % 3), 0, 1, 0, 0};  // tiny
    auto ours = snap->charge(model, pricing::PricingSnapshot::cost(*price, m));
    auto r = db.exec("SELECT (cost_usd * 1000000)::bigint, (charge_usd * 1000000)::bigint"
                     " FROM tollgate_price($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                     {model, std::to_string(m.prompt), std::to_string(m.completion), std::to_string(m.cached_read),
                      std::to_string(m.cache_write), std::to_string(m.reasoning), std::to_string(m.requests), "0", "0"});
    REQUIRE(r.rows() == 1);
    INFO(model << " prompt=" << m.prompt << " cached=" << m.cached_read << " write=" << m.cache_write
               << " completion=" << m.completion << " reasoning=" << m.reasoning);
    CHECK(ours.cost == r.i64(0, 0));
    CHECK(ours.charge == r.i64(0, 1));
    // The hold of a request whose caps are exactly these counts bounds its charge.
    auto hold = snap->charge(model, pricing::PricingSnapshot::worst_case_cost(*price, m.prompt, m.completion));
    CHECK(ours.charge <= hold.charge);
    ++compared;
  }
  CHECK(compared == 400);
  db.exec("DELETE FROM pricing_rules WHERE model_pattern LIKE $1", {ns + "/%"});
  db.exec("DELETE FROM model_prices WHERE model LIKE $1", {ns + "/%"});
}

// Issue 13: image output tokens (a part of the completion) and generated images priced the same
// in C++ and in tollgate_price()'s eleven-argument form (the nine of 0008, then image_tokens,
// images_generated), over random prices with the image prices NULL, 0 or set, random counts and
// the edge cases (parts beyond their whole, negatives); the nine-argument form is the eleven
// with no image parts; the hold (worst_case_cost with images_max) bounds every charge.
TEST_CASE("C++ charge == eleven-argument tollgate_price() with image output and generated images", "[pricing]") {
  sql::PgConn db(database_url());
  std::string ns = unique("im");
  std::mt19937_64 rng(13013);
  db.exec("INSERT INTO pricing_rules (model_pattern, markup_percentage, min_cost_usd, priority)"
          " VALUES ($1, 17.5, 0.000001, 500)",
          {ns + "/*"});
  auto price_text = [&](std::uint64_t max) { return pricing::format_picos(static_cast<pricing::Picos>(rng() % max)); };
  std::vector<std::string> models;
  for (int m = 0; m < 12; ++m) {
    std::string model = ns + "/m-" + std::to_string(m);
    // Every fourth model prices no tokens at all (an Images-API-only model such as DALL-E 3).
    bool tokens = m % 4 != 3;
    sql::upsert_model_price(db, model, tokens ? price_text(50'000'000) : "0", tokens ? price_text(80'000'000) : "0", 0);
    // Image output: NULL, 0 or a random price (often dearer than completion); per generated
    // image: NULL or up to USD 0.2; reasoning and the request fee NULL or set, in turn.
    std::optional<std::string> image_output =
        m % 3 == 0 ? std::nullopt : std::optional<std::string>(m % 3 == 1 ? "0" : price_text(60'000'000));
    std::optional<std::string> per_image = m % 2 ? std::nullopt : std::optional<std::string>(price_text(200'000'000'000));
    std::optional<std::string> reasoning = (m / 2) % 2 ? std::nullopt : std::optional<std::string>(price_text(150'000'000));
    std::optional<std::string> request = (m / 4) % 2 ? std::nullopt : std::optional<std::string>(price_text(5'000'000'000));
    auto sv = [](const std::optional<std::string>& o) -> std::optional<std::string_view> {
      if (!o) return std::nullopt;
      return std::string_view(*o);
    };
    db.exec("UPDATE model_prices SET image_output_price = $2::numeric, image_generation_price = $3::numeric,"
            " internal_reasoning_price = $4::numeric, request_price = $5::numeric,"
            " input_cache_read_price = prompt_price / 10 WHERE model = $1",
            {model, sv(image_output), sv(per_image), sv(reasoning), sv(request)});
    models.push_back(model);
  }
  auto snap = sql::load_pricing(db);
  // The snapshot holds what SQL holds: the image prices as NULL (nullopt / 0), 0 or the value.
  {
    auto r = db.exec("SELECT model, image_output_price::text, coalesce(image_generation_price, 0)::text FROM model_prices"
                     " WHERE model LIKE $1",
                     {ns + "/%"});
    REQUIRE(r.rows() == 12);
    for (int i = 0; i < r.rows(); ++i) {
      const auto* price = snap->price(r.str(i, 0));
      REQUIRE(price);
      INFO(r.str(i, 0));
      if (r.is_null(i, 1)) CHECK_FALSE(price->image_output_per_token);
      else CHECK(price->image_output_per_token == pricing::parse_decimal(r.str(i, 1), 12));
      CHECK(price->per_generated_image == pricing::parse_decimal(r.str(i, 2), 12));
    }
  }
  auto pick = [&](std::int64_t lo, std::int64_t hi) { return std::uniform_int_distribution<std::int64_t>(lo, hi)(rng); };
  // Counts: prompt, completion, cached, cache_write, reasoning, requests, images, web_searches,
  // image_tokens, images_generated — random within their wholes, then edge cases.
  std::vector<std::array<std::int64_t, 10>> cases;
  for (int i = 0; i < 480; ++i) {
    std::int64_t prompt = pick(0, 200'000), completion = pick(0, 100'000);
    std::int64_t cached = pick(0, prompt), reasoning = pick(0, completion);
    cases.push_back({prompt, completion, cached, pick(0, prompt - cached), reasoning, 1, 0, 0,
                     pick(0, completion - reasoning), pick(0, 3) ? 0 : pick(1, 10)});
  }
  const std::int64_t big = wire_max_tokens;
  std::vector<std::array<std::int64_t, 10>> edges{
      {0, 0, 0, 0, 0, 0, 0, 0, 0, 0},             // nothing
      {0, 0, 0, 0, 0, 1, 0, 0, 0, 1},             // one image, no tokens (DALL-E)
      {12, 0, 0, 0, 0, 1, 0, 0, 0, 4},            // prompt and images
      {20, 1400, 0, 0, 0, 1, 0, 0, 1400, 0},      // all of the completion is image output
      {20, 1400, 0, 0, 10, 1, 0, 0, 1390, 0},     // reasoning + image = completion
      {20, 1400, 0, 0, 700, 1, 0, 0, 900, 0},     // image beyond what reasoning leaves: clamped to 700
      {20, 100, 0, 0, 0, 1, 0, 0, 5000, 0},       // image beyond the completion
      {20, 100, 0, 0, 200, 1, 0, 0, 50, 0},       // reasoning beyond the completion: no room for image
      {20, 100, 0, 0, 0, 1, 0, 0, -50, -3},       // negative image counts count 0
      {-5, -7, -1, -1, -1, -1, -1, -1, -1, -1},   // every count negative
      {0, 3, 0, 0, 0, 1, 0, 0, 1, 0},             // tiny: min_cost and rounding
      {big, big, big / 2, big / 4, big / 8, 1, 3, 2, big / 2, 1000},  // the largest usage wire reads
  };
  cases.insert(cases.end(), edges.begin(), edges.end());
  int compared = 0;
  for (std::size_t i = 0; i < cases.size(); ++i) {
    const auto& c = cases[i];
    for (std::size_t k = 0; k < models.size(); k += (i < 480 ? models.size() : 1)) {
      const auto& model = i < 480 ? models[i % models.size()] : models[k];
      const auto* price = snap->price(model);
      REQUIRE(price);
      pricing::Metered m{.prompt = c[0], .cached_read = c[2], .cache_write = c[3], .completion = c[1],
                         .reasoning = c[4], .requests = c[5], .images = c[6], .web_searches = c[7],
                         .image_output = c[8], .images_generated = c[9]};
      auto ours = snap->charge(model, pricing::PricingSnapshot::cost(*price, m));
      std::vector<std::string> t{model};
      for (auto v : c) t.push_back(std::to_string(v));
      auto r = db.exec("SELECT (cost_usd * 1000000)::bigint, (charge_usd * 1000000)::bigint,"
                       " cost_usd * 1000000 = round(cost_usd * 1000000)"
                       " FROM tollgate_price($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                       {t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8], t[9], t[10]});
      REQUIRE(r.rows() == 1);
      INFO(model << " case " << i << ": prompt=" << c[0] << " completion=" << c[1] << " cached=" << c[2]
                 << " write=" << c[3] << " reasoning=" << c[4] << " image_tokens=" << c[8]
                 << " images_generated=" << c[9]);
      CHECK(r.boolean(0, 2));
      CHECK(ours.cost == r.i64(0, 0));
      CHECK(ours.charge == r.i64(0, 1));
      if (c[8] == 0 && c[9] == 0) {  // the nine-argument form is the same request without image parts
        auto nine = db.exec("SELECT (cost_usd * 1000000)::bigint, (charge_usd * 1000000)::bigint"
                            " FROM tollgate_price($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                            {t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], t[8]});
        REQUIRE(nine.rows() == 1);
        CHECK(nine.i64(0, 0) == r.i64(0, 0));
        CHECK(nine.i64(0, 1) == r.i64(0, 1));
      }
      if (c[0] >= 0 && c[1] >= 0 && c[9] >= 0) {  // the hold of a request whose caps are these counts
        auto hold = snap->charge(model, pricing::PricingSnapshot::worst_case_cost(*price, c[0], c[1], c[9]));
        CHECK(ours.charge <= hold.charge);
      }
      ++compared;
    }
  }
  CHECK(compared == 480 + 12 * static_cast<int>(edges.size()));
  db.exec("DELETE FROM pricing_rules WHERE model_pattern LIKE $1", {ns + "/%"});
  db.exec("DELETE FROM model_prices WHERE model LIKE $1", {ns + "/%"});
}
