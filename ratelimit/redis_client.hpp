#pragma once
// Redis clients for tollgate (hiredis 0.14, RESP2):
//  - RedisConnection: one pipelined, asynchronous connection driven by an Asio event loop, for the
//    request path (admission and settle scripts). Every command carries a deadline.
//  - RedisSyncClient: a blocking connection for threads outside the event loops.
#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/system/error_code.hpp>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

struct redisContext;  // hiredis

namespace tollgate::ratelimit {

/// A Redis reply copied out of hiredis (owning, safe after the callback returns). RESP2 shapes:
/// nil (missing key, Lua false), integer, bulk string, status ("OK"), error ("NOSCRIPT …"),
/// array (of replies, nested to any depth).
struct RedisReply {
  enum class Type { nil, integer, string, status, error, array };
  Type type = Type::nil;
  long long integer = 0;
  std::string str;                   ///< string, status or error text (binary safe)
  std::vector<RedisReply> elements;  ///< array
  bool is_error() const { return type == Type::error; }
};

/// Where a Redis server is and how to log in: redis://[[user]:password@]host[:port][/db] (TCP) or
/// unix://[[user]:password@]/path/to/redis.sock[?db=N] (a Unix domain socket).
struct RedisUrl {
  std::string host = "127.0.0.1";  ///< TCP only (empty for a Unix socket)
  int port = 6379;                 ///< TCP only (0 for a Unix socket)
  std::string socket_path;         ///< absolute path of a Unix domain socket; empty: TCP host:port
  int db = 0;
  std::string password;  ///< empty: no AUTH
  std::string username;  ///< Redis 6 ACL user; empty: `AUTH password` (the "default" user)
};

/// Parses
///  - redis://[[user]:password@]host[:port][/db] (user and password percent-decoded; host a name,
///    IPv4, or [IPv6]; port 1-65535; db ≥ 0), or
///  - unix://[[user]:password@]/absolute/path/to/redis.sock[?db=N] (the redis-py form: a
///    co-located Redis over a Unix domain socket, which saves a few µs per round trip over
///    loopback TCP; user, password and path percent-decoded; the path absolute and at most 107
///    bytes, the limit of sockaddr_un; db ≥ 0 and the only query parameter).
/// Throws std::invalid_argument naming the problem (also for rediss://, which is not supported).
RedisUrl parse_redis_url(const std::string& url);

/// One asynchronous Redis connection bound to one Asio executor (an event-loop thread).
///
/// Not thread-safe: use one per event-loop thread. Construct, call command() and destroy it only
/// on that executor's thread (a single-threaded io_context, or a strand); the coroutines awaiting
/// command() must run there too. Destroy it before its io_context.
///
/// Pipelines naturally: any number of commands may be in flight at once, replies come back in
/// the order the commands were issued. Connects lazily on the first command (non-blocking connect,
/// then AUTH and SELECT if the URL asks, all within `connect_timeout`); commands issued meanwhile
/// are queued and sent once connected. After a failure the next command reconnects, but a failed
/// connect attempt is not retried sooner than `reconnect_backoff` after it started: until then
/// commands fail at once with that attempt's error. Losing an established connection (server
/// closed it, a command timed out) lets the next command reconnect immediately.
///
/// Pub/sub (SUBSCRIBE …) and MONITOR are refused: they break the one-reply-per-command model.
/// Host names are resolved by hiredis with a blocking getaddrinfo() when connecting; prefer an IP
/// address (or /etc/hosts) on the request path. A unix:// URL connects to the Unix socket instead
/// (no name lookup; connect(2) on a Unix socket succeeds or fails at once).
class RedisConnection {
 public:
  using Result = std::pair<boost::system::error_code, RedisReply>;

  RedisConnection(boost::asio::any_io_executor ex, RedisUrl url,
                  std::chrono::milliseconds connect_timeout = std::chrono::milliseconds(100),
                  std::chrono::milliseconds reconnect_backoff = std::chrono::milliseconds(100));
  /// Disconnects; commands still in flight complete with boost::asio::error::operation_aborted.
  ~RedisConnection();
  RedisConnection(const RedisConnection&) = delete;
  RedisConnection& operator=(const RedisConnection&) = delete;

