// One client connection and the request path through it. Read top to bottom:
//   run_session      — the connection loop (phase 1: parse & limit)
//   handle_request   — routing, phase 2 (authenticate), 3 (read body), 4 (admit)
//   forward          — phase 5 (proxy/forward.cpp): send upstream, relay the response
//   record           — phases 6-8: price the usage, append the usage record
#include "proxy/session.hpp"

#include "proxy/forward.hpp"
#include "proxy/request.hpp"

#include "keys/api_key.hpp"
#include "proxy/wire.hpp"
#include "sql/store.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/http.hpp>
#include <fmt/format.h>
#include <openssl/rand.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <random>

namespace tollgate {
namespace http = beast::http;
using net::awaitable;

namespace {

constexpr std::size_t header_limit = 16 * 1024;

std::int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch()).count();
}

// ---------------------------------------------------------------------------------------------
// Phases 6-8: price the usage and append the usage record (the writer thread batches it into
// Postgres). Runs for every request that reached the upstream, whatever happened after.
/// What settle needs of a recorded request.
struct Recorded {
  pricing::Micros charge = 0;
  std::int64_t tokens = 0;  ///< prompt + completion
};

std::optional<Recorded> record(App& app, const RequestCtx& ctx, const Outcome& out) {
  if (!out.reached_upstream) return std::nullopt;
  if (out.client_aborted) ++app.metrics.client_aborts;  // counted once, whichever write failed
  sql::UsageRecord r;
  r.request_id = ctx.request_id;
  r.user_id = ctx.key->user_id;
  r.api_key_id = ctx.key->key_id;
  r.model = ctx.req.model;
  r.created_at_us = ctx.started_us;
  std::optional<pricing::Picos> reported_cost;
  if (out.usage) {
    r.prompt_tokens = out.usage->prompt_tokens;
    r.completion_tokens = out.usage->completion_tokens;
    if (app.cfg.cost_from_upstream && out.usage->cost_usd)
      reported_cost = pricing::parse_decimal(*out.usage->cost_usd, 12);
  } else if (out.delivered_chunks > 0) {
    // The stream ended without a usage chunk (client abort, upstream cut): bill what was
    // delivered — one token per content chunk, and the prompt at ~4 bytes per token.
    r.prompt_tokens = static_cast<std::int64_t>((ctx.body.size() + 3) / 4);
    r.completion_tokens = out.delivered_chunks;
  }
  if (out.client_aborted) r.status = "client_aborted";
  else if (out.upstream_aborted) r.status = "upstream_aborted";
  else if (out.midstream_error) r.status = "upstream_error";
  else if (out.status >= 200 && out.status < 300) r.status = "success";
  else r.status = "upstream_error";
  if (r.prompt_tokens > 0 || r.completion_tokens > 0 || reported_cost) {
    pricing::Picos cost = reported_cost ? *reported_cost
                                        : pricing::PricingSnapshot::token_cost(*ctx.price, r.prompt_tokens,
                                                                               r.completion_tokens);
    auto c = ctx.pricing->charge(ctx.req.model, cost);
    r.cost = c.cost;
    r.charge = c.charge;
  }
  r.request_metadata_json = fmt::format(
      R"({{"endpoint":"{}","stream":{},"max_tokens":{},"body_bytes":{}}})", ctx.upstream_path,
      ctx.req.stream, ctx.req.max_tokens ? std::to_string(*ctx.req.max_tokens) : "null", ctx.body.size());
  r.response_metadata_json = fmt::format(
      R"({{"status_code":{},"generation_id":{},"finish_reason":{},"delivered_chunks":{},"usage_reported":{},"duration_us":{}}})",
      out.status, out.generation_id ? boost::json::serialize(boost::json::string(*out.generation_id)) : "null",
      out.finish_reason ? boost::json::serialize(boost::json::string(*out.finish_reason)) : "null",
      out.delivered_chunks, out.usage.has_value(), unix_now_us() - ctx.started_us);
  Recorded done{r.charge, r.prompt_tokens + r.completion_tokens};
  app.usage.append(std::move(r));
  return done;
}

