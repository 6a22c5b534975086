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
