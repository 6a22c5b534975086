// GET /v1/models and GET /v1/models/{id}: the models a customer can use here and what they
// pay. OpenAI's fields (id, object, created, owned_by) and OpenRouter's (name, context_length,
// pricing: decimal strings in USD per unit, reference/WIRE.md "OpenRouter /api/v1/models"),
// the prices being the customer's, after the model's pricing rule.
#include "proxy/endpoints.hpp"

#include "proxy/request.hpp"

#include <boost/json.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <vector>

namespace tollgate {
namespace {

/// `picos` (USD 1e-12 per unit) marked up by the rule for `model`, as an exact decimal USD
/// string ("0.0000025"). The per-unit price has no minimum: min_cost_usd applies per request.
std::string customer_price(const pricing::PricingSnapshot& prices, std::string_view model, pricing::Picos picos) {
  const pricing::PricingRule* rule = prices.rule_for(model);
  __int128 factor = std::max<__int128>(10000 + (rule ? rule->markup_centipercent : 0), 0);
  // In units of 1e-16 USD: picos × (10000 + markup in 0.01 %) is exact.
  __int128 units = static_cast<__int128>(std::max<pricing::Picos>(picos, 0)) * factor;
  constexpr __int128 scale = 10'000'000'000'000'000;  // 10^16
  std::string whole;
  for (__int128 w = units / scale; w > 0 || whole.empty(); w /= 10) {
    whole.insert(whole.begin(), static_cast<char>('0' + static_cast<int>(w % 10)));
    if (w == 0) break;
  }
  std::string frac(16, '0');
  __int128 f = units % scale;
  for (int i = 15; i >= 0; --i, f /= 10) frac[static_cast<std::size_t>(i)] = static_cast<char>('0' + static_cast<int>(f % 10));
  while (!frac.empty() && frac.back() == '0') frac.pop_back();
  return frac.empty() ? whole : whole + "." + frac;
}

/// One model entry (see the file comment).
boost::json::object model_entry(const pricing::PricingSnapshot& prices, const std::string& id,
                                const pricing::ModelPrice& p) {
  namespace json = boost::json;
  auto slash = id.find('/');
  auto price = [&](pricing::Picos v) { return json::value(customer_price(prices, id, v)); };
  json::object pricing{
      {"prompt", price(p.prompt_per_token)},
      {"completion", price(p.completion_per_token)},
      {"request", price(p.per_request)},
      {"image", price(p.per_image)},
      {"web_search", price(p.per_web_search)},
      {"internal_reasoning", price(p.reasoning_per_token.value_or(p.completion_per_token))},
      {"input_cache_read", price(p.cache_read_per_token.value_or(p.prompt_per_token))},
      {"input_cache_write", price(p.cache_write_per_token.value_or(p.prompt_per_token))},
      {"image_output", price(p.image_output_per_token.value_or(p.completion_per_token))},
      // Not an OpenRouter key: the Images API's price per generated image.
      {"image_generation", price(p.per_generated_image)},
  };
  json::object m{
      {"id", id},
      {"object", "model"},
      {"created", p.created_at_s},
      {"owned_by", slash == std::string::npos ? std::string("tollgate") : id.substr(0, slash)},
      {"name", p.name.empty() ? id : p.name},
      {"context_length", p.context_length > 0 ? json::value(p.context_length) : json::value(nullptr)},
      {"pricing", std::move(pricing)},
  };
  return m;
}

/// A model is listed when it has a price and a route: a customer can use it.
bool listed(const RequestCtx& ctx, const routing::RouteTable& routes, const std::string& id) {
  return ctx.pricing->price(id) && routes.serves(id);
}

}  // namespace

net::awaitable<Step> list_models(Pipe& p, RequestCtx& ctx) {
  auto routes = p.app.routes.load();
  std::vector<const std::pair<const std::string, pricing::ModelPrice>*> rows;
  for (const auto& row : ctx.pricing->prices())
    if (listed(ctx, *routes, row.first)) rows.push_back(&row);
  std::sort(rows.begin(), rows.end(), [](auto* a, auto* b) { return a->first < b->first; });
  boost::json::array data;
  data.reserve(rows.size());
  for (auto* row : rows) data.push_back(model_entry(*ctx.pricing, row->first, row->second));
  boost::json::object list{{"object", "list"}, {"data", std::move(data)}};
  co_return Step::answer(LocalReply{200, boost::json::serialize(list)});
}

net::awaitable<Step> retrieve_model(Pipe& p, RequestCtx& ctx) {
  auto routes = p.app.routes.load();
  const pricing::ModelPrice* price = ctx.pricing->price(ctx.path_param);
  if (!price || !routes->serves(ctx.path_param))
    co_return fail(ctx, 404, fmt::format("The model '{}' does not exist on this gateway.", ctx.path_param.substr(0, 256)),
                   "invalid_request_error", "model_not_found");
  co_return Step::answer(LocalReply{200, boost::json::serialize(model_entry(*ctx.pricing, ctx.path_param, *price))});
}

}  // namespace tollgate