  /// Sends one command (`argv`: name then arguments, binary safe) and awaits its reply. The
  /// deadline measures Redis, not this event loop: `timeout` runs from the write(2) that hands
  /// the command to the socket (at the end of the event-loop turn that issued it; right after
  /// the connect completes for a command issued while connecting), and a reply Redis sent before
  /// the deadline is delivered even if the loop was too busy to read it in time. So a command
  /// completes at the latest `timeout` after its write, plus however late this event loop is
  /// in running its expired timer; one issued while connecting fails at `timeout` after the
  /// call if the connect has not completed by then (a connect is bounded by `connect_timeout`).
  /// Returns {error_code, reply}; the error_code is set only when no reply arrived:
  ///  - boost::asio::error::timed_out: the deadline passed. Its reply, if it comes, is discarded.
  ///    If no reply at all arrived on the connection for two deadlines (Redis hung, or the
  ///    network), the connection is dropped: every other command in flight on it completes with
  ///    boost::asio::error::connection_aborted and the next command reconnects. While replies
  ///    keep flowing (a burst), or after a stall shorter than that (Redis waiting for a CPU),
  ///    one late command does not fail the others: each has its own deadline.
  ///  - connecting failed: the system error (e.g. connection_refused, also for a Unix socket
  ///    path where no socket file exists), timed_out (connect timeout), access_denied (AUTH
  ///    refused), invalid_argument (SELECT refused), host_not_found (name lookup failed).
  ///  - the connection broke: eof (server closed it), connection_reset or another system error.
  ///  - operation_aborted: the RedisConnection was destroyed, or the awaiting coroutine was
  ///    cancelled (the command stays in flight; its reply is discarded).
  ///  - invalid_argument (empty argv), operation_not_supported (pub/sub, MONITOR, HELLO).
  /// A Redis error reply (e.g. NOSCRIPT, WRONGTYPE) is not an error_code: it is a reply of type
  /// error. Never throws except std::bad_alloc. `timeout` must be > 0.
  /// GCC 12: don't write a braced list of strings inside the co_await expression
  /// (`co_await c.command({"GET", k}, t)` fails with "array used as initializer"); build the
  /// vector first.
  boost::asio::awaitable<Result> command(std::vector<std::string> argv, std::chrono::milliseconds timeout);

  /// True while a connection is established (TCP or Unix socket connected; AUTH/SELECT may still
  /// be in flight).
  bool connected() const;
  /// Why the current (or last) connection attempt failed or was dropped (hiredis' message or our
  /// reason, e.g. "dropped: a command timed out after 50 ms"); empty while it is healthy. For logs.
  std::string last_error() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// A blocking client for threads outside the event loops (usage writer, NOTIFY listener).
/// Connects with a timeout on the first call, then every socket read and write has the same
/// timeout; after a failure the next call reconnects. Thread-compatible: one per thread.
class RedisSyncClient {
 public:
  RedisSyncClient(RedisUrl url, std::chrono::milliseconds timeout);
  ~RedisSyncClient();
  RedisSyncClient(RedisSyncClient&&) noexcept;
  RedisSyncClient& operator=(RedisSyncClient&&) noexcept;

  /// Sends one command and waits for its reply (at most about `timeout` per socket operation).
  /// nullopt when connecting, AUTH/SELECT or the round trip failed or timed out (the connection
  /// is then closed and the next call reconnects; see last_error()). Redis error replies are
  /// returned as replies of type error.
  std::optional<RedisReply> command(const std::vector<std::string>& argv);

  bool connected() const { return ctx_ != nullptr; }
  /// Why the last call returned nullopt; empty if none yet.
  const std::string& last_error() const { return last_error_; }

 private:
  struct ContextDeleter {
    void operator()(redisContext* c) const noexcept;
  };
  bool connect();

  RedisUrl url_;
  std::chrono::milliseconds timeout_;
  std::unique_ptr<redisContext, ContextDeleter> ctx_;
  std::string last_error_;
};

}  // namespace tollgate::ratelimit
