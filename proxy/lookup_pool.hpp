#pragma once
// Blocking Postgres work (key lookups and balance checks on a cache miss) run on a small
// thread pool, each thread with its own connection, awaited from the event loop without
// blocking it. Every statement runs under the connection's statement_timeout.
#include "sql/pg.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/async_result.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <exception>
#include <memory>
#include <optional>
#include <string>

namespace tollgate {

class LookupPool {
 public:
  LookupPool(std::string database_url, int threads)
      : url_(std::move(database_url)), pool_(static_cast<std::size_t>(threads)) {}
  ~LookupPool() { pool_.join(); }

  void stop() { pool_.stop(); }

  /// Runs `fn(sql::PgConn&)` on a pool thread and resumes the caller on its own executor with
  /// the result. A broken connection is reopened on the next call (healthy() check). Exceptions
  /// from `fn` (e.g. sql::PgError) are rethrown in the caller.
  /// (Deliberately not a coroutine itself: GCC 12 destroys a by-value lambda argument of a
  /// coroutine twice.)
  template <class F>
  auto run(F fn) -> boost::asio::awaitable<decltype(fn(std::declval<sql::PgConn&>()))> {
    using R = decltype(fn(std::declval<sql::PgConn&>()));
    auto init = [this, fn = std::move(fn)](auto handler) mutable {
      boost::asio::post(pool_, [this, fn = std::move(fn), handler = std::move(handler)]() mutable {
        std::exception_ptr ep;
        std::optional<R> result;
        try {
          result.emplace(fn(connection()));
        } catch (...) {
          ep = std::current_exception();
        }
        auto ex = boost::asio::get_associated_executor(handler);
        boost::asio::dispatch(ex, [handler = std::move(handler), ep, result = std::move(result)]() mutable {
          std::move(handler)(ep, result ? std::move(*result) : R{});
        });
      });
    };
    return boost::asio::async_initiate<decltype(boost::asio::use_awaitable), void(std::exception_ptr, R)>(
        std::move(init), boost::asio::use_awaitable);
  }

 private:
  sql::PgConn& connection() {
    thread_local std::unique_ptr<sql::PgConn> conn;
    thread_local const LookupPool* owner = nullptr;
    if (!conn || owner != this || !conn->healthy()) {
      conn.reset();
      conn = std::make_unique<sql::PgConn>(url_, std::chrono::seconds(5));
      owner = this;
    }
    return *conn;
  }

  std::string url_;
  boost::asio::thread_pool pool_;
};

}  // namespace tollgate
