#include "proxy/stripe_webhook.hpp"

#include "proxy/stripe_event.hpp"
#include "proxy/stripe_signature.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <chrono>

namespace tollgate {
using net::awaitable;

namespace {

std::string_view code_of(stripe::SignatureError e) {
  switch (e) {
    case stripe::SignatureError::timestamp_too_old:
    case stripe::SignatureError::timestamp_in_future: return "timestamp_out_of_tolerance";
    case stripe::SignatureError::missing_header: return "missing_signature";
    default: return "invalid_signature";
  }
}

/// No answer from the server (it is down, or the connection was cut): not an error of the
/// statement. libpq sets no SQLSTATE then; 08xxx are connection exceptions, 57P0x shutdowns.
bool connection_lost(const sql::PgError& e) {
  return e.sqlstate.empty() || e.sqlstate.starts_with("08") || e.sqlstate.starts_with("57P0");
}

}  // namespace

awaitable<Step> stripe_webhook(Pipe& p, RequestCtx& ctx) {
  const Config& cfg = p.app.cfg;
  const auto& h = p.parser.header();
  if (cfg.stripe_webhook_secrets.empty())
    co_return fail(ctx, 404, "Unknown request URL: POST /webhooks/stripe.", "invalid_request_error", "unknown_url",
                   true);
  // The route's own body limit, below the server's: Content-Length is checked here (Beast checked
  // it against the server's limit with the head), a chunked body as it comes.
  if (auto length = p.parser.content_length(); length && *length > cfg.stripe_max_body_bytes)
    co_return fail(ctx, 413, fmt::format("The request body exceeds {} bytes.", cfg.stripe_max_body_bytes),
                   "invalid_request_error", "request_too_large", true);
  p.parser.limit_body(cfg.stripe_max_body_bytes);
  if (Step s = co_await read_body(p, ctx); s.answered()) co_return s;

  std::optional<std::string_view> signature;
  if (auto v = h["Stripe-Signature"]; !v.empty()) signature = std::string_view(v.data(), v.size());
  const std::int64_t now =
      std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  auto verdict = stripe::verify_signature(signature, ctx.body, cfg.stripe_webhook_secrets, now, cfg.stripe_tolerance);
  if (verdict != stripe::SignatureError::none) {
    ++p.app.metrics.stripe_refused;
    spdlog::warn("{}: stripe webhook refused: {}", ctx.request_id, stripe::describe(verdict));
    co_return fail(ctx, 400, stripe::describe(verdict), "invalid_request_error", code_of(verdict));
  }
  std::string why;
  auto event = stripe::interpret_event(ctx.body, why);
  if (!event) {
    ++p.app.metrics.stripe_refused;
    spdlog::warn("{}: stripe webhook refused: {}", ctx.request_id, why);
    co_return fail(ctx, 400, why, "invalid_request_error", "invalid_json");
  }

  // A named lambda (GCC 12 and lambda temporaries in co_await, see PgKeySource).
  auto apply = [ev = *event, payload = std::move(ctx.body)](sql::PgConn& db) {
    const std::string created = std::to_string(ev.created);  // Unix s
    const std::string amount = pricing::format_micros(ev.amount);
    const std::string charge_amount = pricing::format_micros(ev.charge_amount);
    auto r = db.exec(
        "SELECT tollgate_stripe_event($1, $2, CASE WHEN $3::bigint > 0 THEN to_timestamp($3::bigint) END, $4, $5, $6,"
        " $7, $8::numeric, $9::numeric, $10, $11, $12::jsonb)",
        {ev.id, ev.type, created, stripe::to_string(ev.action), ev.outcome, ev.note, ev.account_ref, amount,
         charge_amount, ev.object_id, ev.payment_intent, payload});
    return r.str(0, 0);
  };
  std::string outcome, failure;
  // A lookup thread whose connection a Postgres restart broke fails once, then reconnects; the
  // next attempt may land on another such thread. Retrying is safe: the function is idempotent
  // on the event id (an attempt that committed before its answer was lost returns 'duplicate').
  for (int attempt = 0; attempt <= cfg.lookup_threads && outcome.empty(); ++attempt) {
    try {
      outcome = co_await p.app.lookups.run(apply);
    } catch (const sql::PgError& e) {
      failure = e.what();
      if (!connection_lost(e)) break;
    } catch (const std::exception& e) {
      failure = e.what();
      break;
    }
  }
  if (outcome.empty()) {
    ++p.app.metrics.stripe_failed;
    spdlog::error("{}: stripe event {} ({}) not applied, answering 503 so that Stripe retries: {}", ctx.request_id,
                  event->id, event->type, failure);
    ctx.headers.emplace_back("retry-after", "60");
    co_return fail(ctx, 503, "The event could not be recorded now; retry later.", "service_unavailable",
                   "database_unavailable");
  }
  ++p.app.metrics.stripe_applied;
  spdlog::info("{}: stripe event {} ({}): {}", ctx.request_id, event->id, event->type, outcome);
  co_return Step::answer(LocalReply{200, R"({"received":true})"});
}

}  // namespace tollgate
