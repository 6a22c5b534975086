// tollgate: the one binary. `serve` runs the proxy; the other subcommands are the operator's
// tools. This is the only place where concrete classes are wired together.
#include "keys/key_cache.hpp"
#include "proxy/alerts.hpp"
#include "proxy/app.hpp"
#include "proxy/config.hpp"
#include "proxy/concrete_seams.hpp"
#include "proxy/lookup_pool.hpp"
#include "proxy/prices_sync.hpp"
#include "proxy/routing_cli.hpp"
#include "proxy/recovery.hpp"
#include "proxy/server.hpp"
#include "proxy/upstream.hpp"
#include "ratelimit/admission.hpp"
#include "sql/alert_outbox.hpp"
#include "sql/notify_listener.hpp"
#include "sql/route_store.hpp"
#include "sql/store.hpp"
#include "sql/usage_writer.hpp"

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <csignal>

#include <sys/resource.h>
#include <sstream>
#include <fstream>
#include <iostream>
#include <thread>

using namespace tollgate;

namespace {

/// Loads every key hash of api_keys into the filter, 50,000 rows at a time (a server-side
/// cursor: a million keys never sit in memory as strings). ~1 s per million keys.
void load_key_filter(sql::PgConn& db, keys::KeyFilter& filter) {
  auto started = std::chrono::steady_clock::now();
  // Sized from the planner's row estimate (no second scan of the table); the set grows if more.
  std::size_t n = static_cast<std::size_t>(
      db.exec("SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE oid = 'api_keys'::regclass").i64(0, 0));
  std::size_t loaded = 0;
  db.exec("BEGIN");
  try {
    db.exec("DECLARE tollgate_key_hashes NO SCROLL CURSOR FOR SELECT key_hash FROM api_keys");
    filter.load(n, [&](const keys::KeyFilter::AddFn& add) {
      for (;;) {
        auto r = db.exec("FETCH 50000 FROM tollgate_key_hashes");
        if (r.rows() == 0) break;
        for (int i = 0; i < r.rows(); ++i) add(r.get(i, 0));
        loaded += static_cast<std::size_t>(r.rows());
      }
    });
    db.exec("COMMIT");
  } catch (...) {
    try {
      if (db.healthy()) db.exec("ROLLBACK");
    } catch (...) {  // the listener reconnects anyway
    }
    throw;
  }
  spdlog::info("key filter: {} key(s) loaded in {} ms", filter.size(),
               std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - started).count());
}

/// Raises the soft limit on open files to the hard limit (as Go's runtime and nginx's
/// worker_rlimit_nofile do): every connection costs a descriptor, and the default soft limit
/// (1,024) is far below max_connections. At the limit, accept backs off (server.cpp).
void raise_open_file_limit() {
  rlimit lim{};
  if (getrlimit(RLIMIT_NOFILE, &lim) != 0 || lim.rlim_cur >= lim.rlim_max) return;
  rlim_t was = lim.rlim_cur;
  lim.rlim_cur = lim.rlim_max;
  if (setrlimit(RLIMIT_NOFILE, &lim) == 0)
    spdlog::info("open file limit raised from {} to {}", was, lim.rlim_cur);
}

