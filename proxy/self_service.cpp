// OpenRouter's self-service endpoints, answered from Postgres with the caller's own key
// (reference/WIRE.md "OpenRouter self-service endpoints"): GET /api/v1/key, /api/v1/credits,
// /api/v1/generation?id=… and their /v1/… aliases. Amounts are JSON numbers in USD with at most
// 6 decimals, written from exact credit units (never through a double), and always what the
// customer was charged: the operator's cost never appears here.
#include "proxy/self_service.hpp"

#include "proxy/app.hpp"
#include "proxy/endpoints.hpp"

#include <boost/beast/http.hpp>
#include <boost/json.hpp>
#include <boost/url/parse.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <exception>
#include <initializer_list>
#include <utility>

namespace tollgate {
namespace {

/// A JSON object written from (name, JSON text) members, in order.
std::string object_of(std::initializer_list<std::pair<std::string_view, std::string>> members) {
  std::string out = "{";
  for (const auto& [name, value] : members) {
    if (out.size() > 1) out += ',';
    out += boost::json::serialize(boost::json::string(name));
    out += ':';
    out += value;
  }
  out += '}';
  return out;
}

std::string json_str(std::string_view s) { return boost::json::serialize(boost::json::string(s)); }
std::string json_opt(const std::optional<std::string>& s) { return s ? json_str(*s) : "null"; }
std::string json_bool(bool b) { return b ? "true" : "false"; }

}  // namespace

std::string usd_number(pricing::Micros v) {
  std::string s = pricing::format_micros(v);  // "12.000340": always 6 fraction digits
  if (s.find('.') == std::string::npos) return s;
  while (s.back() == '0') s.pop_back();
  if (s.back() == '.') s.pop_back();
  return s == "-0" ? "0" : s;
}

std::string rate_limit_json(const keys::KeyRecord& key) {
  // Both the key's and the account's windows apply (ratelimit/admission.cpp): per interval the
  // stricter nonzero one binds. Reported: the shortest interval that has a limit.
  auto binding = [](std::int64_t k, std::int64_t a) {
    if (k <= 0) return std::max<std::int64_t>(a, 0);
    return a > 0 ? std::min(k, a) : k;
  };
  const std::int64_t per[] = {binding(key.key_limits.requests_per_minute, key.account_limits.requests_per_minute),
                              binding(key.key_limits.requests_per_hour, key.account_limits.requests_per_hour),
                              binding(key.key_limits.requests_per_day, key.account_limits.requests_per_day)};
  static constexpr std::string_view interval[] = {"1m", "1h", "1d"};
  static constexpr std::string_view word[] = {"minute", "hour", "day"};
  std::string note;
  int first = -1;
  for (int i = 0; i < 3; ++i) {
    if (per[i] == 0) continue;
    if (first < 0) first = i;
    note += fmt::format("{}{} requests per {}", note.empty() ? "" : ", ", per[i], word[i]);
  }
  if (first < 0)
    return object_of({{"requests", "-1"}, {"interval", json_str("1m")}, {"note", json_str("No request rate limit.")}});
  note = fmt::format("This key may make {} (the stricter of the key's and the account's limits).", note);
  return object_of({{"requests", std::to_string(per[first])},
                    {"interval", json_str(interval[first])},
                    {"note", json_str(note)}});
}

std::string key_body(const keys::KeyRecord& key, const sql::KeyUsage& u) {
  std::optional<pricing::Micros> remaining;
  if (u.limit) remaining = std::max<pricing::Micros>(*u.limit - u.usage_in_period, 0);
  auto opt_usd = [](std::optional<pricing::Micros> v) { return v ? usd_number(*v) : std::string("null"); };
  std::string data = object_of({
      {"label", json_str(u.label)},
      {"limit", opt_usd(u.limit)},
      {"limit_remaining", opt_usd(remaining)},
      {"limit_reset", u.limit_reset == "never" ? "null" : json_str(u.limit_reset)},
      {"usage", usd_number(u.usage)},
      {"usage_daily", usd_number(u.usage_daily)},
      {"usage_weekly", usd_number(u.usage_weekly)},
      {"usage_monthly", usd_number(u.usage_monthly)},
      {"is_free_tier", "false"},
      {"expires_at", json_opt(u.expires_at)},
      {"rate_limit", rate_limit_json(key)},
  });
  return object_of({{"data", std::move(data)}});
}

std::string credits_body(const sql::AccountCredits& c) {
  return object_of(
      {{"data", object_of({{"total_credits", usd_number(c.total_credits)}, {"total_usage", usd_number(c.total_usage)}})}});
}

std::string generation_body(const sql::Generation& g) {
  auto ms = g.duration_ms ? std::to_string(*g.duration_ms) : std::string("null");
  std::string data = object_of({
      {"id", json_str(g.id)},
      {"request_id", json_str(g.request_id)},
      {"model", json_str(g.model)},
      {"upstream", json_opt(g.upstream)},
      {"provider_name", json_opt(g.upstream)},
      {"created_at", json_str(g.created_at)},
      {"total_cost", usd_number(g.total_cost)},
      {"usage", usd_number(g.total_cost)},
      {"tokens_prompt", std::to_string(g.tokens_prompt)},
      {"tokens_completion", std::to_string(g.tokens_completion)},
      {"native_tokens_prompt", std::to_string(g.tokens_prompt)},
      {"native_tokens_completion", std::to_string(g.tokens_completion)},
      {"native_tokens_cached", std::to_string(g.native_tokens_cached)},
      {"native_tokens_reasoning", std::to_string(g.native_tokens_reasoning)},
      {"streamed", json_bool(g.streamed)},
      {"cancelled", json_bool(g.cancelled)},
      {"finish_reason", json_opt(g.finish_reason)},
      {"latency", ms},
      {"generation_time", ms},
  });
  return object_of({{"data", std::move(data)}});
}

namespace {

Step unavailable(const RequestCtx& ctx) {
  return fail(ctx, 503, "Account data is temporarily unavailable; retry shortly.", "service_unavailable",
              "accounts_unavailable");
}

/// The first `name` query parameter of the request target, percent-decoded; nullopt when absent.
std::optional<std::string> query_param(const Pipe& p, std::string_view name) {
  auto target = p.parser.header().target();
  auto url = boost::urls::parse_origin_form(std::string_view(target.data(), target.size()));
  if (!url) return std::nullopt;  // the request parser accepted it; a malformed query counts as absent
  auto params = url->params();
  auto it = params.find(name);
  if (it == params.end()) return std::nullopt;
  return std::string((*it).value);
}

}  // namespace

// Each handler awaits its AccountSource call in a try block and answers after it (no co_await
// in a handler; no lambda passed to a coroutine: GCC 12 destroys such arguments twice).

net::awaitable<Step> key_info(Pipe& p, RequestCtx& ctx) {
  if (!p.app.accounts) co_return unavailable(ctx);
  std::optional<sql::KeyUsage> u;
  bool failed = false;
  try {
    u = co_await p.app.accounts->key_usage(ctx.key->key_id, ctx.key->user_id);
  } catch (const std::exception& e) {
    spdlog::warn("{}: key usage lookup failed: {}", ctx.request_id, e.what());
    failed = true;
  }
  if (failed) co_return unavailable(ctx);
  // Deleted since it was authenticated (the key cache may outlive the row for a moment).
  if (!u) co_return fail(ctx, 401, "This API key does not exist.", "invalid_request_error", "invalid_api_key");
  co_return Step::answer(LocalReply{200, key_body(*ctx.key, *u)});
}

net::awaitable<Step> credits_info(Pipe& p, RequestCtx& ctx) {
  if (!p.app.accounts) co_return unavailable(ctx);
  sql::AccountCredits c;
  bool failed = false;
  try {
    c = co_await p.app.accounts->credits(ctx.key->user_id);
  } catch (const std::exception& e) {
    spdlog::warn("{}: credits lookup failed: {}", ctx.request_id, e.what());
    failed = true;
  }
  if (failed) co_return unavailable(ctx);
  co_return Step::answer(LocalReply{200, credits_body(c)});
}

net::awaitable<Step> generation_info(Pipe& p, RequestCtx& ctx) {
  auto id = query_param(p, "id");
  if (!id || id->empty())
    co_return fail(ctx, 400, "Pass the generation's id: GET /api/v1/generation?id=<request id or generation id>.",
                   "invalid_request_error", "missing_id");
  std::optional<sql::Generation> g;
  if (id->size() <= 256) {  // no id is longer: not found without asking
    if (!p.app.accounts) co_return unavailable(ctx);
    bool failed = false;
    try {
      g = co_await p.app.accounts->generation(ctx.key->user_id, *id);
    } catch (const std::exception& e) {
      spdlog::warn("{}: generation lookup failed: {}", ctx.request_id, e.what());
      failed = true;
    }
    if (failed) co_return unavailable(ctx);
  }
  // Another account's, unknown, or not committed yet (the usage writer batches): 404, as
  // OpenRouter answers for a few seconds after a request.
  if (!g)
    co_return fail(ctx, 404, fmt::format("Generation {} not found.", id->substr(0, 128)), "invalid_request_error",
                   "generation_not_found");
  co_return Step::answer(LocalReply{200, generation_body(*g)});
}

}  // namespace tollgate
