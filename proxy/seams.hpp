#pragma once
// The request path's external seams, each a narrow interface (DESIGN.md: "every external seam
// behind a narrow interface"). main.cpp and server.cpp wire the concrete classes — Postgres
// (PgKeySource), Redis (RedisAdmission over ratelimit::Admitter), the usage writer
// (sql::UsageWriter), the per-thread upstream pools (UpstreamPools) and the self-service
// reports (PgAccountSource); the request-path unit
// tests (tests/unit/request_path_test.cpp) wire fakes.
#include "keys/key_cache.hpp"
#include "pricing/money.hpp"
#include "ratelimit/admission.hpp"
#include "routing/route_table.hpp"
#include "sql/account_queries.hpp"

#include <boost/asio/awaitable.hpp>

#include <memory>
#include <optional>
#include <string>

namespace tollgate {

struct UpstreamConnection;  // proxy/upstream.hpp

/// Where API keys and balances come from (Postgres). Both calls may throw (std::exception) when
/// the source cannot answer; the caller answers 503.
class KeySource {
 public:
  virtual ~KeySource() = default;
  /// The key whose SHA-256 hex is `key_hash`, or nullopt when there is no such key.
  virtual boost::asio::awaitable<std::optional<keys::KeyRecord>> find_key(std::string key_hash) = 0;
  /// The account's balance in credit units (1e-6 USD), or nullopt when there is no account.
  /// Only used when admission (Redis) is off or fails open.
  virtual boost::asio::awaitable<std::optional<pricing::Micros>> balance(std::string account) = 0;
};

/// What the self-service endpoints report (GET /api/v1/key, /credits, /generation;
/// proxy/self_service.cpp), read from Postgres off the event loop. Amounts in credit units
/// (1e-6 USD), always the customer's charges, never the operator's cost. Every call may throw
/// (std::exception) when the source cannot answer; the caller answers 503.
class AccountSource {
 public:
  virtual ~AccountSource() = default;
  /// The key `key_id` of account `account` with its charges (all time, this UTC day, ISO week,
  /// month, and its limit period); nullopt when the key is gone.
  virtual boost::asio::awaitable<std::optional<sql::KeyUsage>> key_usage(std::string key_id, std::string account) = 0;
  /// The account's total credits and total usage (sql::AccountCredits).
  virtual boost::asio::awaitable<sql::AccountCredits> credits(std::string account) = 0;
  /// The account's committed usage row with request id or generation id `id`; nullopt: none.
  virtual boost::asio::awaitable<std::optional<sql::Generation>> generation(std::string account, std::string id) = 0;
};

/// Admission (Redis): the sliding-window rate limits and the balance hold of one request in
/// one round trip, and its settle afterwards. One per event-loop thread; call on that thread.
class AdmissionPort {
 public:
  virtual ~AdmissionPort() = default;
  /// Holds `worst` credit units on the key's account and counts 1 request and `tokens` against
  /// every window. Never throws: Redis trouble is Verdict::unavailable.
  virtual boost::asio::awaitable<ratelimit::Admission> admit(const keys::KeyRecord& key, const std::string& request_id,
                                                             pricing::Micros worst, std::int64_t tokens) = 0;
  /// Replaces the hold with the real charge and corrects the token windows, off the request
  /// path (batched). Exactly once per admitted request.
  virtual void settle(ratelimit::Settlement s) = 0;
};

/// Connections to upstreams: keep-alive pools per upstream origin and event-loop thread
/// (proxy/upstream.hpp). Call on the thread that owns it.
class UpstreamConnector {
 public:
  virtual ~UpstreamConnector() = default;
  /// An idle connection to `u` if one is pooled, else a new one (resolve, connect, TLS with
  /// verification and SNI) within u.connect_timeout. Throws boost::system::system_error.
  virtual boost::asio::awaitable<std::unique_ptr<UpstreamConnection>> acquire(const routing::Upstream& u) = 0;
  /// Returns a connection to `u` whose last response was read completely and allows keep-alive.
  virtual void release(const routing::Upstream& u, std::unique_ptr<UpstreamConnection> c) = 0;
};

}  // namespace tollgate