// ---------------------------------------------------------------------------------------------
/// A key the filter does not know may have been created a few ms ago, its NOTIFY still on the
/// way (a few ms). Waits `key_notify_grace` and asks the filter again. Forged keys pay the wait
/// too, which slows a flood of them down.
constexpr auto key_notify_grace = std::chrono::milliseconds(25);
awaitable<bool> created_just_now(beast::tcp_stream& client, App& app, const std::string& hash) {
  net::steady_timer t(client.get_executor());
  t.expires_after(key_notify_grace);
  co_await t.async_wait(net::as_tuple(net::use_awaitable));
  co_return app.key_filter.might_contain(hash);
}

// Phase 2: authenticate. Returns the key record, or nullptr after answering 401/503.
awaitable<keys::KeyCache::Record> authenticate(beast::tcp_stream& client, App& app, RequestCtx& ctx,
                                               std::string_view authorization, bool& keep_alive) {
  auto deny = [&](std::string_view msg) -> awaitable<keys::KeyCache::Record> {
    ++app.metrics.auth_failures;
    keep_alive = co_await reply_error(client, app, ctx, http::status::unauthorized, msg,
                                      "invalid_request_error", "invalid_api_key", keep_alive);
    co_return nullptr;
  };
  auto token = keys::bearer_token(authorization);
  if (!token)
    co_return co_await deny("You didn't provide an API key. Send it as 'Authorization: Bearer tg_…'.");
  if (!keys::is_well_formed(*token)) co_return co_await deny("Incorrect API key provided.");
  std::string hash = keys::hash_key(*token);
  auto now = keys::KeyCache::Clock::now();
  keys::KeyCache::Record rec;
  if (auto cached = app.key_cache.find(hash, now)) {
    ++app.metrics.key_cache_hits;
    rec = *cached;
  } else if (!app.key_filter.might_contain(hash) && !co_await created_just_now(client, app, hash)) {
    // Certainly not a key in api_keys (forged with a valid checksum, or deleted): refused
    // without a Postgres lookup, so a flood of such keys never reaches Postgres.
    ++app.metrics.key_cache_misses;
    ++app.metrics.key_filter_refusals;
    co_return co_await deny("Incorrect API key provided.");
  } else {
    ++app.metrics.key_cache_misses;
    ++app.metrics.key_lookups;
    auto gen = app.key_cache.generation();
    bool failed = false;
    try {
      // A named lambda: GCC 12 double-destroys lambda temporaries inside co_await expressions.
      auto query = [hash](sql::PgConn& db) { return sql::lookup_key(db, hash); };
      auto found = co_await app.lookups.run(query);
      if (found) rec = std::make_shared<const keys::KeyRecord>(std::move(*found));
      app.key_cache.put(hash, rec, gen, now);
    } catch (const std::exception& e) {
      spdlog::error("{}: key lookup failed: {}", ctx.request_id, e.what());
      failed = true;
    }
    // Stale-if-error: a key Postgres confirmed shortly before it failed keeps working
    // (bounded by keys.stale_if_error_ms; a revocation NOTIFY or reconnect ends it).
    if (failed) rec = app.key_cache.find_stale(hash, keys::KeyCache::Clock::now());
    if (failed && !rec) {
      keep_alive = co_await reply_error(client, app, ctx, http::status::service_unavailable,
                                        "Authentication is temporarily unavailable; retry shortly.",
                                        "service_unavailable", "auth_unavailable", keep_alive);
      co_return nullptr;
    }
  }
  if (!rec) co_return co_await deny("Incorrect API key provided.");
  if (!rec->is_active) co_return co_await deny("This API key has been revoked.");
  if (!rec->usable_at(unix_now())) co_return co_await deny("This API key has expired.");
  co_return rec;
}

