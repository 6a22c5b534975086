#include "sql/store.hpp"

#include "keys/api_key.hpp"

#include <algorithm>
#include <stdexcept>

namespace tollgate::sql {

std::vector<std::string> migrate(PgConn& db) {
  db.exec("SELECT pg_advisory_lock(7410001)");
  std::vector<std::string> applied;
  try {
    db.exec("CREATE TABLE IF NOT EXISTS schema_migrations ("
            " name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())");
    for (const auto& [name, sql] : embedded_migrations()) {
      if (db.exec("SELECT 1 FROM schema_migrations WHERE name = $1", {name}).rows() > 0) continue;
      db.exec_script("BEGIN;\n" + sql + "\n;INSERT INTO schema_migrations (name) VALUES ('" +
                     name + "');\nCOMMIT;");
      applied.push_back(name);
    }
  } catch (...) {
    PQexec(db.raw(), "ROLLBACK");  // leave the session usable; the error is rethrown
    db.exec("SELECT pg_advisory_unlock(7410001)");
    throw;
  }
  db.exec("SELECT pg_advisory_unlock(7410001)");
  return applied;
}

std::optional<keys::KeyRecord> lookup_key(PgConn& db, const std::string& key_hash) {
  auto r = db.exec(
      "SELECT k.id, k.user_id, k.key_prefix, k.is_active,"
      " coalesce(floor(extract(epoch FROM k.expires_at))::bigint, 0),"
      " coalesce(k.requests_per_minute, 0), coalesce(k.requests_per_hour, 0),"
      " coalesce(k.requests_per_day, 0), coalesce(k.tokens_per_minute, 0),"
      " coalesce(k.max_tokens_per_request, 0),"
      " coalesce(r.requests_per_minute, 0), coalesce(r.requests_per_hour, 0),"
      " coalesce(r.requests_per_day, 0), coalesce(r.tokens_per_minute, 0),"
      " coalesce(r.max_tokens_per_request, 0),"
      " coalesce((b.overdraft_usd * 1000000)::bigint, 0),"
      " coalesce((k.spend_limit_usd * 1000000)::bigint, -1), k.limit_reset,"
      " coalesce((r.spend_limit_usd * 1000000)::bigint, -1), coalesce(r.limit_reset, 'never')"
      " FROM api_keys k LEFT JOIN rate_limits r ON r.user_id = k.user_id"
      " LEFT JOIN balances b ON b.user_id = k.user_id WHERE k.key_hash = $1",
      {key_hash});
  if (r.rows() == 0) return std::nullopt;
  keys::KeyRecord k;
  k.key_id = r.str(0, 0);
  k.user_id = r.str(0, 1);
  k.key_prefix = r.str(0, 2);
  k.is_active = r.boolean(0, 3);
  k.expires_at_unix = r.i64(0, 4);
  k.key_limits = {r.i64(0, 5), r.i64(0, 6), r.i64(0, 7), r.i64(0, 8), r.i64(0, 9)};
  k.account_limits = {r.i64(0, 10), r.i64(0, 11), r.i64(0, 12), r.i64(0, 13), r.i64(0, 14)};
  k.overdraft_micros = r.i64(0, 15);
  auto reset = [](const std::string& s) {
    using keys::LimitReset;
    return s == "daily" ? LimitReset::daily : s == "weekly" ? LimitReset::weekly
                                            : s == "monthly" ? LimitReset::monthly : LimitReset::never;
  };
  k.key_spend = {r.i64(0, 16), reset(r.str(0, 17))};
  k.account_spend = {r.i64(0, 18), reset(r.str(0, 19))};
  return k;
}

pricing::Micros charged_since(PgConn& db, const std::string& scope, const std::string& owner, std::int64_t since_ms) {
  const char* sql = scope == "key"
                        ? "SELECT (coalesce(sum(credits_deducted), 0) * 1000000)::bigint FROM usage_logs"
                          " WHERE api_key_id = $1::uuid AND created_at >= to_timestamp($2::bigint / 1000.0)"
                        : "SELECT (coalesce(sum(credits_deducted), 0) * 1000000)::bigint FROM usage_logs"
                          " WHERE user_id = $1::uuid AND created_at >= to_timestamp($2::bigint / 1000.0)";
  auto r = db.exec(sql, {owner, std::to_string(since_ms)});
  return r.i64(0, 0);
}

pricing::PricingSnapshotPtr load_pricing(PgConn& db) {
  using namespace pricing;
  std::unordered_map<std::string, ModelPrice> prices;
  auto p = db.exec("SELECT model, prompt_price::text, completion_price::text, coalesce(context_length, 0),"
                   " input_cache_read_price::text, input_cache_write_price::text, internal_reasoning_price::text,"
                   " request_price::text, image_price::text, web_search_price::text, image_output_price::text,"
                   " image_generation_price::text, coalesce(name, model), floor(extract(epoch FROM created_at))::bigint"
                   " FROM model_prices");
  for (int i = 0; i < p.rows(); ++i) {
    // A NULL price is nullopt ("not priced separately"); any other must parse.
    auto price_at = [&](int col) -> std::optional<Picos> {
      if (p.is_null(i, col)) return std::nullopt;
      auto v = parse_decimal(p.get(i, col), 12);
      if (!v) throw PgError("bad price for model " + p.str(i, 0), "");
      return v;
    };
    auto prompt = price_at(1), completion = price_at(2);
    if (!prompt || !completion) throw PgError("bad price for model " + p.str(i, 0), "");
    ModelPrice m{*prompt, *completion, p.i64(i, 3)};
    m.cache_read_per_token = price_at(4);
    m.cache_write_per_token = price_at(5);
    m.reasoning_per_token = price_at(6);
    m.per_request = price_at(7).value_or(0);
    m.per_image = price_at(8).value_or(0);
    m.per_web_search = price_at(9).value_or(0);
    m.image_output_per_token = price_at(10);
    m.per_generated_image = price_at(11).value_or(0);
    m.name = p.str(i, 12);
    m.created_at_s = p.i64(i, 13);
    prices.emplace(p.str(i, 0), std::move(m));
  }
  std::vector<PricingRule> rules;
  auto r = db.exec("SELECT model_pattern, (markup_percentage * 100)::bigint,"
                   " (min_cost_usd * 1000000)::bigint, priority FROM pricing_rules"
                   " WHERE is_active ORDER BY priority DESC, created_at, id");
  for (int i = 0; i < r.rows(); ++i)
    rules.push_back(PricingRule{r.str(i, 0), r.i64(i, 1), r.i64(i, 2), r.i64(i, 3)});
  return std::make_shared<const PricingSnapshot>(std::move(prices), std::move(rules));
}

std::optional<pricing::Micros> balance_of(PgConn& db, const std::string& user_id) {
  auto b = balance_and_version(db, user_id);
  return b ? std::optional<pricing::Micros>(b->first) : std::nullopt;
}

std::optional<std::pair<pricing::Micros, std::int64_t>> balance_and_version(PgConn& db, const std::string& user_id) {
  auto r = db.exec("SELECT (credits * 1000000)::bigint, version FROM balances WHERE user_id = $1", {user_id});
  if (r.rows() == 0) return std::nullopt;
  return std::make_pair(r.i64(0, 0), r.i64(0, 1));
}

std::string create_account(PgConn& db, const std::string& email) {
  if (email.find('@') == std::string::npos || email.size() > 320)
    throw std::invalid_argument("not an email address: " + email);
  try {
    return db.exec("INSERT INTO users (email) VALUES ($1) RETURNING id", {email}).str(0, 0);
  } catch (const PgError& e) {
    if (e.sqlstate == "23505") throw std::invalid_argument("an account with email " + email + " exists");
    if (e.sqlstate == "23514") throw std::invalid_argument("not an email address: " + email);
    throw;
  }
}

std::string resolve_account(PgConn& db, const std::string& account) {
  auto r = db.exec("SELECT id FROM users WHERE id::text = $1 OR email = $1", {account});
  if (r.rows() != 1) throw std::invalid_argument("no such account: " + account);
  return r.str(0, 0);
}

std::string add_credits(PgConn& db, const std::string& user_id, const std::string& usd,
                        const std::optional<std::string>& note) {
  auto micros = pricing::parse_decimal(usd, 6);
  auto exact = pricing::parse_decimal(usd, 12);
  if (!micros || !exact || *exact != *micros * pricing::picos_per_micro || *micros == 0)
    throw std::invalid_argument("amount must be a non-zero USD amount with at most 6 decimals: " + usd);
  auto r = db.exec("SELECT add_credits($1::uuid, $2::numeric, $3)::text",
                   {user_id, pricing::format_micros(*micros), note ? std::optional<std::string_view>(*note) : std::nullopt});
  return r.str(0, 0);
}

CreatedKey create_key(PgConn& db, const std::string& user_id, const std::optional<std::string>& name,
                      int expires_in_days) {
  if (expires_in_days < 0) throw std::invalid_argument("--expires-in must be a positive number of days");
  auto k = keys::generate_key();
  std::string days = std::to_string(expires_in_days);
  auto r = db.exec(
      "INSERT INTO api_keys (user_id, key_hash, key_prefix, name, expires_at)"
      " VALUES ($1, $2, $3, $4, CASE WHEN $5::int > 0 THEN now() + make_interval(days => $5::int) END)"
      " RETURNING id",
      {user_id, k.hash_hex, k.display_prefix, name ? std::optional<std::string_view>(*name) : std::nullopt, days});
  return CreatedKey{r.str(0, 0), std::move(k.raw), k.display_prefix};
}

std::vector<KeyListing> list_keys(PgConn& db, const std::string& user_id) {
  auto r = db.exec(
      "SELECT id, key_prefix, coalesce(name, ''),"
      " CASE WHEN NOT is_active THEN 'revoked'"
      "      WHEN expires_at IS NOT NULL AND expires_at <= now() THEN 'expired' ELSE 'active' END,"
      " coalesce(to_char(last_used_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), 'never'),"
      " to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'),"
      " coalesce(to_char(expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), 'never')"
      " FROM api_keys WHERE user_id = $1 ORDER BY created_at",
      {user_id});
  std::vector<KeyListing> out;
  for (int i = 0; i < r.rows(); ++i)
    out.push_back({r.str(i, 0), r.str(i, 1), r.str(i, 2), r.str(i, 3), r.str(i, 4), r.str(i, 5), r.str(i, 6)});
  return out;
}

namespace {
/// The id of the one key whose id or display prefix is `id_or_prefix`; nullopt when none.
std::optional<std::string> find_key_id(PgConn& db, const std::string& id_or_prefix, std::string_view what) {
  auto matches = db.exec("SELECT id FROM api_keys WHERE id::text = $1 OR key_prefix = $1", {id_or_prefix});
  if (matches.rows() > 1)
    throw std::invalid_argument("prefix " + id_or_prefix + " matches several keys; " + std::string(what) + " by id");
  if (matches.rows() == 0) return std::nullopt;
  return matches.str(0, 0);
}
}  // namespace

int revoke_key(PgConn& db, const std::string& id_or_prefix) {
  auto id = find_key_id(db, id_or_prefix, "revoke");
  if (!id) return 0;
  db.exec("UPDATE api_keys SET is_active = false WHERE id = $1", {*id});
  return 1;
}

int set_key_spend_limit(PgConn& db, const std::string& id_or_prefix, const std::optional<std::string>& usd,
                        const std::string& reset) {
  if (reset != "daily" && reset != "weekly" && reset != "monthly" && reset != "never")
    throw std::invalid_argument("limit reset must be daily, weekly, monthly or never, not " + reset);
  if (usd && !pricing::parse_decimal(*usd, 6)) throw std::invalid_argument("not a USD amount: " + *usd);
  auto id = find_key_id(db, id_or_prefix, "set its limit");
  if (!id) return 0;
  try {
    db.exec("UPDATE api_keys SET spend_limit_usd = $2::numeric, limit_reset = $3 WHERE id = $1",
            {*id, usd ? std::optional<std::string_view>(*usd) : std::nullopt, reset});
  } catch (const PgError& e) {
    throw std::invalid_argument("the limit must be 0 or more USD: " + std::string(e.what()));
  }
  return 1;
}

void upsert_model_price(PgConn& db, const std::string& model, const std::string& prompt_usd,
                        const std::string& completion_usd, std::int64_t context_length) {
  db.exec("INSERT INTO model_prices (model, prompt_price, completion_price, context_length)"
          " VALUES ($1, $2::numeric, $3::numeric, NULLIF($4::int, 0))"
          " ON CONFLICT (model) DO UPDATE SET prompt_price = EXCLUDED.prompt_price,"
          " completion_price = EXCLUDED.completion_price, context_length = EXCLUDED.context_length,"
          " updated_at = now()",
          {model, prompt_usd, completion_usd, std::to_string(context_length)});
}

}  // namespace tollgate::sql
