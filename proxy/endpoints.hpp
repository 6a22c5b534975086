#pragma once
// The endpoint table: method, path, authentication policy, API dialect and handler of every
// URL tollgate serves on its client listener. A new endpoint is one row here plus its handler
// (a function of the phase shape, proxy/phase.hpp). The Stripe webhook (authenticated by its
// signature) becomes a row with its own policy; OpenRouter's /api/v1/* self-service endpoints
// are rows authenticated by the caller's own key (proxy/self_service.cpp).
#include "proxy/phase.hpp"

#include <boost/beast/http/verb.hpp>

#include <span>
#include <string_view>

namespace tollgate {

/// Who may call an endpoint, checked before its handler runs (and before any body is read).
enum class AuthPolicy {
  api_key,  ///< a tollgate API key (Authorization: Bearer tg_…): phase 2, authenticate()
  none,     ///< anyone (the handler authenticates, or nothing needs it)
};

struct EndpointRoute {
  boost::beast::http::verb method;
  /// Without query or trailing slash, e.g. "/v1/chat/completions"; one ending in '/' matches
  /// any longer path beginning with it, the rest being ctx.path_param ("/v1/models/{id}").
  std::string_view path;
  AuthPolicy auth;
  Phase handler;                   ///< runs after authentication; answers or relays
  const Dialect* dialect;          ///< the API the caller speaks (request parsing, errors)
  wire::Endpoint endpoint = wire::Endpoint::chat_completions;  ///< for proxied endpoints
  std::string_view upstream_path;  ///< appended to the upstream's base path ("" for local ones)
};

/// Every row, in match order.
std::span<const EndpointRoute> endpoint_routes();

/// The row for `path` (query stripped, one trailing slash ignored) and `method`. When the path
/// is known but the method is not, answers 405 naming the allowed method; an unknown path 404.
/// Sets ctx.route, ctx.dialect, ctx.endpoint and ctx.upstream_path.
Step route_request(RequestCtx& ctx, boost::beast::http::verb method, std::string_view method_name,
                   std::string_view target);

/// The handler of the proxied generation endpoints: read the body, parse, admit, forward, then
/// record and settle.
net::awaitable<Step> proxy_generation(Pipe& p, RequestCtx& ctx);
/// GET /v1/models: the models that have a price and a route (OpenAI's list shape, with
/// OpenRouter's name, context_length and pricing: proxy/models.cpp).
net::awaitable<Step> list_models(Pipe& p, RequestCtx& ctx);
/// GET /v1/models/{id}: one entry of the list, or a 404.
net::awaitable<Step> retrieve_model(Pipe& p, RequestCtx& ctx);
/// GET /api/v1/key (also /api/v1/auth/key, /v1/key): the caller's key, its spend limit and its
/// charges (proxy/self_service.hpp key_body); 503 when Postgres cannot answer.
net::awaitable<Step> key_info(Pipe& p, RequestCtx& ctx);
/// GET /api/v1/credits (also /v1/credits): the key's account's total credits and usage.
net::awaitable<Step> credits_info(Pipe& p, RequestCtx& ctx);
/// GET /api/v1/generation?id=… (also /v1/generation): the account's usage row with that request
/// id or generation id; 400 without an id, 404 when it is not (yet) there or another account's.
net::awaitable<Step> generation_info(Pipe& p, RequestCtx& ctx);

}  // namespace tollgate
