// One client connection and the request path through it. Read top to bottom:
//   run_session      — the connection loop (phase 1: parse & limit)
//   handle_request   — routing, phase 2 (authenticate), 3 (read body), 4 (admit)
//   forward          — phase 5 (proxy/forward.cpp): send upstream, relay the response
//   record           — phases 6-8: price the usage, append the usage record
#include "proxy/session.hpp"

#include "proxy/connection.hpp"
#include "proxy/forward.hpp"
#include "proxy/record.hpp"
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
#include <tuple>
#include <random>

namespace tollgate {
namespace http = beast::http;
using net::awaitable;

namespace {

std::int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::chrono::system_clock::now().time_since_epoch()).count();
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

/// The key record of `hash` from Postgres (null: no such key), and whether the lookup failed;
/// cached. Misses of one key hash on this event loop share one lookup: a cold key bursting
/// 1,000 times costs one Postgres round trip, not 1,000.
awaitable<std::pair<keys::KeyCache::Record, bool>> lookup_key(App& app, ThreadContext& tc, const std::string& hash,
                                                              keys::KeyCache::Clock::time_point now,
                                                              const std::string& request_id) {
  if (auto it = tc.key_lookups.find(hash); it != tc.key_lookups.end()) {
    auto in_flight = it->second;
    co_await in_flight->done.async_wait(tuple_awaitable);  // cancelled when the lookup finished
    co_return std::pair{in_flight->rec, in_flight->failed};
  }
  auto l = std::make_shared<KeyLookup>(co_await net::this_coro::executor);
  tc.key_lookups.emplace(hash, l);
  ++app.metrics.key_lookups;
  auto gen = app.key_cache.generation();
  try {
    // A named lambda: GCC 12 double-destroys lambda temporaries inside co_await expressions.
    auto query = [hash](sql::PgConn& db) { return sql::lookup_key(db, hash); };
    auto found = co_await app.lookups.run(query);
    if (found) l->rec = std::make_shared<const keys::KeyRecord>(std::move(*found));
    app.key_cache.put(hash, l->rec, gen, now);
  } catch (const std::exception& e) {
    spdlog::error("{}: key lookup failed: {}", request_id, e.what());
    l->failed = true;
  }
  tc.key_lookups.erase(hash);
  l->done.cancel();
  co_return std::pair{l->rec, l->failed};
}

// Phase 2: authenticate. Returns the key record, or nullptr after answering 401/503.
awaitable<keys::KeyCache::Record> authenticate(beast::tcp_stream& client, App& app, ThreadContext& tc,
                                               RequestCtx& ctx, std::string_view authorization, bool& keep_alive) {
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
    bool failed = false;
    std::tie(rec, failed) = co_await lookup_key(app, tc, hash, now, ctx.request_id);
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

awaitable<bool> list_models(beast::tcp_stream& client, App& app, RequestCtx& ctx, bool keep_alive) {
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
  co_return co_await reply(client, app, ctx, http::status::ok, std::move(body), keep_alive);
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
  ctx.hold = worst;  // the charge never exceeds it (record.cpp)
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

/// Counts a request in its event loop's queue (read, not yet forwarded or answered).
struct QueuedGuard {
  std::size_t* n;
  explicit QueuedGuard(std::size_t& q) : n(&q) { ++*n; }
  void release() {
    if (n) --*std::exchange(n, nullptr);
  }
  ~QueuedGuard() { release(); }
};

/// Routing and phases 2-4, then forward and record. `last`: the connection's final request
/// (max_requests_per_connection). Returns whether to keep the connection.
awaitable<bool> handle_request(beast::tcp_stream& client, beast::flat_buffer& buf, RequestParser& parser,
                               App& app, ThreadContext& tc, bool last) {
  ActiveGuard active(app.metrics);
  ++app.metrics.requests;
  RequestCtx ctx;
  const auto& h = parser.header();
  ctx.client_keep_alive = parser.keep_alive() && !last && !app.stopping;  // a graceful stop closes
  // A body we do not read leaves the connection mid-message: close it after answering.
  bool keep_alive = ctx.client_keep_alive && !parser.has_body();
  std::string_view target(h.target().data(), h.target().size());
  target = target.substr(0, target.find('?'));
  if (target.size() > 1 && target.back() == '/') target.remove_suffix(1);

  // Shed before doing any work when this event loop is saturated: an honest 503, not a
  // Redis deadline missed while the request waited in our own queue.
  if (tc.queued >= app.cfg.max_queued_requests) {
    ++app.metrics.shed_overloaded;
    ctx.headers.emplace_back("retry-after", "1");
    co_return co_await reply_error(client, app, ctx, http::status::service_unavailable,
                                   "tollgate is overloaded; retry shortly.", "service_unavailable", "overloaded",
                                   keep_alive);
  }
  QueuedGuard queued(tc.queued);

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
  ctx.key = co_await authenticate(client, app, tc, ctx, h[http::field::authorization], keep_alive);
  if (!ctx.key) co_return keep_alive;
  ctx.pricing = app.pricing.load();
  if (!is_post) co_return co_await list_models(client, app, ctx, keep_alive);

  // Phase 3: read and parse the body.
  ctx.client_accept = std::string(h[http::field::accept]);
  if (beast::iequals(h[http::field::expect], "100-continue")) {
    static constexpr std::string_view cont = "HTTP/1.1 100 Continue\r\n\r\n";
    auto [cont_ec, cont_n] = co_await net::async_write(client, net::buffer(cont), tuple_awaitable);
    if (cont_ec) co_return false;
  }
  auto body = co_await read_body(client, buf, parser, app.cfg);
  if (body.state == HeadRead::State::rejected) {
    co_await refuse_and_close(client, app, ctx, body.rejection);
    co_return false;
  }
  if (body.state == HeadRead::State::timed_out) {
    ++app.metrics.body_timeouts;
    // Named, not a temporary inside the co_await: GCC 12 may destroy such temporaries twice.
    const Rejection late{408, "request_timeout", "The request body did not arrive in time."};
    co_await refuse_and_close(client, app, ctx, late);
    co_return false;
  }
  if (body.state != HeadRead::State::ok) co_return false;  // the client went away
  ctx.body = std::move(parser.body());
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
  queued.release();  // forwarding: the request has left this event loop's queue
  app.intents.begin(intent_of(ctx));  // crash recovery: releases its hold, or records it if sent
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
  app.intents.end(ctx.request_id);  // its usage record (if it reached the upstream) is journaled
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

awaitable<void> run_session(beast::tcp_stream client, App& app, ThreadContext& tc, ConnectionLimiter::Slot slot) {
  // Phase 1: parse & limit. One read buffer per connection, bounded (a complete head fits);
  // one strict parser per request.
  beast::flat_buffer buf(http_limits(app.cfg).read_buffer());
  std::optional<std::chrono::steady_clock::time_point> head_deadline =
      std::chrono::steady_clock::now() + app.cfg.header_timeout;
  // Named, not temporaries inside co_await expressions: GCC 12 may destroy those twice.
  const RequestCtx no_request;
  const Rejection head_late{408, "request_timeout", "The request head did not arrive in time."};
  for (std::uint32_t served = 0; served < app.cfg.max_requests_per_connection; ++served) {
    RequestParser parser(http_limits(app.cfg));
    HeadRead head = co_await read_head(client, buf, parser, app.cfg, std::exchange(head_deadline, std::nullopt));
    if (head.state == HeadRead::State::rejected) {
      co_await refuse_and_close(client, app, no_request, head.rejection);
      co_return;
    }
    if (head.state == HeadRead::State::timed_out) {
      if (!head.partial) break;  // idle: closed quietly, as nginx does
      ++app.metrics.header_timeouts;
      co_await refuse_and_close(client, app, no_request, head_late);
      co_return;
    }
    if (head.state != HeadRead::State::ok) break;  // end of stream or reset: nothing to answer
    bool last = served + 1 == app.cfg.max_requests_per_connection;
    if (!co_await handle_request(client, buf, parser, app, tc, last)) break;
  }
  beast::error_code ec;
  client.socket().shutdown(net::ip::tcp::socket::shutdown_send, ec);  // peer may already be gone
}

}  // namespace tollgate
