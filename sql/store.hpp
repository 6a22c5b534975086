#pragma once
// The queries tollgate runs against Postgres: migrations, key lookup, pricing snapshot,
// balance, and the operator commands behind `tollgate accounts|credits|keys`.
// All blocking; call them off the event loop. Errors: PgError (sql/pg.hpp) or
// std::invalid_argument for bad operator input.
#include "keys/key_cache.hpp"
#include "pricing/money.hpp"
#include "pricing/pricing.hpp"
#include "sql/pg.hpp"

#include <optional>
#include <string>
#include <vector>

namespace tollgate::sql {

/// Applies the embedded sql/migrations/*.sql in file-name order, each once, each in its own
/// transaction, recorded in `schema_migrations`. Returns the names applied now.
/// Safe to run concurrently from several instances (advisory lock).
std::vector<std::string> migrate(PgConn& db);

/// The migrations compiled into the binary: (file name, SQL), sorted by name.
const std::vector<std::pair<std::string, std::string>>& embedded_migrations();

/// Looks a key up by its SHA-256 hex hash; nullopt if no such key.
std::optional<keys::KeyRecord> lookup_key(PgConn& db, const std::string& key_hash);

/// Loads `model_prices` (every price component, the display name — the model id when NULL — and
/// created_at as Unix seconds) and active `pricing_rules` into an immutable snapshot.
pricing::PricingSnapshotPtr load_pricing(PgConn& db);

/// The account's balance in credit units (1e-6 USD); nullopt if the account has no balance row.
std::optional<pricing::Micros> balance_of(PgConn& db, const std::string& user_id);

/// The account's balance (credit units) and its version (bumped on every change).
std::optional<std::pair<pricing::Micros, std::int64_t>> balance_and_version(PgConn& db, const std::string& user_id);

/// What a key (`scope` "key": api_keys.id) or an account ("account": users.id) was charged,
/// credit units (1e-6 USD): Σ usage_logs.credits_deducted of rows created at or after
/// `since_ms` (Unix ms; the start of a spend limit's period). Indexes
/// usage_logs_api_key_created_idx (migration 0013) and usage_logs_user_created_idx.
pricing::Micros charged_since(PgConn& db, const std::string& scope, const std::string& owner, std::int64_t since_ms);

// ---- operator commands ----

/// Creates an account (users row; balance and rate_limits rows by trigger). Returns its id.
std::string create_account(PgConn& db, const std::string& email);
/// Resolves an account given as uuid or email. Throws std::invalid_argument if unknown.
std::string resolve_account(PgConn& db, const std::string& account);
/// add_credits(): amount as a decimal USD string. Returns the new balance (USD text).
std::string add_credits(PgConn& db, const std::string& user_id, const std::string& usd,
                        const std::optional<std::string>& note);

struct CreatedKey {
  std::string key_id;
  std::string raw_key;  ///< shown once, never stored
  std::string display_prefix;
};
/// Mints and stores a key; `expires_in_days` 0 = never.
CreatedKey create_key(PgConn& db, const std::string& user_id, const std::optional<std::string>& name,
                      int expires_in_days);

struct KeyListing {
  std::string key_id, key_prefix, name, status, last_used_at, created_at, expires_at;
};
std::vector<KeyListing> list_keys(PgConn& db, const std::string& user_id);

/// Revokes a key by id (uuid) or display prefix; returns how many keys were revoked
/// (0 = none matched; a prefix matching several keys throws std::invalid_argument).
int revoke_key(PgConn& db, const std::string& id_or_prefix);

/// Sets a key's spend limit (USD, decimal string; nullopt: none) and when it starts over
/// ("daily" | "weekly" | "monthly" | "never", calendar UTC). Returns how many keys changed (0:
/// none matched). Every instance drops the key from its cache (NOTIFY); the new limit applies
/// to the next request. Throws std::invalid_argument for a bad amount or reset.
int set_key_spend_limit(PgConn& db, const std::string& id_or_prefix, const std::optional<std::string>& usd,
                        const std::string& reset);

/// Inserts or updates a model price (USD per token, decimal strings).
void upsert_model_price(PgConn& db, const std::string& model, const std::string& prompt_usd,
                        const std::string& completion_usd, std::int64_t context_length);

}  // namespace tollgate::sql
