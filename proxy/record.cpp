#include "proxy/record.hpp"

#include "routing/route_table.hpp"

#include <boost/json.hpp>
#include <spdlog/spdlog.h>
#include <fmt/format.h>

#include <algorithm>

namespace tollgate {

std::string request_metadata(const RequestCtx& ctx) {
  return fmt::format(R"({{"endpoint":"{}","stream":{},"max_tokens":{},"body_bytes":{}}})", ctx.upstream_path,
                     ctx.req.stream, ctx.req.max_tokens ? std::to_string(*ctx.req.max_tokens) : "null", ctx.body.size());
}

sql::Intent intent_of(const RequestCtx& ctx) {
  sql::Intent i;
  i.request_id = ctx.request_id;
  i.user_id = ctx.key->user_id;
  i.api_key_id = ctx.key->key_id;
  i.model = ctx.req.model;
  i.created_at_us = ctx.started_us;
  i.hold = ctx.hold;
  i.held_in_redis = ctx.admission.has_value();
  i.prompt_estimate = static_cast<std::int64_t>((ctx.body.size() + 3) / 4);
  i.request_metadata_json = request_metadata(ctx);
  return i;
}

namespace {
/// Which cost believable usage is charged from (phase 6): the upstream's reported `usage.cost`
/// (returned; the pricing rule is then applied to it) or the model's prices (nullopt: cost()
/// over every metered part). The reported cost, when the upstream sent one it believes
/// (Bill::upstream_cost), is charged
///  - with billing.cost_source = "upstream" (`cost_from_upstream`), whatever was used;
///  - for image output tokens (`image_tokens` > 0) of a model with no image_output_price.
///    Issue 13: image output is priced "at an image-output token price when priced, else
///    usage.cost". Without a reported cost they are priced as completion tokens (cost() takes
///    the completion price for them);
///  - for generated images (`images` > 0, Images API) of a model with no image_generation_price
///    and every token price 0, i.e. nothing in model_prices prices them (a request fee alone
///    does not). Without a reported cost they cost 0 (cost()).
/// In every other case the prices make the cost, and usage.cost is only recorded beside it.
std::optional<pricing::Picos> reported_cost_to_charge(const pricing::ModelPrice& p, const Bill& b,
                                                      bool cost_from_upstream) {
  if (!b.upstream_cost) return std::nullopt;
  if (cost_from_upstream) return b.upstream_cost;
  if (b.image_tokens > 0 && !p.image_output_per_token) return b.upstream_cost;
  const bool no_token_price = p.prompt_per_token == 0 && p.completion_per_token == 0 &&
                              p.cache_read_per_token.value_or(0) == 0 && p.cache_write_per_token.value_or(0) == 0 &&
                              p.reasoning_per_token.value_or(0) == 0 && p.image_output_per_token.value_or(0) == 0;
  if (b.images > 0 && p.per_generated_image == 0 && no_token_price) return b.upstream_cost;
  return std::nullopt;
}
}  // namespace

Bill bill(const Outcome& out, std::size_t body_bytes, pricing::Micros hold, const pricing::PricingSnapshot& prices,
          const std::string& model, bool cost_from_upstream) {
  Bill b;
  const bool ok_status = out.status >= 200 && out.status < 300;
  const bool usable = out.usage && !out.usage->implausible && !out.undelivered_output;
  // What the upstream said it charged, recorded beside our charge whichever one bills.
  if (out.usage && out.usage->cost_usd) b.upstream_cost = pricing::parse_decimal(*out.usage->cost_usd, 12);
  if (usable) {
    b.prompt_tokens = out.usage->prompt_tokens;
    b.completion_tokens = out.usage->completion_tokens;
    b.cached_tokens = out.usage->cached_tokens;
    b.cache_write_tokens = out.usage->cache_write_tokens;
    b.reasoning_tokens = out.usage->reasoning_tokens;
    b.image_tokens = out.usage->image_tokens;
    b.images = out.usage->images;
  } else if (out.delivered_chunks > 0 || (ok_status && out.delivered_bytes > 0)) {
    // No usage to believe (the stream ended without it, the client left before output it
    // counts reached it, or the upstream sent none, garbage, negative or absurd counts): bill
    // what was delivered — one token per content event, or ~4 bytes per token of a JSON body —
    // and the prompt as the upstream counted it when plausible, else at ~4 bytes per token.
    bool prompt_known = out.usage && !out.usage->implausible;
    b.prompt_tokens = prompt_known            ? out.usage->prompt_tokens
                      : out.prompt_reported ? *out.prompt_reported  // Anthropic's message_start
                                            : static_cast<std::int64_t>((body_bytes + 3) / 4);
    b.completion_tokens = out.delivered_chunks > 0 ? std::min(out.delivered_chunks, wire::Usage::max_tokens)
                                                   : std::min((out.delivered_bytes + 3) / 4, wire::Usage::max_tokens);
  }
  if (out.client_aborted) b.status = "client_aborted";
  else if (out.upstream_aborted) b.status = "upstream_aborted";
  else if (out.midstream_error) b.status = "upstream_error";
  else if (ok_status) b.status = usable ? "success" : "usage_missing";
  else b.status = "upstream_error";
  const pricing::ModelPrice* price = prices.price(model);
  // Only believable usage is ever charged at the cost it reports.
  std::optional<pricing::Picos> reported_cost =
      price && usable ? reported_cost_to_charge(*price, b, cost_from_upstream) : std::nullopt;
  if (price && (b.prompt_tokens > 0 || b.completion_tokens > 0 || b.images > 0 || reported_cost)) {
    // A request that is billed at all pays the model's request fee once.
    pricing::Metered m{.prompt = b.prompt_tokens,
                       .cached_read = b.cached_tokens,
                       .cache_write = b.cache_write_tokens,
                       .completion = b.completion_tokens,
                       .reasoning = b.reasoning_tokens,
                       .requests = 1,
                       .image_output = b.image_tokens,
                       .images_generated = b.images};
    pricing::Picos computed = pricing::PricingSnapshot::cost(*price, m);
    if (usable && b.upstream_cost) b.cost_drift = pricing::PricingSnapshot::drifts(computed, *b.upstream_cost);
    auto c = prices.charge(model, reported_cost ? *reported_cost : computed);
    b.cost = c.cost;
    b.charge = c.charge;
    // The hold bounds the charge: what the upstream delivered or reported beyond the worst case
    // admitted is the upstream's overrun, recorded and counted, never the customer's debt.
    if (b.charge > hold) {
      b.overrun = b.charge - hold;
      b.charge = hold;
    }
  }
  return b;
}

pricing::Micros quote(const RequestCtx& ctx) {
  return bill(ctx.out, ctx.body.size(), ctx.hold, *ctx.pricing, ctx.req.model, ctx.cost_from_upstream).charge;
}

namespace {
/// response_metadata's "attempts": the attempts that did not serve the request, in order.
std::string attempts_json(const std::vector<FailedAttempt>& failed) {
  std::string s = "[";
  for (const auto& a : failed) {
    if (s.size() > 1) s += ',';
    fmt::format_to(std::back_inserter(s), R"({{"upstream":{},"outcome":"{}")",
                   boost::json::serialize(boost::json::string(a.upstream)), a.outcome);
    if (a.status) fmt::format_to(std::back_inserter(s), R"(,"status":{})", a.status);
    s += '}';
  }
  return s + "]";
}
}  // namespace

std::optional<Recorded> record(App& app, const RequestCtx& ctx) {
  const Outcome& out = ctx.out;
  if (!out.reached_upstream) return std::nullopt;
  if (out.client_aborted) ++app.metrics.client_aborts;  // counted once, whichever write failed
  sql::UsageRecord r;
  r.request_id = ctx.request_id;
  r.user_id = ctx.key->user_id;
  r.api_key_id = ctx.key->key_id;
  r.model = ctx.req.model;
  r.created_at_us = ctx.started_us;
  r.upstream = ctx.upstream;
  Bill b = bill(out, ctx.body.size(), ctx.hold, *ctx.pricing, ctx.req.model, app.cfg.cost_from_upstream);
  r.prompt_tokens = b.prompt_tokens;
  r.completion_tokens = b.completion_tokens;
  r.cost = b.cost;
  r.charge = b.charge;
  r.status = b.status;
  r.cached_tokens = b.cached_tokens;
  r.cache_write_tokens = b.cache_write_tokens;
  r.reasoning_tokens = b.reasoning_tokens;
  r.image_tokens = b.image_tokens;
  r.images_generated = b.images;
  r.upstream_cost = b.upstream_cost;
  if (b.cost_drift) ++app.metrics.cost_drift;
  pricing::Micros overrun = b.overrun;
  if (r.status == "usage_missing") ++app.metrics.usage_missing;
  if (overrun > 0) {
    ++app.metrics.overruns;
    app.metrics.overrun_micros += static_cast<std::uint64_t>(overrun);
  }
  r.request_metadata_json = request_metadata(ctx);
  r.response_metadata_json = fmt::format(
      R"({{"status_code":{},"generation_id":{},"finish_reason":{},"delivered_chunks":{},"usage_reported":{},"usage_plausible":{},"hold_micros":{},"overrun_micros":{},"duration_us":{},"attempts":{}}})",
      out.status, out.generation_id ? boost::json::serialize(boost::json::string(*out.generation_id)) : "null",
      out.finish_reason ? boost::json::serialize(boost::json::string(*out.finish_reason)) : "null",
      out.delivered_chunks, out.usage.has_value(), out.usage && !out.usage->implausible, ctx.hold, overrun,
      unix_now_us() - ctx.started_us, attempts_json(ctx.failed_attempts));
  Recorded done{r.charge, r.prompt_tokens + r.completion_tokens};
  app.usage.append(std::move(r));
  return done;
}

void record_and_settle(Pipe& p, RequestCtx& ctx) noexcept {
  std::optional<Recorded> rec;
  try {
    rec = record(p.app, ctx);
  } catch (const std::exception& e) {
    // Only allocation can fail here; the intent stays open and recovery bills it.
    spdlog::error("{}: recording failed: {}", ctx.request_id, e.what());
    return;
  }
  p.app.intents.end(ctx.request_id);  // its usage record (if it reached the upstream) is journaled
  if (ctx.admission && p.tc.admission) {
    // Phase 7 off the request path, batched with other settles of this event loop. Counted in
    // active_requests until Redis answered (the Admitter's on_settled releases it), so a
    // graceful stop waits for it instead of leaving the hold to expire.
    ++p.app.metrics.active_requests;
    ratelimit::Settlement s;
    s.account = ctx.key->user_id;
    s.request_id = ctx.request_id;
    s.charge = rec ? rec->charge : 0;
    s.windows = std::move(ctx.admission->windows);
    s.actual_tokens = rec ? rec->tokens : 0;
    s.token_estimate = ctx.admission->token_estimate;
    p.tc.admission->settle(std::move(s));
  }
}

}  // namespace tollgate
