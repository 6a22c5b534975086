#pragma once
// The production side of the request path's seams (proxy/seams.hpp): API keys, balances and
// the self-service reports from Postgres through the lookup pool, admission through this
// thread's Redis Admitter.
// Wired by main.cpp and server.cpp.
#include "proxy/lookup_pool.hpp"
#include "proxy/seams.hpp"
#include "sql/account_queries.hpp"
#include "sql/store.hpp"

namespace tollgate {

/// KeySource over Postgres (sql/store.hpp), each query on the lookup pool's threads.
class PgKeySource final : public KeySource {
 public:
  explicit PgKeySource(LookupPool& lookups) : lookups_(lookups) {}
  boost::asio::awaitable<std::optional<keys::KeyRecord>> find_key(std::string key_hash) override {
    // A named lambda: GCC 12 double-destroys lambda temporaries inside co_await expressions.
    auto query = [hash = std::move(key_hash)](sql::PgConn& db) { return sql::lookup_key(db, hash); };
    co_return co_await lookups_.run(query);
  }
  boost::asio::awaitable<std::optional<pricing::Micros>> balance(std::string account) override {
    auto query = [user = std::move(account)](sql::PgConn& db) { return sql::balance_of(db, user); };
    co_return co_await lookups_.run(query);
  }

 private:
  LookupPool& lookups_;
};

/// AccountSource over Postgres (sql/account_queries.hpp), each query on the lookup pool's threads.
class PgAccountSource final : public AccountSource {
 public:
  explicit PgAccountSource(LookupPool& lookups) : lookups_(lookups) {}
  boost::asio::awaitable<std::optional<sql::KeyUsage>> key_usage(std::string key_id, std::string account) override {
    auto query = [key = std::move(key_id), user = std::move(account)](sql::PgConn& db) {
      return sql::key_usage(db, key, user);
    };
    co_return co_await lookups_.run(query);
  }
  boost::asio::awaitable<sql::AccountCredits> credits(std::string account) override {
    auto query = [user = std::move(account)](sql::PgConn& db) { return sql::account_credits(db, user); };
    co_return co_await lookups_.run(query);
  }
  boost::asio::awaitable<std::optional<sql::Generation>> generation(std::string account, std::string id) override {
    auto query = [user = std::move(account), gid = std::move(id)](sql::PgConn& db) {
      return sql::find_generation(db, user, gid);
    };
    co_return co_await lookups_.run(query);
  }

 private:
  LookupPool& lookups_;
};

/// AdmissionPort over one event loop's ratelimit::Admitter (Redis).
class RedisAdmission final : public AdmissionPort {
 public:
  explicit RedisAdmission(ratelimit::Admitter& a) : a_(a) {}
  boost::asio::awaitable<ratelimit::Admission> admit(const keys::KeyRecord& key, const std::string& request_id,
                                                     pricing::Micros worst, std::int64_t tokens) override {
    co_return co_await a_.admit(key, request_id, worst, tokens);
  }
  void settle(ratelimit::Settlement s) override { a_.settle(std::move(s)); }

 private:
  ratelimit::Admitter& a_;
};

}  // namespace tollgate