awaitable<bool> list_models(beast::tcp_stream& client, App& app, RequestCtx& ctx) {
  auto snap = app.pricing.load();
  std::vector<std::string> ids;
  for (const auto& [id, p] : snap->prices()) ids.push_back(id);
  std::sort(ids.begin(), ids.end());
  std::string body = R"({"object":"list","data":[)";
  for (std::size_t i = 0; i < ids.size(); ++i) {
    auto slash = ids[i].find('/');
    fmt::format_to(std::back_inserter(body), R"({}{{"id":{},"object":"model","created":0,"owned_by":{}}})",
                   i ? "," : "", boost::json::serialize(boost::json::string(ids[i])),
                   boost::json::serialize(boost::json::string(slash == std::string::npos ? "tollgate" : ids[i].substr(0, slash))));
  }
  body += "]}";
  co_return co_await reply(client, app, ctx, http::status::ok, std::move(body), ctx.client_keep_alive);
}

std::string metrics_text(App& app) {
  auto& m = app.metrics;
  auto u = app.usage.stats();
  return fmt::format(
      "tollgate_requests_total {}\ntollgate_responses_total{{class=\"2xx\"}} {}\n"
      "tollgate_responses_total{{class=\"4xx\"}} {}\ntollgate_responses_total{{class=\"5xx\"}} {}\n"
      "tollgate_auth_failures_total {}\ntollgate_insufficient_balance_total {}\n"
      "tollgate_upstream_errors_total {}\ntollgate_upstream_connect_failures_total {}\n"
      "tollgate_client_aborts_total {}\ntollgate_streams_total {}\n"
      "tollgate_key_cache_hits_total {}\ntollgate_key_cache_misses_total {}\n"
      "tollgate_key_lookups_total {}\ntollgate_key_filter_refusals_total {}\n"
      "tollgate_admission_total{{result=\"ok\"}} {}\ntollgate_admission_total{{result=\"over_limit\"}} {}\n"
      "tollgate_admission_total{{result=\"error\"}} {}\ntollgate_admission_total{{result=\"failure_mode_allowed\"}} {}\n"
      "tollgate_active_requests {}\ntollgate_usage_records_appended_total {}\n"
      "tollgate_usage_records_committed_total {}\ntollgate_usage_records_queued {}\n"
      "tollgate_usage_batch_failures_total {}\ntollgate_usage_records_dead_lettered_total {}\n",
      m.requests.load(), m.responses_2xx.load(), m.responses_4xx.load(), m.responses_5xx.load(),
      m.auth_failures.load(), m.insufficient_balance.load(), m.upstream_errors.load(),
      m.upstream_connect_failures.load(), m.client_aborts.load(), m.streams.load(),
      m.key_cache_hits.load(), m.key_cache_misses.load(), m.key_lookups.load(), m.key_filter_refusals.load(),
      m.admission_ok.load(), m.admission_over_limit.load(),
      m.admission_errors.load(), m.failure_mode_allowed.load(), m.active_requests.load(), u.appended,
      u.committed, u.queued, u.failures, u.dead_lettered);
}