int serve(const Config& cfg, const std::optional<std::string>& port_file,
          const std::optional<std::string>& admin_port_file) {
  // Block SIGTERM and SIGINT before any thread starts (the NOTIFY listener, the usage writer,
  // the lookup pool, the event loops): threads inherit the mask, so the signals reach only the
  // signal thread's sigwait() below and the graceful stop runs.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);
  raise_open_file_limit();
  {
    sql::PgConn db(cfg.database_url);  // fail fast with a clear message if Postgres is down
    if (db.exec("SELECT 1 FROM pg_tables WHERE tablename = 'schema_migrations'").rows() == 0)
      throw std::runtime_error("the database has no tollgate schema: run `tollgate migrate` first");
  }
  keys::KeyCache key_cache(cfg.key_cache_capacity, cfg.key_cache_ttl, cfg.key_cache_negative_ttl,
                           cfg.key_cache_stale_if_error);
  keys::KeyFilter key_filter;
  std::atomic<pricing::PricingSnapshotPtr> pricing;
  // Upstreams and model routes, reloaded on NOTIFY tollgate_routes: every request picks its
  // upstreams from the table current when it was routed.
  routing::CircuitRegistry circuits(cfg.routing.circuit);
  std::atomic<routing::RouteTablePtr> routes;
  auto reload_routes = [&](sql::PgConn& db) {
    routes.store(sql::load_route_table(db, cfg.default_upstream(), circuits));
    auto table = routes.load();
    spdlog::info("routes loaded: {} upstream(s), {} route(s){}, {} unusable", table->upstreams().size(),
                 table->routes().size(), table->from_config() ? " (the configured [upstream])" : "",
                 table->unusable().size());
  };
  // Blocking Redis clients for the two threads that keep Redis' balance cache in step with
  // Postgres: the NOTIFY listener (top-ups) and the usage writer (committed batches).
  std::optional<ratelimit::RedisSyncClient> listener_redis;
  if (cfg.admission.enabled) listener_redis.emplace(ratelimit::parse_redis_url(cfg.redis_url), std::chrono::milliseconds(500));
  sql::NotifyListener listener(
      cfg.database_url,
      [&](sql::PgConn& db, const std::string& channel, const std::string& payload) {
        if (channel == "tollgate_balances") {
          // "account version credits_micros": install if newer, on every instance.
          std::istringstream in(payload);
          std::string account;
          std::int64_t version = 0, credits = 0;
          if (listener_redis && (in >> account >> version >> credits))
            ratelimit::sync_balance(*listener_redis, account, credits, version, {});
        } else if (channel == "tollgate_api_keys") {
          key_filter.add(payload);  // a new key (or a changed one: already in)
          key_cache.erase(payload);
        }
        else if (channel == "tollgate_accounts") key_cache.erase_user(payload);
        else if (channel == "tollgate_pricing") {
          pricing.store(sql::load_pricing(db));
          spdlog::info("pricing reloaded ({} changed)", payload);
        } else if (channel == "tollgate_routes") {
          reload_routes(db);
        }
      },
      [&](sql::PgConn& db) {
        key_cache.clear();  // notifications may have been missed while disconnected
        load_key_filter(db, key_filter);
        pricing.store(sql::load_pricing(db));
        reload_routes(db);
      });
  listener.start();
  sql::UsageWriter usage(cfg.journal_dir, cfg.database_url, cfg.usage_batch_rows, cfg.usage_max_delay, 2,
                         cfg.usage_max_queued);
  if (cfg.admission.enabled) {
    auto writer_redis = std::make_shared<ratelimit::RedisSyncClient>(ratelimit::parse_redis_url(cfg.redis_url),
                                                                     std::chrono::milliseconds(500));
    usage.on_committed([writer_redis](const std::vector<sql::CommittedAccount>& accounts) {
      for (const auto& a : accounts)
        if (!ratelimit::sync_balance(*writer_redis, a.account, a.credits, a.version, a.charged_request_ids))
          return false;
      return true;
    });
  }
  // After the usage writer: its lock on the journal folder makes this process the intents' only
  // writer, and its replay of leftover records comes before the interrupted ones.
  sql::IntentJournal intents(cfg.journal_dir);
  std::vector<ratelimit::Settlement> recovered_holds;
  if (!intents.recovered().empty()) {
    sql::PgConn db(cfg.database_url);
    recovered_holds = record_interrupted(intents, usage, *sql::load_pricing(db));
  }
  usage.start();
  LookupPool lookups(cfg.database_url, cfg.lookup_threads);
  auto tls = make_upstream_tls_context();
  PgKeySource key_source(lookups);
  App app{cfg, key_cache, key_filter, pricing, key_source, lookups, usage, intents, tls, routes, circuits, {}};
  PgAccountSource account_source(lookups);
  app.accounts = &account_source;
  Server server(app);
  // Operator alerts: its own thread (libpq and an HTTP client), never a request's event loop.
  AlertDelivery alerts(app);
  alerts.start();
  server.settle(std::move(recovered_holds));  // the interrupted requests' holds leave Redis

  // Signals are taken by a dedicated thread (blocked since the start of serve()) so the stop
  // sequence can block.
  std::thread signals([&] {
    int sig = 0;
    sigwait(&stop_signals, &sig);
    spdlog::info("signal {}: stopping; requests in flight get up to {} ms", sig, cfg.drain_timeout.count());
    server.stop(cfg.drain_timeout);
  });

  spdlog::info("tollgate listening on {}:{} → upstream {}://{}:{}{}; admin on {}:{}", cfg.listen_host, server.port(),
               cfg.upstream.tls ? "https" : "http", cfg.upstream.host, cfg.upstream.port, cfg.upstream.base_path,
               cfg.admin_host, server.admin_port());
  // How many secrets, never which.
  if (cfg.stripe_webhook_secrets.empty()) spdlog::info("stripe webhooks: off (no stripe.webhook_secrets; /webhooks/stripe answers 404)");
  else spdlog::info("stripe webhooks: on, {} secret(s), tolerance {} s", cfg.stripe_webhook_secrets.size(), cfg.stripe_tolerance.count());
  if (admin_port_file) std::ofstream(*admin_port_file) << server.admin_port() << "\n";
  if (port_file) std::ofstream(*port_file) << server.port() << "\n";
  server.run();

  pthread_kill(signals.native_handle(), SIGTERM);  // no-op if the thread already returned
  signals.join();
  lookups.stop();
  listener.stop();
  alerts.stop();  // spend_limit.reached events not yet in the outbox are lost; the outbox is not
  usage.stop(std::chrono::seconds(10));  // what Postgres cannot take now stays in the journal
  auto s = usage.stats();
  spdlog::info("stopped: {} usage record(s) committed, {} left in the journal for replay", s.committed, s.queued);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App cli{"tollgate — an edge proxy that sells LLM access by the token"};
  cli.require_subcommand(1);
  std::optional<std::string> config_path;
  cli.add_option("--config", config_path, "TOML configuration file (see deploy/tollgate.example.toml)");

  auto* serve_cmd = cli.add_subcommand("serve", "Run the proxy");
  std::optional<std::string> port_file;
  serve_cmd->add_option("--port-file", port_file, "Write the bound port here once listening");
  std::optional<std::string> admin_port_file;
  serve_cmd->add_option("--admin-port-file", admin_port_file, "Write the admin listener's bound port here");

  auto* migrate_cmd = cli.add_subcommand("migrate", "Apply sql/ migrations (idempotent)");

  auto* accounts = cli.add_subcommand("accounts", "Manage accounts")->require_subcommand(1);
  std::string email;
  auto* acc_create = accounts->add_subcommand("create", "Create an account");
  acc_create->add_option("EMAIL", email)->required();
  std::string alert_account, alert_usd;
  auto* acc_alert = accounts->add_subcommand("set-low-balance-alert",
                                             "Send balance.low when the balance falls below USD (alerts.url)");
  acc_alert->add_option("ACCOUNT", alert_account, "Account id or email")->required();
  acc_alert->add_option("USD", alert_usd, "Threshold in USD, e.g. 5, or 'none'")->required();

  auto* credits = cli.add_subcommand("credits", "Manage prepaid balances")->require_subcommand(1);
  std::string account, usd;
  std::optional<std::string> note;
  auto* credits_add = credits->add_subcommand("add", "Add credits (USD) to an account");
  credits_add->add_option("ACCOUNT", account, "Account id or email")->required();
  credits_add->add_option("USD", usd, "Amount in USD, e.g. 5 or 0.25 (negative removes)")->required();
  credits_add->add_option("--note", note, "Ledger description");

  auto* keys_cmd = cli.add_subcommand("keys", "Manage API keys")->require_subcommand(1);
  std::optional<std::string> key_name;
  int expires_in = 0;
  std::string key_ref;
  auto* keys_create = keys_cmd->add_subcommand("create", "Create an API key (printed once)");
  keys_create->add_option("ACCOUNT", account, "Account id or email")->required();
  keys_create->add_option("--name", key_name, "A name for the key");
  keys_create->add_option("--expires-in", expires_in, "Days until the key expires")->check(CLI::PositiveNumber);
  std::optional<std::string> limit_usd;
  std::string limit_reset = "never";
  const auto resets = CLI::IsMember({"daily", "weekly", "monthly", "never"});
  keys_create->add_option("--limit", limit_usd, "Spend limit in USD per period (default: none)");
  keys_create->add_option("--limit-reset", limit_reset, "When the limit starts over: daily, weekly, monthly (UTC) or never")
      ->check(resets);
  auto* keys_set_limit = keys_cmd->add_subcommand("set-limit", "Set or remove a key's spend limit");
  keys_set_limit->add_option("KEY_ID_OR_PREFIX", key_ref)->required();
  keys_set_limit->add_option("USD", limit_usd, "Spend limit in USD per period, or 'none'")->required();
  keys_set_limit->add_option("--limit-reset", limit_reset, "daily, weekly, monthly (UTC) or never (default)")
      ->check(resets);
  auto* keys_list = keys_cmd->add_subcommand("list", "List an account's keys");
  keys_list->add_option("ACCOUNT", account, "Account id or email")->required();
  auto* keys_revoke = keys_cmd->add_subcommand("revoke", "Revoke a key");
  keys_revoke->add_option("KEY_ID_OR_PREFIX", key_ref)->required();

  auto* prices = cli.add_subcommand("prices", "Manage model prices")->require_subcommand(1);
  std::string model, prompt_usd, completion_usd;
  std::int64_t context_length = 0;
  auto* prices_set = prices->add_subcommand("set", "Set a model's price (USD per token)");
  prices_set->add_option("MODEL", model)->required();
  prices_set->add_option("PROMPT_USD_PER_TOKEN", prompt_usd)->required();
  prices_set->add_option("COMPLETION_USD_PER_TOKEN", completion_usd)->required();
  prices_set->add_option("--context-length", context_length);
  std::string sync_from, sync_only;
  auto* prices_sync = prices->add_subcommand("sync", "Fill model_prices from an upstream's /models (OpenRouter shape)");
  prices_sync->add_option("--from", sync_from, "The upstream's base URL, e.g. https://openrouter.ai/api/v1")->required();
  prices_sync->add_option("--only", sync_only, "Only the models matching this glob, e.g. 'openai/*'");

  RoutingCommands routing_cmds(cli);

  CLI11_PARSE(cli, argc, argv);

  try {
    Config cfg = Config::load(config_path);
    if (serve_cmd->parsed()) return serve(cfg, port_file, admin_port_file);
    sql::PgConn db(cfg.database_url);
    if (migrate_cmd->parsed()) {
      auto applied = sql::migrate(db);
      if (applied.empty()) fmt::print("schema is up to date\n");
      for (const auto& m : applied) fmt::print("applied {}\n", m);
    } else if (acc_alert->parsed()) {
      auto user = sql::resolve_account(db, alert_account);
      std::optional<std::string> usd = alert_usd == "none" ? std::nullopt : std::optional(alert_usd);
      sql::set_low_balance_alert(db, user, usd);
      fmt::print("low-balance alert of {}: {}\n", alert_account, usd ? "below $" + *usd : std::string("none"));
    } else if (acc_create->parsed()) {
      fmt::print("{}\n", sql::create_account(db, email));
    } else if (credits_add->parsed()) {
      auto user = sql::resolve_account(db, account);
      fmt::print("balance: {} USD\n", sql::add_credits(db, user, usd, note));
    } else if (keys_create->parsed()) {
      auto user = sql::resolve_account(db, account);
      auto k = sql::create_key(db, user, key_name, expires_in);
      if (limit_usd) sql::set_key_spend_limit(db, k.key_id, limit_usd, limit_reset);
      fmt::print("{}\n", k.raw_key);
      fmt::print(stderr, "key id {} ({}…): store it now, it is not shown again\n", k.key_id, k.display_prefix);
    } else if (keys_list->parsed()) {
      auto user = sql::resolve_account(db, account);
      fmt::print("{:<36}  {:<14} {:<8} {:<20} {:<20} {}\n", "ID", "PREFIX", "STATUS", "LAST USED", "EXPIRES", "NAME");
      for (const auto& k : sql::list_keys(db, user))
        fmt::print("{:<36}  {:<14} {:<8} {:<20} {:<20} {}\n", k.key_id, k.key_prefix, k.status, k.last_used_at,
                   k.expires_at, k.name);
    } else if (keys_set_limit->parsed()) {
      std::optional<std::string> usd = limit_usd == "none" ? std::nullopt : limit_usd;
      if (sql::set_key_spend_limit(db, key_ref, usd, limit_reset) == 0)
        throw std::invalid_argument("no such key: " + key_ref);
      fmt::print("limit of {} set: {}\n", key_ref, usd ? "$" + *usd + " " + limit_reset : std::string("none"));
    } else if (keys_revoke->parsed()) {
      if (sql::revoke_key(db, key_ref) == 0) throw std::invalid_argument("no such key: " + key_ref);
      fmt::print("revoked {}\n", key_ref);
    } else if (routing_cmds.parsed()) {
      routing_cmds.run(db);
    } else if (prices_set->parsed()) {
      sql::upsert_model_price(db, model, prompt_usd, completion_usd, context_length);
      fmt::print("price of {} set\n", model);
    } else if (prices_sync->parsed()) {
      auto r = sync_prices(db, sync_from, sync_only);
      fmt::print("{} model price(s) synced, {} skipped\n", r.upserted, r.skipped);
    }
    return 0;
  } catch (const std::invalid_argument& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
}
