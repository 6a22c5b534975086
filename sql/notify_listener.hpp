#pragma once
// Keeps in-process caches true: a thread that LISTENs on tollgate's channels and calls back
// on every notification. Channels (sql/migrations/0002_functions.sql):
//   tollgate_api_keys  payload = key hash      → drop that key from the cache
//   tollgate_accounts  payload = account id    → drop that account's keys
//   tollgate_pricing   payload = table name    → reload the pricing snapshot
//   tollgate_balances  payload = "account version credits_micros" → refresh Redis' balance cache
//   tollgate_routes    payload = table name    → reload the route table (0007_upstreams.sql)
// A notification arrives within milliseconds of the commit; the thread wakes at least every
// `poll` to notice a lost connection. After a reconnect `on_reconnect` runs (notifications may
// have been missed: callers drop caches and reload). Reconnect attempts back off from 100 ms to
// `max_backoff` (500 ms): a key revoked just after a PostgreSQL outage, whose NOTIFY nobody
// heard, is dropped by the reconnect at most that long after PostgreSQL is back.
#include "sql/pg.hpp"

#include <atomic>
#include <chrono>
#include <functional>
#include <string>
#include <thread>

namespace tollgate::sql {

class NotifyListener {
 public:
  using OnNotify = std::function<void(PgConn&, const std::string& channel, const std::string& payload)>;
  using OnConnect = std::function<void(PgConn&)>;

  /// The longest wait between two reconnect attempts.
  static constexpr std::chrono::milliseconds max_backoff{500};

  NotifyListener(std::string database_url, OnNotify on_notify, OnConnect on_connect,
                 std::chrono::milliseconds poll = std::chrono::milliseconds(200));
  ~NotifyListener();

  /// Connects and LISTENs once in the calling thread (throws PgError), then keeps listening
  /// in a background thread, reconnecting with backoff.
  void start();
  void stop();

 private:
  void connect_and_listen();
  void run();

  std::string url_;
  OnNotify on_notify_;
  OnConnect on_connect_;
  std::chrono::milliseconds poll_;
  std::unique_ptr<PgConn> conn_;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

}  // namespace tollgate::sql
