// The endpoint table and the handlers of its rows: the proxied generation endpoints (phases 3-8)
// and the model list.
#include "proxy/endpoints.hpp"

#include "proxy/connection.hpp"
#include "proxy/record.hpp"
#include "proxy/stripe_webhook.hpp"

#include <boost/asio/write.hpp>
#include <boost/beast/core/string.hpp>
#include <boost/beast/http/field.hpp>
#include <boost/json.hpp>
#include <boost/url/pct_string_view.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>

namespace tollgate {
namespace http = beast::http;
using net::awaitable;

Step fail(const RequestCtx& ctx, int status, std::string_view message, std::string_view type, std::string_view code,
          bool drain) {
  const Dialect& d = ctx.dialect ? *ctx.dialect : openai_dialect();
  return Step::answer(LocalReply{status, d.error_body(status, message, type, code), drain});
}

std::span<const EndpointRoute> endpoint_routes() {
  using enum AuthPolicy;
  using wire::Endpoint;
  static const std::array<EndpointRoute, 16> rows{{
      {http::verb::post, "/v1/chat/completions", api_key, proxy_generation, &openai_dialect(),
       Endpoint::chat_completions, "/chat/completions"},
      {http::verb::post, "/v1/completions", api_key, proxy_generation, &openai_dialect(), Endpoint::completions,
       "/completions"},
      {http::verb::post, "/v1/embeddings", api_key, proxy_generation, &openai_dialect(), Endpoint::embeddings,
       "/embeddings"},
      {http::verb::post, "/v1/responses", api_key, proxy_generation, &responses_dialect(), Endpoint::responses,
       "/responses"},
      {http::verb::post, "/v1/messages", api_key, proxy_generation, &messages_dialect(), Endpoint::messages,
       "/messages"},
      {http::verb::post, "/v1/images/generations", api_key, proxy_generation, &openai_dialect(),
       Endpoint::images_generations, "/images/generations"},
      {http::verb::get, "/v1/models", api_key, list_models, &openai_dialect(), {}, {}},
      {http::verb::get, "/v1/models/", api_key, retrieve_model, &openai_dialect(), {}, {}},
      // OpenRouter's self-service endpoints, under its /api/v1 base and under /v1 for clients
      // whose base URL ends in /v1 (proxy/self_service.cpp).
      {http::verb::get, "/api/v1/key", api_key, key_info, &openai_dialect(), {}, {}},
      {http::verb::get, "/api/v1/auth/key", api_key, key_info, &openai_dialect(), {}, {}},  // its older name
      {http::verb::get, "/api/v1/credits", api_key, credits_info, &openai_dialect(), {}, {}},
      {http::verb::get, "/api/v1/generation", api_key, generation_info, &openai_dialect(), {}, {}},
      {http::verb::get, "/v1/key", api_key, key_info, &openai_dialect(), {}, {}},
      {http::verb::get, "/v1/credits", api_key, credits_info, &openai_dialect(), {}, {}},
      {http::verb::get, "/v1/generation", api_key, generation_info, &openai_dialect(), {}, {}},
      // Authenticated by its Stripe-Signature, which the handler verifies (proxy/stripe_webhook.hpp).
      {http::verb::post, "/webhooks/stripe", none, stripe_webhook, &openai_dialect(), {}, {}},
  }};
  return rows;
}

Step route_request(RequestCtx& ctx, http::verb method, std::string_view method_name, std::string_view target) {
  target = target.substr(0, target.find('?'));
  if (target.size() > 1 && target.back() == '/') target.remove_suffix(1);
  const EndpointRoute* same_path = nullptr;
  for (const auto& row : endpoint_routes()) {
    // A path ending in '/' is a prefix: what follows it is the row's parameter (a model id).
    const bool prefix = row.path.back() == '/';
    if (prefix ? !(target.size() > row.path.size() && target.starts_with(row.path)) : row.path != target) continue;
    if (row.method != method) {
      same_path = &row;
      continue;
    }
    ctx.route = &row;
    ctx.dialect = row.dialect;
    ctx.endpoint = row.endpoint;
    ctx.upstream_path = row.upstream_path;
    if (prefix) {
      // Percent-decoded: client.models.retrieve("openai/gpt-4o") sends openai%2Fgpt-4o or not.
      auto decoded = boost::urls::make_pct_string_view(target.substr(row.path.size()));
      if (!decoded)
        return fail(ctx, 400, "The URL's path is not validly percent-encoded.", "invalid_request_error",
                    "invalid_url");
      ctx.path_param = decoded->decode();
    }
    return Step::next();
  }
  if (same_path) {
    ctx.dialect = same_path->dialect;
    return fail(ctx, 405, fmt::format("Use {} for {}.", std::string(http::to_string(same_path->method)), target),
                "invalid_request_error", "method_not_allowed");
  }
  return fail(ctx, 404, fmt::format("Unknown request URL: {} {}.", method_name, target.substr(0, 200)),
              "invalid_request_error", "unknown_url");
}

awaitable<Step> read_body(Pipe& p, RequestCtx& ctx) {
  const auto& h = p.parser.header();
  ctx.client_accept = std::string(h[http::field::accept]);
  for (std::string_view name : ctx.dialect->passthrough_headers()) {
    // One line per header; Beast's parser has refused CR, LF and NUL in values.
    auto [from, to] = h.equal_range(beast::string_view(name.data(), name.size()));
    for (auto f = from; f != to; ++f)
      fmt::format_to(std::back_inserter(ctx.passthrough), "{}: {}\r\n", name, std::string_view(f->value()));
  }
  if (beast::iequals(h[http::field::expect], "100-continue")) {
    static constexpr std::string_view cont = "HTTP/1.1 100 Continue\r\n\r\n";
    auto [ec, n] = co_await net::async_write(p.client, net::buffer(cont), tuple_awaitable);
    if (ec) co_return Step::hang_up();
  }
  auto body = co_await tollgate::read_body(p.client, p.buf, p.parser, p.app.cfg);
  switch (body.state) {
    case HeadRead::State::ok:
      ctx.body = std::move(p.parser.body());
      co_return Step::next();
    case HeadRead::State::rejected:
      ++p.app.metrics.requests_refused;
      co_return fail(ctx, static_cast<int>(body.rejection.status), body.rejection.message,
                     body.rejection.status == 503 ? "service_unavailable" : "invalid_request_error",
                     body.rejection.code, true);
    case HeadRead::State::timed_out:
      ++p.app.metrics.body_timeouts;
      ++p.app.metrics.requests_refused;
      co_return fail(ctx, 408, "The request body did not arrive in time.", "invalid_request_error",
                     "request_timeout", true);
    default:  // the client went away mid-body: nobody to answer
      co_return Step::hang_up();
  }
}

awaitable<Step> parse_request(Pipe& p, RequestCtx& ctx) {
  wire::RequestError err;
  auto parsed = ctx.dialect->parse_request(ctx.body, ctx.endpoint, err);
  if (!parsed) co_return fail(ctx, err.status, err.message, "invalid_request_error", err.code);
  ctx.req = std::move(*parsed);
  ctx.cost_from_upstream = p.app.cfg.cost_from_upstream;
  ctx.price = ctx.pricing->price(ctx.req.model);
  if (!ctx.price)
    co_return fail(ctx, 400, fmt::format("The model '{}' is not available on this gateway.", ctx.req.model),
                   "invalid_request_error", "model_not_found");
  co_return Step::next();
}

awaitable<Step> route_model(Pipe& p, RequestCtx& ctx) {
  ctx.routes = p.app.routes.load();
  // Room beyond max_attempts for candidates skipped because their circuit is open.
  ctx.candidates = ctx.routes->select(ctx.req.model, p.tc.rng, p.app.cfg.routing.max_attempts + 4);
  if (ctx.candidates.empty())
    co_return fail(ctx, 404, fmt::format("No upstream serves the model '{}' on this gateway.", ctx.req.model),
                   "invalid_request_error", "model_not_found");
  co_return Step::next();
}

awaitable<Step> proxy_generation(Pipe& p, RequestCtx& ctx) {
  static constexpr std::array<Phase, 4> before_forward{read_body, parse_request, route_model, admit};
  for (Phase phase : before_forward) {
    Step s = co_await phase(p, ctx);
    if (s.answered()) co_return s;
  }
  p.leave_queue();                      // forwarding: the request has left this event loop's queue
  p.app.intents.begin(intent_of(ctx));  // crash recovery: releases its hold, or records it if sent
  Step s = Step::next();
  try {
    s = co_await forward(p, ctx);
  } catch (const std::exception& e) {
    // Whatever broke, phases 6-8 still run: a request that reached the upstream is recorded.
    spdlog::error("{}: forwarding failed: {}", ctx.request_id, e.what());
    ctx.out.upstream_aborted = ctx.out.reached_upstream;
    ctx.out.response_complete = false;
    if (!ctx.out.client_started && !ctx.out.client_aborted)
      s = fail(ctx, 502, "The upstream request failed.", "upstream_error", "bad_gateway");
  }
  record_and_settle(p, ctx);
  co_return s;
}

}  // namespace tollgate
