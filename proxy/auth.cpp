// Phase 2: authenticate. The API key from `Authorization: Bearer` (or `x-api-key`), checked against the key
// cache, then the key filter, then the key source (Postgres), with stale-if-error.
#include "keys/api_key.hpp"
#include "proxy/phase.hpp"

#include <boost/asio/steady_timer.hpp>
#include <boost/beast/http/field.hpp>
#include <spdlog/spdlog.h>

#include <chrono>
#include <tuple>

namespace tollgate {
namespace http = beast::http;
using net::awaitable;

namespace {

std::int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

/// A key the filter does not know may have been created a few ms ago, its NOTIFY still on the
/// way (a few ms). Waits `key_notify_grace` and asks the filter again. Forged keys pay the wait
/// too, which slows a flood of them down.
constexpr auto key_notify_grace = std::chrono::milliseconds(25);
awaitable<bool> created_just_now(Pipe& p, const std::string& hash) {
  net::steady_timer t(p.client.get_executor());
  t.expires_after(key_notify_grace);
  co_await t.async_wait(tuple_awaitable);
  co_return p.app.key_filter.might_contain(hash);
}

/// The key record of `hash` from the key source (null: no such key), and whether the lookup
/// failed; cached. Misses of one key hash on this event loop share one lookup: a cold key
/// bursting 1,000 times costs one Postgres round trip, not 1,000.
awaitable<std::pair<keys::KeyCache::Record, bool>> lookup_key(Pipe& p, const std::string& hash,
                                                              keys::KeyCache::Clock::time_point now,
                                                              const std::string& request_id) {
  auto& tc = p.tc;
  if (auto it = tc.key_lookups.find(hash); it != tc.key_lookups.end()) {
    auto in_flight = it->second;
    co_await in_flight->done.async_wait(tuple_awaitable);  // cancelled when the lookup finished
    co_return std::pair{in_flight->rec, in_flight->failed};
  }
  auto l = std::make_shared<KeyLookup>(co_await net::this_coro::executor);
  tc.key_lookups.emplace(hash, l);
  ++p.app.metrics.key_lookups;
  auto gen = p.app.key_cache.generation();
  try {
    auto found = co_await p.app.key_source.find_key(hash);
    if (found) l->rec = std::make_shared<const keys::KeyRecord>(std::move(*found));
    p.app.key_cache.put(hash, l->rec, gen, now);
  } catch (const std::exception& e) {
    spdlog::error("{}: key lookup failed: {}", request_id, e.what());
    l->failed = true;
  }
  tc.key_lookups.erase(hash);
  l->done.cancel();
  co_return std::pair{l->rec, l->failed};
}

}  // namespace

awaitable<Step> authenticate(Pipe& p, RequestCtx& ctx) {
  App& app = p.app;
  auto deny = [&](std::string_view msg) {
    ++app.metrics.auth_failures;
    return fail(ctx, 401, msg, "invalid_request_error", "invalid_api_key");
  };
  // Authorization: Bearer (OpenAI's SDKs), else x-api-key (Anthropic's SDKs and Claude Code).
  const auto& h = p.parser.header();
  std::optional<std::string_view> token;
  if (auto authorization = h[http::field::authorization]; !authorization.empty())
    token = keys::bearer_token(authorization);
  else if (auto x_api_key = h["x-api-key"]; !x_api_key.empty())
    token = std::string_view(x_api_key.data(), x_api_key.size());
  if (!token)
    co_return deny("You didn't provide an API key. Send it as 'Authorization: Bearer tg_…' or 'x-api-key: tg_…'.");
  if (!keys::is_well_formed(*token)) co_return deny("Incorrect API key provided.");
  std::string hash = keys::hash_key(*token);
  auto now = keys::KeyCache::Clock::now();
  keys::KeyCache::Record rec;
  if (auto cached = app.key_cache.find(hash, now)) {
    ++app.metrics.key_cache_hits;
    rec = *cached;
  } else if (!app.key_filter.might_contain(hash) && !co_await created_just_now(p, hash)) {
    // Certainly not a key in api_keys (forged with a valid checksum, or deleted): refused
    // without a lookup, so a flood of such keys never reaches Postgres.
    ++app.metrics.key_cache_misses;
    ++app.metrics.key_filter_refusals;
    co_return deny("Incorrect API key provided.");
  } else {
    ++app.metrics.key_cache_misses;
    bool failed = false;
    std::tie(rec, failed) = co_await lookup_key(p, hash, now, ctx.request_id);
    // Stale-if-error: a key Postgres confirmed shortly before it failed keeps working
    // (bounded by keys.stale_if_error_ms; a revocation NOTIFY or reconnect ends it).
    if (failed) rec = app.key_cache.find_stale(hash, keys::KeyCache::Clock::now());
    if (failed && !rec)
      co_return fail(ctx, 503, "Authentication is temporarily unavailable; retry shortly.", "service_unavailable",
                     "auth_unavailable");
  }
  if (!rec) co_return deny("Incorrect API key provided.");
  if (!rec->is_active) co_return deny("This API key has been revoked.");
  if (!rec->usable_at(unix_now())) co_return deny("This API key has expired.");
  ctx.key = std::move(rec);
  co_return Step::next();
}

}  // namespace tollgate
