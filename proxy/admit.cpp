// Phase 4: admit. The worst case of the request is held on the balance and counted against
// every sliding window, in one Redis round trip (AdmissionPort); with admission off or failing
// open, the balance is read from the key source instead.
#include "proxy/phase.hpp"
#include "ratelimit/spend_period.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>

namespace tollgate {
using net::awaitable;

namespace {

/// OpenAI's x-ratelimit-* trio for the tightest request window and the tightest token window.
void set_ratelimit_headers(RequestCtx& ctx, const std::vector<ratelimit::Window>& windows) {
  for (bool tokens : {false, true}) {
    const ratelimit::Window* tight = nullptr;
    for (const auto& w : windows)
      if (!w.spend && w.tokens == tokens && (!tight || w.remaining < tight->remaining)) tight = &w;
    if (!tight) continue;
    std::string kind = tokens ? "tokens" : "requests";
    ctx.headers.emplace_back("x-ratelimit-limit-" + kind, std::to_string(tight->limit));
    ctx.headers.emplace_back("x-ratelimit-remaining-" + kind, std::to_string(tight->remaining));
    ctx.headers.emplace_back("x-ratelimit-reset-" + kind, ratelimit::format_reset(tight->reset_ms));
  }
}

/// The tighter of the key's and the account's max_tokens_per_request (0 = none).
std::int64_t max_tokens_limit(const keys::KeyRecord& k) {
  std::int64_t a = k.key_limits.max_tokens_per_request, b = k.account_limits.max_tokens_per_request;
  if (a <= 0) return std::max<std::int64_t>(b, 0);
  return b > 0 ? std::min(a, b) : a;
}

/// The most output tokens one generated image is metered (Images API): above the largest OpenAI
/// lists for gpt-image-1 (6,240 at high quality, 1024×1536).
constexpr std::int64_t image_output_tokens_max = 8192;

/// 402 for a spend limit the request's worst case does not fit in (OpenRouter answers a key over
/// its budget with 402 too): names the limit and when it resets.
Step spend_limit_reached(App& app, RequestCtx& ctx, const ratelimit::Window& w) {
  ++app.metrics.spend_limit_refusals;
  // The operator's spend_limit.reached alert: queued in memory (one per limit and period), put
  // in the outbox by the alert task, off the request path.
  app.alert_queue.push({w.spend_scope, w.spend_owner, ctx.key->user_id, w.limit, w.period_start_ms, w.period_end_ms});
  const std::int64_t left = std::max<std::int64_t>(w.remaining, 0);
  std::string resets = w.period_end_ms == INT64_MAX
                           ? std::string("it does not reset")
                           : "it resets at " + ratelimit::iso8601_utc(w.period_end_ms);
  return fail(ctx, 402,
              fmt::format("This {} has reached its spend limit of ${}: ${} is left and this request's worst case is "
                          "${}; {}.",
                          w.spend_scope == "key" ? "API key" : "account", pricing::format_micros(w.limit),
                          pricing::format_micros(left), pricing::format_micros(w.cost), resets),
              "insufficient_quota", w.spend_scope + "_spend_limit_reached");
}

}  // namespace

/// The worst case — every body byte a prompt token (an upper bound for text) at the dearest of the
/// prompt, cache-read and cache-write prices, plus max_tokens (or the cap tollgate sends) of
/// completion at the dearer of completion and reasoning, plus the request fee — priced with the
/// model's pricing rule. An Images API request's completion is its `n` images'
/// image_output_tokens_max output tokens each, plus n per-image prices.
awaitable<Step> admit(Pipe& p, RequestCtx& ctx) {
  App& app = p.app;
  std::int64_t per_request = max_tokens_limit(*ctx.key);
  if (per_request > 0 && ctx.req.max_tokens && *ctx.req.max_tokens > per_request)
    co_return fail(ctx, 400,
                   fmt::format("max_tokens is {}, above this key's limit of {} tokens per request.",
                               *ctx.req.max_tokens, per_request),
                   "invalid_request_error", "max_tokens_exceeded");
  ctx.default_cap = per_request > 0 ? std::min(per_request, app.cfg.default_max_tokens) : app.cfg.default_max_tokens;
  std::int64_t prompt_max = static_cast<std::int64_t>(ctx.body.size()) / app.cfg.prompt_bytes_per_token + 1;
  std::int64_t completion_max =
      ctx.endpoint == wire::Endpoint::embeddings ? 0 : ctx.req.max_tokens.value_or(ctx.default_cap);
  std::int64_t images_max = 0;
  if (ctx.endpoint == wire::Endpoint::images_generations) {
    // n images, each at most image_output_tokens_max output tokens and one per-image price.
    images_max = ctx.req.n;
    completion_max = ctx.req.n * image_output_tokens_max;
  }
  pricing::Micros worst =
      ctx.pricing->charge(ctx.req.model,
                          pricing::PricingSnapshot::worst_case_cost(*ctx.price, prompt_max, completion_max, images_max))
          .charge;
  ctx.hold = worst;  // the charge never exceeds it (record.cpp)
  auto insufficient = [&](pricing::Micros available) {
    ++app.metrics.insufficient_balance;
    return fail(ctx, 402,
                fmt::format("This request requires more credits, or fewer max_tokens: its worst case costs ${} and "
                            "${} is available.",
                            pricing::format_micros(worst), pricing::format_micros(std::max<pricing::Micros>(available, 0))),
                "insufficient_quota", "insufficient_credits");
  };

  if (p.tc.admission) {
    auto a = co_await p.tc.admission->admit(*ctx.key, ctx.request_id, worst, prompt_max + completion_max);
    set_ratelimit_headers(ctx, a.windows);
    switch (a.verdict) {
      case ratelimit::Verdict::admitted:
        ++app.metrics.admission_ok;
        ctx.admission = std::move(a);
        co_return Step::next();
      case ratelimit::Verdict::rate_limited: {
        const auto& w = a.windows.at(static_cast<std::size_t>(a.limited));
        if (w.spend) co_return spend_limit_reached(app, ctx, w);
        ++app.metrics.admission_over_limit;
        std::int64_t retry_s = std::max<std::int64_t>(1, (a.retry_after_ms + 999) / 1000);
        ctx.headers.emplace_back("retry-after", std::to_string(retry_s));
        co_return fail(ctx, 429,
                       fmt::format("Rate limit reached: {} (limit {}). Please try again in {}.", w.name, w.limit,
                                   ratelimit::format_reset(a.retry_after_ms)),
                       w.tokens ? "tokens" : "requests", w.name);
      }
      case ratelimit::Verdict::insufficient_balance:
        co_return insufficient(a.available);
      case ratelimit::Verdict::unavailable:
        ++app.metrics.admission_errors;
        if (app.cfg.admission.failure_mode == ratelimit::FailureMode::fail_closed)
          co_return fail(ctx, 503, "Rate limiting is temporarily unavailable; retry shortly.", "service_unavailable",
                         "rate_limiter_unavailable");
        ++app.metrics.failure_mode_allowed;  // fail open: no rate limits, balance from Postgres
        break;
    }
  }

  std::optional<pricing::Micros> balance;
  bool failed = false;
  try {
    balance = co_await app.key_source.balance(ctx.key->user_id);
  } catch (const std::exception& e) {
    spdlog::error("{}: balance check failed: {}", ctx.request_id, e.what());
    failed = true;
  }
  if (failed)
    co_return fail(ctx, 503, "Billing is temporarily unavailable; retry shortly.", "service_unavailable",
                   "billing_unavailable");
  if (!balance || *balance + ctx.key->overdraft_micros < worst)
    co_return insufficient(balance.value_or(0) + ctx.key->overdraft_micros);
  co_return Step::next();
}

}  // namespace tollgate