/// OpenAI's x-ratelimit-* trio for the tightest request window and the tightest token window.
void set_ratelimit_headers(RequestCtx& ctx, const std::vector<ratelimit::Window>& windows) {
  for (bool tokens : {false, true}) {
    const ratelimit::Window* tight = nullptr;
    for (const auto& w : windows)
      if (w.tokens == tokens && (!tight || w.remaining < tight->remaining)) tight = &w;
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

/// Phase 4: admit. The worst case of the request — every body byte a prompt token (an upper
/// bound for text) plus max_tokens (or the cap we send) of completion — is held on the balance
/// and counted against every sliding window, in one Redis round trip. Returns true to go on;
/// otherwise it has answered (400/402/429/503) and `keep` says whether the connection stays.
awaitable<bool> admit(beast::tcp_stream& client, App& app, ThreadContext& tc, RequestCtx& ctx, bool& keep) {
  std::int64_t per_request = max_tokens_limit(*ctx.key);
  if (per_request > 0 && ctx.req.max_tokens && *ctx.req.max_tokens > per_request) {
    keep = co_await reply_error(client, app, ctx, http::status::bad_request,
                                fmt::format("max_tokens is {}, above this key's limit of {} tokens per request.",
                                            *ctx.req.max_tokens, per_request),
                                "invalid_request_error", "max_tokens_exceeded", keep);
    co_return false;
  }
  ctx.default_cap = per_request > 0 ? std::min(per_request, app.cfg.default_max_tokens) : app.cfg.default_max_tokens;
  std::int64_t prompt_max = static_cast<std::int64_t>(ctx.body.size()) / app.cfg.prompt_bytes_per_token + 1;
  std::int64_t completion_max =
      ctx.endpoint == wire::Endpoint::embeddings ? 0 : ctx.req.max_tokens.value_or(ctx.default_cap);
  pricing::Micros worst =
      ctx.pricing->charge(ctx.req.model, pricing::PricingSnapshot::token_cost(*ctx.price, prompt_max, completion_max)).charge;
  auto insufficient = [&](pricing::Micros available) -> awaitable<bool> {
    ++app.metrics.insufficient_balance;
    keep = co_await reply_error(
        client, app, ctx, http::status::payment_required,
        fmt::format("This request requires more credits, or fewer max_tokens: its worst case costs ${} and "
                    "${} is available.", pricing::format_micros(worst), pricing::format_micros(std::max<pricing::Micros>(available, 0))),
        "insufficient_quota", "insufficient_credits", keep);
    co_return false;
  };

  if (tc.admitter) {
    auto a = co_await tc.admitter->admit(*ctx.key, ctx.request_id, worst, prompt_max + completion_max);
    set_ratelimit_headers(ctx, a.windows);
    switch (a.verdict) {
      case ratelimit::Verdict::admitted:
        ++app.metrics.admission_ok;
        ctx.admission = std::move(a);
        co_return true;
      case ratelimit::Verdict::rate_limited: {
        ++app.metrics.admission_over_limit;
        const auto& w = a.windows.at(static_cast<std::size_t>(a.limited));
        std::int64_t retry_s = std::max<std::int64_t>(1, (a.retry_after_ms + 999) / 1000);
        ctx.headers.emplace_back("retry-after", std::to_string(retry_s));
        keep = co_await reply_error(client, app, ctx, http::status::too_many_requests,
                                    fmt::format("Rate limit reached: {} (limit {}). Please try again in {}.",
                                                w.name, w.limit, ratelimit::format_reset(a.retry_after_ms)),
                                    w.tokens ? "tokens" : "requests", w.name, keep);
        co_return false;
      }
      case ratelimit::Verdict::insufficient_balance:
        co_return co_await insufficient(a.available);
      case ratelimit::Verdict::unavailable:
        ++app.metrics.admission_errors;
        if (app.cfg.admission.failure_mode == ratelimit::FailureMode::fail_closed) {
          keep = co_await reply_error(client, app, ctx, http::status::service_unavailable,
                                      "Rate limiting is temporarily unavailable; retry shortly.",
                                      "service_unavailable", "rate_limiter_unavailable", keep);
          co_return false;
        }
        ++app.metrics.failure_mode_allowed;  // fail open: no rate limits, balance from Postgres
        break;
    }
  }

  std::optional<pricing::Micros> balance;
  bool failed = false;
  try {
    auto query = [user = ctx.key->user_id](sql::PgConn& db) { return sql::balance_of(db, user); };
    balance = co_await app.lookups.run(query);
  } catch (const std::exception& e) {
    spdlog::error("{}: balance check failed: {}", ctx.request_id, e.what());
    failed = true;
  }
  if (failed) {
    keep = co_await reply_error(client, app, ctx, http::status::service_unavailable,
                                "Billing is temporarily unavailable; retry shortly.", "service_unavailable",
                                "billing_unavailable", keep);
    co_return false;
  }
  if (!balance || *balance + ctx.key->overdraft_micros < worst)
    co_return co_await insufficient(balance.value_or(0) + ctx.key->overdraft_micros);
  co_return true;
}

struct ActiveGuard {
  Metrics& m;
  explicit ActiveGuard(Metrics& mm) : m(mm) { ++m.active_requests; }
  ~ActiveGuard() { --m.active_requests; }
};

/// Routing and phases 2-4, then forward and record. Returns whether to keep the connection.
awaitable<bool> handle_request(beast::tcp_stream& client, beast::flat_buffer& buf,
                               http::request_parser<http::empty_body>& hp, App& app, ThreadContext& tc) {
  ActiveGuard active(app.metrics);
  ++app.metrics.requests;
  RequestCtx ctx;
  auto& h = hp.get();
  // A body we do not read leaves the connection mid-message: close it after answering.
  bool keep_alive = h.keep_alive() && hp.is_done();
  ctx.client_keep_alive = h.keep_alive();
  std::string_view target(h.target().data(), h.target().size());
  target = target.substr(0, target.find('?'));
  if (target.size() > 1 && target.back() == '/') target.remove_suffix(1);

  if (target == "/healthz" && h.method() == http::verb::get)
    co_return co_await reply(client, app, ctx, http::status::ok, R"({"status":"ok"})", keep_alive);
  if (target == "/metrics" && h.method() == http::verb::get) {
    http::response<http::string_body> res{http::status::ok, 11};
    res.set(http::field::content_type, "text/plain; version=0.0.4");
    res.keep_alive(keep_alive);
    res.body() = metrics_text(app);
    res.prepare_payload();
    auto [ec, n] = co_await http::async_write(client, res, tuple_awaitable);
    co_return !ec && keep_alive;
  }

  bool is_post = true;
  if (target == "/v1/chat/completions") ctx.endpoint = wire::Endpoint::chat_completions, ctx.upstream_path = "/chat/completions";
  else if (target == "/v1/completions") ctx.endpoint = wire::Endpoint::completions, ctx.upstream_path = "/completions";
  else if (target == "/v1/embeddings") ctx.endpoint = wire::Endpoint::embeddings, ctx.upstream_path = "/embeddings";
  else if (target == "/v1/models") is_post = false;
  else
    co_return co_await reply_error(client, app, ctx, http::status::not_found,
                                   fmt::format("Unknown request URL: {} {}.", std::string(h.method_string()),
                                               std::string(target.substr(0, 200))),
                                   "invalid_request_error", "unknown_url", keep_alive);
  if (h.method() != (is_post ? http::verb::post : http::verb::get))
    co_return co_await reply_error(client, app, ctx, http::status::method_not_allowed,
                                   fmt::format("Use {} for {}.", is_post ? "POST" : "GET", std::string(target)),
                                   "invalid_request_error", "method_not_allowed", keep_alive);

  // Phase 2: authenticate (before reading any body).
  ctx.key = co_await authenticate(client, app, ctx, h[http::field::authorization], keep_alive);
  if (!ctx.key) co_return keep_alive;
  ctx.pricing = app.pricing.load();
  if (!is_post) co_return co_await list_models(client, app, ctx);

  // Phase 3: read and parse the body.
  ctx.client_accept = std::string(h[http::field::accept]);
  if (beast::iequals(h[http::field::expect], "100-continue")) {
    static constexpr std::string_view cont = "HTTP/1.1 100 Continue\r\n\r\n";
    auto [cont_ec, cont_n] = co_await net::async_write(client, net::buffer(cont), tuple_awaitable);
    if (cont_ec) co_return false;
  }
  http::request_parser<http::string_body> bp{std::move(hp)};
  bp.body_limit(app.cfg.max_body_bytes);
  client.expires_after(app.cfg.client_idle_timeout);
  auto [read_ec, read_n] = co_await http::async_read(client, buf, bp, tuple_awaitable);
  if (read_ec) {
    if (read_ec == http::error::body_limit) {
      co_await reply_error(client, app, ctx, http::status::payload_too_large,
                           fmt::format("The request body exceeds {} bytes.", app.cfg.max_body_bytes),
                           "invalid_request_error", "request_too_large", false);
      co_await drain_and_close(client);
      co_return false;
    }
    co_return false;  // client went away or sent a malformed body: nothing to answer
  }
  ctx.body = std::move(bp.get().body());
  wire::RequestError perr;
  auto parsed = wire::parse_request(ctx.body, perr);
  if (!parsed)
    co_return co_await reply_error(client, app, ctx, static_cast<http::status>(perr.status), perr.message,
                                   "invalid_request_error", perr.code, ctx.client_keep_alive);
  ctx.req = std::move(*parsed);
  if (ctx.endpoint == wire::Endpoint::embeddings && ctx.req.stream)
    co_return co_await reply_error(client, app, ctx, http::status::bad_request,
                                   "Embeddings cannot be streamed.", "invalid_request_error",
                                   "invalid_value", ctx.client_keep_alive);
  ctx.price = ctx.pricing->price(ctx.req.model);
  if (!ctx.price)
    co_return co_await reply_error(client, app, ctx, http::status::bad_request,
                                   fmt::format("The model '{}' is not available on this gateway.", ctx.req.model),
                                   "invalid_request_error", "model_not_found", ctx.client_keep_alive);

  // Phase 4: admit (rate limits and the balance hold), then phase 5: forward; phases 6-8
  // always follow once the upstream was reached, and the hold is always settled.
  bool keep = ctx.client_keep_alive;
  if (!co_await admit(client, app, tc, ctx, keep)) co_return keep;
  Outcome out;
  try {
    keep = co_await forward(client, app, tc.upstream, ctx, out);
  } catch (const std::exception& e) {
    // Whatever broke, phases 7-8 still run: a request that reached the upstream is recorded.
    spdlog::error("{}: forwarding failed: {}", ctx.request_id, e.what());
    out.upstream_aborted = out.reached_upstream;
    keep = false;
  }
  auto rec = record(app, ctx, out);
  if (ctx.admission && tc.admitter) {
    // Phase 7 off the request path, batched with other settles of this event loop. Counted in
    // active_requests until Redis answered (the Admitter's on_settled releases it), so a
    // graceful stop waits for it instead of leaving the hold to expire.
    ++app.metrics.active_requests;
    ratelimit::Settlement s;
    s.account = ctx.key->user_id;
    s.request_id = ctx.request_id;
    s.charge = rec ? rec->charge : 0;
    s.windows = std::move(ctx.admission->windows);
    s.actual_tokens = rec ? rec->tokens : 0;
    s.token_estimate = ctx.admission->token_estimate;
    tc.admitter->settle(std::move(s));
  }
  co_return keep;
}

}  // namespace

awaitable<void> run_session(beast::tcp_stream client, App& app, ThreadContext& tc) {
  beast::flat_buffer buf;
  for (;;) {
    // Phase 1: parse & limit. Beast's parser rejects malformed framing (conflicting
    // Content-Length / Transfer-Encoding: request smuggling) with an error.
    http::request_parser<http::empty_body> hp;
    hp.header_limit(header_limit);
    hp.body_limit(app.cfg.max_body_bytes);
    client.expires_after(app.cfg.client_idle_timeout);
    auto [ec, n] = co_await http::async_read_header(client, buf, hp, tuple_awaitable);
    if (ec) {
      if (ec == http::error::body_limit) {
        RequestCtx ctx;
        co_await reply_error(client, app, ctx, http::status::payload_too_large,
                             fmt::format("The request body exceeds {} bytes.", app.cfg.max_body_bytes),
                             "invalid_request_error", "request_too_large", false);
        co_await drain_and_close(client);
      } else if (ec.category() == beast::error_code(http::error::end_of_stream).category() &&
                 ec != http::error::end_of_stream && ec != http::error::partial_message) {
        RequestCtx ctx;
        co_await reply_error(client, app, ctx, http::status::bad_request, "Malformed HTTP request.",
                             "invalid_request_error", "bad_request", false);
      }
      break;  // end of stream, timeout or reset: nothing more to say
    }
    bool keep = false;
    try {
      keep = co_await handle_request(client, buf, hp, app, tc);
    } catch (const std::exception& e) {
      spdlog::error("request failed: {}", e.what());
      break;
    }
    if (!keep) break;
  }
  beast::error_code ec;
  client.socket().shutdown(net::ip::tcp::socket::shutdown_send, ec);  // peer may already be gone
}

}  // namespace tollgate
