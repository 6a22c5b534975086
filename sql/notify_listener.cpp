#include "sql/notify_listener.hpp"

#include <spdlog/spdlog.h>

#include <poll.h>

namespace tollgate::sql {

NotifyListener::NotifyListener(std::string url, OnNotify on_notify, OnConnect on_connect,
                               std::chrono::milliseconds poll)
    : url_(std::move(url)), on_notify_(std::move(on_notify)), on_connect_(std::move(on_connect)),
      poll_(poll) {}

NotifyListener::~NotifyListener() { stop(); }

void NotifyListener::connect_and_listen() {
  conn_ = std::make_unique<PgConn>(url_, std::chrono::seconds(30));
  conn_->exec("LISTEN tollgate_api_keys");
  conn_->exec("LISTEN tollgate_accounts");
  conn_->exec("LISTEN tollgate_pricing");
  conn_->exec("LISTEN tollgate_balances");
  conn_->exec("LISTEN tollgate_routes");
  on_connect_(*conn_);
}

void NotifyListener::start() {
  connect_and_listen();
  thread_ = std::thread([this] { run(); });
}

void NotifyListener::stop() {
  stopping_ = true;
  if (thread_.joinable()) thread_.join();
}

void NotifyListener::run() {
  auto backoff = std::chrono::milliseconds(100);
  while (!stopping_) {
    try {
      if (!conn_ || !conn_->healthy()) {
        conn_.reset();
        connect_and_listen();
        spdlog::info("notify listener: reconnected to PostgreSQL");
        backoff = std::chrono::milliseconds(100);
      }
      pollfd pfd{PQsocket(conn_->raw()), POLLIN, 0};
      int rc = ::poll(&pfd, 1, static_cast<int>(poll_.count()));
      if (rc < 0 && errno != EINTR) throw PgError("poll failed", "");
      if (PQconsumeInput(conn_->raw()) == 0) throw PgError(PQerrorMessage(conn_->raw()), "");
      while (PGnotify* n = PQnotifies(conn_->raw())) {
        std::string channel = n->relname, payload = n->extra;
        PQfreemem(n);
        on_notify_(*conn_, channel, payload);
      }
    } catch (const std::exception& e) {
      spdlog::warn("notify listener: {}; reconnecting in {} ms", e.what(), backoff.count());
      conn_.reset();
      for (auto slept = std::chrono::milliseconds(0); slept < backoff && !stopping_; slept += std::chrono::milliseconds(50))
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
      backoff = std::min(backoff * 2, max_backoff);
    }
  }
}

}  // namespace tollgate::sql
