// The proxy's fixed-point pricing equals the same calculation in Postgres NUMERIC, to the unit.
#include "db_fixture.hpp"
#include "pricing/pricing.hpp"

#include <random>

using namespace tollgate;
using namespace tollgate::test;

TEST_CASE("C++ charge == tollgate_price() in NUMERIC over random prices, rules and tokens") {
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
TEST_CASE("C++ charge == nine-argument tollgate_price() with every price component; the hold bounds it") {
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
