#pragma once
// Shared helpers for the RedisConnection integration tests: the real Redis at TOLLGATE_REDIS_URL
// (tests/run.sh starts it), argv building, and running a coroutine on a test's own event loop.
#include "ratelimit/redis_client.hpp"

#include <catch2/catch.hpp>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <chrono>
#include <cstdlib>
#include <exception>
#include <random>
#include <string>
#include <utility>
#include <vector>

namespace tollgate::test {

using Clock = std::chrono::steady_clock;

inline std::string redis_url() {
  const char* url = std::getenv("TOLLGATE_REDIS_URL");
  if (!url || !*url) FAIL("TOLLGATE_REDIS_URL is not set: run tests through tests/run.sh");
  return url;
}

/// A Redis key no other test uses: "tg:test:<prefix>:<random>".
inline std::string unique_key(const std::string& prefix) {
  static std::mt19937_64 rng{std::random_device{}()};
  return "tg:test:" + prefix + ":" + std::to_string(rng());
}

/// argv for a command. (GCC 12 cannot compile a braced list of strings inside a co_await
/// expression — "array used as initializer" — so tests build argv with this.)
template <class... A>
std::vector<std::string> args(A&&... a) {
  return {std::string(std::forward<A>(a))...};
}

inline long long ms_since(Clock::time_point t0) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t0).count();
}

/// Runs `task` on `ioc` (on this thread, so Catch2 assertions inside are fine) and rethrows what it
/// threw. Stops the loop when the task ends: a connected RedisConnection always has a read pending.
inline void run(boost::asio::io_context& ioc, boost::asio::awaitable<void> task) {
  std::exception_ptr error;
  bool finished = false;
  boost::asio::co_spawn(ioc, std::move(task), [&](std::exception_ptr e) {
    error = e;
    finished = true;
    ioc.stop();
  });
  ioc.run_for(std::chrono::seconds(10));
  ioc.restart();
  REQUIRE(finished);  // else the task hung
  if (error) std::rethrow_exception(error);
}

inline boost::asio::awaitable<void> sleep_for(std::chrono::milliseconds d) {
  boost::asio::steady_timer t(co_await boost::asio::this_coro::executor);
  t.expires_after(d);
  co_await t.async_wait(boost::asio::use_awaitable);
}

/// CLIENT ID of the connection `c` is on (changes when it reconnects).
inline boost::asio::awaitable<long long> client_id(ratelimit::RedisConnection& c) {
  auto [ec, r] = co_await c.command(args("CLIENT", "ID"), std::chrono::seconds(1));
  REQUIRE_FALSE(ec);
  REQUIRE(r.type == ratelimit::RedisReply::Type::integer);
  co_return r.integer;
}

}  // namespace tollgate::test
