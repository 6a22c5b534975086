// RedisConnection (hiredis driven by Asio) and RedisSyncClient against the real Redis at
// TOLLGATE_REDIS_URL (tests/run.sh starts it): replies, pipelining, error replies, deadlines,
// reconnects, refused connections, and the lifetime paths (timeout, server kill, destruction);
// and over the same Redis' Unix socket, TOLLGATE_REDIS_SOCKET. How deadlines are counted (from
// the write, not the call) is in redis_deadline_test.cpp.
#include "ratelimit/redis_client.hpp"
#include "redis_fixture.hpp"

#include <catch2/catch.hpp>

#include <boost/asio/bind_cancellation_slot.hpp>
#include <boost/asio/cancellation_signal.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <vector>

using namespace tollgate::ratelimit;
using namespace std::chrono_literals;
namespace net = boost::asio;
using boost::system::error_code;
using tollgate::test::args;
using tollgate::test::client_id;
using tollgate::test::Clock;
using tollgate::test::ms_since;
using tollgate::test::redis_url;
using tollgate::test::run;
using tollgate::test::sleep_for;

namespace {

/// The Unix socket of the same Redis (deploy/local/services.sh writes it next to the URL).
std::string redis_socket() {
  const char* path = std::getenv("TOLLGATE_REDIS_SOCKET");
  if (!path || !*path) FAIL("TOLLGATE_REDIS_SOCKET is not set: run tests through tests/run.sh");
  return path;
}

/// A path in the temporary directory where no socket file exists.
std::string missing_socket_path() {
  auto p = std::filesystem::temp_directory_path() / ("tg-test-missing-" + std::to_string(std::random_device{}()) + ".sock");
  std::filesystem::remove(p);
  return p.string();
}

/// A Unix socket file nobody listens on (bound, never listening): what a Redis that died leaves.
struct StaleSocket {
  std::string path = missing_socket_path();
  int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  StaleSocket() {
    REQUIRE(fd >= 0);
    sockaddr_un sa{};
    sa.sun_family = AF_UNIX;
    std::strncpy(sa.sun_path, path.c_str(), sizeof(sa.sun_path) - 1);
    REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) == 0);
  }
  ~StaleSocket() {
    ::close(fd);
    ::unlink(path.c_str());
  }
};

std::string fmt_url(const std::string& host, int port, const std::string& userinfo) {
  return "redis://" + userinfo + host + ":" + std::to_string(port);
}

std::string unique(const std::string& prefix) { return tollgate::test::unique_key(prefix); }

/// A loopback port nobody listens on (bound, then released).
int closed_port() {
  net::io_context ioc;
  net::ip::tcp::acceptor a(ioc, {net::ip::address_v4::loopback(), 0});
  int port = a.local_endpoint().port();
  a.close();
  return port;
}

/// A loopback listener whose accept queue is full, so the kernel drops further SYNs: connecting
/// to it hangs until the client gives up.
struct FullListener {
  net::io_context ioc;
  net::ip::tcp::acceptor acceptor{ioc};
  std::vector<net::ip::tcp::socket> fillers;
  int port = 0;
  FullListener() {
    net::ip::tcp::endpoint ep(net::ip::address_v4::loopback(), 0);
    acceptor.open(ep.protocol());
    acceptor.bind(ep);
    acceptor.listen(0);  // accept queue of 1
    port = acceptor.local_endpoint().port();
    for (int i = 0; i < 3; ++i) {
      fillers.emplace_back(ioc);
      auto& s = fillers.back();
      s.open(net::ip::tcp::v4());
      s.non_blocking(true);
      // Plain non-blocking connect(2) (Asio's synchronous connect would wait for it): EINPROGRESS
      // expected; the handshake completes, or the SYN is dropped, by itself.
      auto target = acceptor.local_endpoint();
      (void)::connect(s.native_handle(), target.data(), static_cast<socklen_t>(target.size()));
    }
    std::this_thread::sleep_for(20ms);
  }
};

RedisUrl closed_url() {
  RedisUrl u;
  u.host = "127.0.0.1";
  u.port = closed_port();
  return u;
}


// ------------------------------------------------------------------ coroutine bodies

net::awaitable<void> round_trip(RedisConnection& c) {
  auto key = unique("rt");
  const std::string value("a\0b\r\nc", 6);  // binary safe
  auto [ec, r] = co_await c.command(args("SET", key, value, "PX", "60000"), 1s);
  REQUIRE_FALSE(ec);
  CHECK(r.type == RedisReply::Type::status);
  CHECK(r.str == "OK");
  CHECK(c.connected());

  auto [ec2, got] = co_await c.command(args("GET", key), 1s);
  REQUIRE_FALSE(ec2);
  CHECK(got.type == RedisReply::Type::string);
  CHECK(got.str == value);

  auto [ec3, missing] = co_await c.command(args("GET", key + ":missing"), 1s);
  REQUIRE_FALSE(ec3);
  CHECK(missing.type == RedisReply::Type::nil);

  auto [ec4, n] = co_await c.command(args("INCRBY", key + ":n", "41"), 1s);
  REQUIRE_FALSE(ec4);
  CHECK(n.type == RedisReply::Type::integer);
  CHECK(n.integer == 41);
  co_await c.command(args("DEL", key, key + ":n"), 1s);
}

struct Flight {
  int in_flight = 0, max_in_flight = 0, done = 0;
  std::vector<long long> incr;      // reply of command i
  std::vector<std::string> echo;    // reply of command i
  std::vector<int> completion;      // indices in completion order
  std::vector<error_code> errors;
};

net::awaitable<void> one_incr(RedisConnection* c, std::string key, int i, Flight* f) {
  ++f->in_flight;
  f->max_in_flight = std::max(f->max_in_flight, f->in_flight);
  auto [ec, r] = co_await c->command(args("INCR", key), 3s);
  --f->in_flight;
  if (ec) f->errors.push_back(ec);
  f->incr[i] = r.type == RedisReply::Type::integer ? r.integer : -1;
  f->completion.push_back(i);
  ++f->done;
}

std::string echo_value(int i) {
  // Every 50th value is 40 KB: replies then span several 16 KB reads by hiredis.
  std::string v = "value-" + std::to_string(i) + "-";
  if (i % 50 == 0) v += std::string(40000, static_cast<char>('a' + i % 26));
  return v;
}

net::awaitable<void> one_echo(RedisConnection* c, int i, Flight* f) {
  auto [ec, r] = co_await c->command(args("ECHO", echo_value(i)), 3s);
  if (ec) f->errors.push_back(ec);
  f->echo[i] = r.str;
  ++f->done;
}

net::awaitable<void> wait_done(Flight& f, int n) {
  auto t0 = Clock::now();
  while (f.done < n && Clock::now() - t0 < 5s) co_await sleep_for(1ms);
}

net::awaitable<void> many_in_flight(RedisConnection& c, int n) {
  auto ex = co_await net::this_coro::executor;
  auto key = unique("incr");
  Flight f;
  f.incr.assign(n, 0);
  f.echo.assign(n, "");
  for (int i = 0; i < n; ++i) net::co_spawn(ex, one_incr(&c, key, i, &f), net::detached);
  co_await wait_done(f, n);
  REQUIRE(f.done == n);
  CHECK(f.errors.empty());
  CHECK(f.max_in_flight == n);  // all were sent before the first reply came back
  bool in_order = true;
  for (int i = 0; i < n; ++i) {
    in_order = in_order && f.incr[i] == i + 1 && f.completion[i] == i;
  }
  CHECK(in_order);  // reply i is the counter after command i, completed in issue order

  f.done = 0;
  for (int i = 0; i < n; ++i) net::co_spawn(ex, one_echo(&c, i, &f), net::detached);
  co_await wait_done(f, n);
  REQUIRE(f.done == n);
  CHECK(f.errors.empty());
  int wrong = 0;
  for (int i = 0; i < n; ++i) wrong += f.echo[i] != echo_value(i);
  CHECK(wrong == 0);
  co_await c.command(args("DEL", key), 1s);
}

net::awaitable<void> eval_nested(RedisConnection& c) {
  const char* script =
      "return {1, 'two', {3, 'four', {}}, redis.status_reply('FINE'), false, "
      "redis.error_reply('E_INNER boom'), {KEYS[1], ARGV[1]}}";
  auto [ec, r] = co_await c.command(args("EVAL", script, "1", "k1", "a1"), 1s);
  REQUIRE_FALSE(ec);
  REQUIRE(r.type == RedisReply::Type::array);
  REQUIRE(r.elements.size() == 7);
  CHECK(r.elements[0].type == RedisReply::Type::integer);
  CHECK(r.elements[0].integer == 1);
  CHECK(r.elements[1].type == RedisReply::Type::string);
  CHECK(r.elements[1].str == "two");
  const auto& inner = r.elements[2];
  REQUIRE(inner.type == RedisReply::Type::array);
  REQUIRE(inner.elements.size() == 3);
  CHECK(inner.elements[0].integer == 3);
  CHECK(inner.elements[1].str == "four");
  CHECK(inner.elements[2].type == RedisReply::Type::array);
  CHECK(inner.elements[2].elements.empty());
  CHECK(r.elements[3].type == RedisReply::Type::status);
  CHECK(r.elements[3].str == "FINE");
  CHECK(r.elements[4].type == RedisReply::Type::nil);
  CHECK(r.elements[5].is_error());
  CHECK(r.elements[5].str == "E_INNER boom");
  REQUIRE(r.elements[6].elements.size() == 2);
  CHECK(r.elements[6].elements[0].str == "k1");
  CHECK(r.elements[6].elements[1].str == "a1");
}

net::awaitable<void> error_replies(RedisConnection& c) {
  long long id = co_await client_id(c);
  auto [ec, r] = co_await c.command(args("EVALSHA", std::string(40, '0'), "0"), 1s);
  CHECK_FALSE(ec);  // an error reply is a reply
  CHECK(r.is_error());
  CHECK(r.str.rfind("NOSCRIPT", 0) == 0);

  auto key = unique("wrongtype");
  co_await c.command(args("SET", key, "not a number", "PX", "60000"), 1s);
  auto [ec2, r2] = co_await c.command(args("INCR", key), 1s);
  CHECK_FALSE(ec2);
  CHECK(r2.is_error());
  auto [ec3, r3] = co_await c.command(args("NOSUCHCOMMAND"), 1s);
  CHECK_FALSE(ec3);
  CHECK(r3.is_error());
  long long id_after = co_await client_id(c);
  CHECK(id_after == id);  // same connection: errors did not drop it

  auto [ec4, r4] = co_await c.command(std::vector<std::string>(), 1s);
  CHECK(ec4 == boost::system::errc::invalid_argument);
  auto [ec5, r5] = co_await c.command(args("SUBSCRIBE", "x"), 1s);
  CHECK(ec5 == net::error::operation_not_supported);
  co_await c.command(args("DEL", key), 1s);
}

struct Outcome {
  bool done = false;
  error_code ec;
  RedisReply reply;
  long long ms = 0;
};

net::awaitable<void> timed_command(RedisConnection* c, std::vector<std::string> argv, std::chrono::milliseconds timeout,
                                   Outcome* out) {
  auto t0 = Clock::now();
  auto [ec, r] = co_await c->command(std::move(argv), timeout);
  out->ec = ec;
  out->reply = std::move(r);
  out->ms = ms_since(t0);
  out->done = true;
}

net::awaitable<void> wait_for(const Outcome& o, std::chrono::milliseconds limit) {
  auto t0 = Clock::now();
  while (!o.done && Clock::now() - t0 < limit) co_await sleep_for(1ms);
}

net::awaitable<void> timeout_then_reconnect(RedisConnection& c) {
  auto ex = co_await net::this_coro::executor;
  long long id1 = co_await client_id(c);

  // BLPOP blocks server-side for 1 s; our deadline is 50 ms. A PING sent 60 ms later waits
  // behind it: when the PING's own 50 ms pass, the connection has been silent for two deadlines
  // and is dropped (a PING with a longer deadline pipelined behind them is aborted with it).
  Outcome blpop, ping, patient;
  net::co_spawn(ex, timed_command(&c, args("BLPOP", unique("empty"), "1"), 50ms, &blpop), net::detached);
  co_await sleep_for(60ms);
  net::co_spawn(ex, timed_command(&c, args("PING"), 50ms, &ping), net::detached);
  net::co_spawn(ex, timed_command(&c, args("PING"), 2s, &patient), net::detached);
  co_await wait_for(blpop, 1s);
  co_await wait_for(ping, 1s);
  co_await wait_for(patient, 1s);
  REQUIRE(blpop.done);
  CHECK(blpop.ec == net::error::timed_out);
  CHECK(blpop.ms >= 49);
  CHECK(blpop.ms < 150);
  REQUIRE(ping.done);
  CHECK(ping.ec == net::error::timed_out);
  CHECK(ping.ms >= 49);
  CHECK(ping.ms < 150);
  REQUIRE(patient.done);
  CHECK(patient.ec == net::error::connection_aborted);
  CHECK(patient.ms < 150);
  CHECK_FALSE(c.connected());

  auto t0 = Clock::now();
  auto [ec, r] = co_await c.command(args("PING"), 1s);
  CHECK_FALSE(ec);
  CHECK(r.str == "PONG");
  CHECK(ms_since(t0) < 100);
  CHECK(c.connected());
  long long id2 = co_await client_id(c);
  CHECK(id2 != id1);  // a new connection
}

net::awaitable<void> server_paused(RedisConnection& c, RedisConnection& admin) {
  co_await c.command(args("PING"), 1s);
  auto [pec, pr] = co_await admin.command(args("CLIENT", "PAUSE", "300", "ALL"), 1s);
  REQUIRE_FALSE(pec);
  auto t0 = Clock::now();
  auto [ec, r] = co_await c.command(args("GET", unique("paused")), 50ms);
  CHECK(ec == net::error::timed_out);
  CHECK(ms_since(t0) < 150);
  // The server answers when the pause ends (at its next 100 ms cron tick after 300 ms).
  auto [ec2, r2] = co_await c.command(args("PING"), 1s);
  CHECK_FALSE(ec2);
  CHECK(r2.str == "PONG");
  CHECK(ms_since(t0) < 600);
}

net::awaitable<void> killed_by_server(RedisConnection& c, RedisConnection& admin) {
  auto ex = co_await net::this_coro::executor;
  long long id = co_await client_id(c);
  Outcome blpop;
  net::co_spawn(ex, timed_command(&c, args("BLPOP", unique("empty"), "2"), 3s, &blpop), net::detached);
  co_await sleep_for(20ms);
  auto [kec, kr] = co_await admin.command(args("CLIENT", "KILL", "ID", std::to_string(id)), 1s);
  REQUIRE_FALSE(kec);
  CHECK(kr.integer == 1);
  co_await wait_for(blpop, 1s);
  REQUIRE(blpop.done);
  CHECK(blpop.ec);
  CHECK(blpop.ec != net::error::timed_out);
  CHECK(blpop.ms < 200);
  INFO("error after the server closed the connection: " << blpop.ec.message() << " / " << c.last_error());
  auto [ec, r] = co_await c.command(args("PING"), 1s);
  CHECK_FALSE(ec);
  CHECK(r.str == "PONG");
}

net::awaitable<void> refused(RedisConnection& c) {
  auto t0 = Clock::now();
  auto [ec, r] = co_await c.command(args("PING"), 1s);
  CHECK(ec == net::error::connection_refused);
  CHECK(ms_since(t0) < 200);
  CHECK_FALSE(c.connected());
  CHECK_FALSE(c.last_error().empty());

  // Within the backoff: fails at once without a new attempt.
  t0 = Clock::now();
  auto [ec2, r2] = co_await c.command(args("PING"), 1s);
  CHECK(ec2 == net::error::connection_refused);
  CHECK(ms_since(t0) < 20);

  // After the backoff: tries again (and is refused again).
  co_await sleep_for(120ms);
  t0 = Clock::now();
  auto [ec3, r3] = co_await c.command(args("PING"), 1s);
  CHECK(ec3 == net::error::connection_refused);
  CHECK(ms_since(t0) < 200);
}

net::awaitable<void> destroyed_while_pending(std::string url) {
  auto ex = co_await net::this_coro::executor;
  auto c = std::make_unique<RedisConnection>(ex, parse_redis_url(url));
  Outcome blpop, queued;
  net::co_spawn(ex, timed_command(c.get(), args("BLPOP", unique("empty"), "1"), 2s, &blpop), net::detached);
  net::co_spawn(ex, timed_command(c.get(), args("PING"), 2s, &queued), net::detached);
  co_await sleep_for(30ms);
  c.reset();
  co_await wait_for(blpop, 500ms);
  co_await wait_for(queued, 500ms);
  REQUIRE(blpop.done);
  REQUIRE(queued.done);
  CHECK(blpop.ec == net::error::operation_aborted);
  CHECK(queued.ec == net::error::operation_aborted);
  CHECK(blpop.ms < 100);

  // Destroyed while still connecting (the command is queued, not yet sent).
  c = std::make_unique<RedisConnection>(ex, parse_redis_url(url));
  Outcome early;
  net::co_spawn(ex, timed_command(c.get(), args("PING"), 2s, &early), net::detached);
  co_await sleep_for(0ms);  // let it submit
  c.reset();
  co_await wait_for(early, 500ms);
  REQUIRE(early.done);
  CHECK((early.ec == net::error::operation_aborted || !early.ec));  // it may have been answered first
}


net::awaitable<void> connect_timeout(RedisConnection& c) {
  auto t0 = Clock::now();
  auto [ec, r] = co_await c.command(args("PING"), 2s);
  INFO("error: " << ec.message() << " / " << c.last_error());
  CHECK(ec == net::error::timed_out);
  CHECK(ms_since(t0) >= 99);
  CHECK(ms_since(t0) < 250);  // the 100 ms connect timeout, not the 2 s deadline
  CHECK_FALSE(c.connected());
}

net::awaitable<void> handshakes(std::string host, int port) {
  auto ex = co_await net::this_coro::executor;
  RedisConnection admin(ex, parse_redis_url(fmt_url(host, port, "")));
  auto user = "tg_test_" + std::to_string(std::random_device{}());  // no ':' in a URL user
  auto [aec, ar] = co_await admin.command(args("ACL", "SETUSER", user, "on", ">s3cret", "~*", "&*", "+@all"), 1s);
  REQUIRE_FALSE(aec);
  REQUIRE(ar.str == "OK");

  {  // AUTH user password, then SELECT 1, before the first command
    RedisConnection c(ex, parse_redis_url(fmt_url(host, port, user + ":s3cret@") + "/1"));
    auto [ec, r] = co_await c.command(args("CLIENT", "INFO"), 1s);
    REQUIRE_FALSE(ec);
    INFO(r.str);
    CHECK(r.str.find(" db=1 ") != std::string::npos);
    CHECK(r.str.find(" user=" + user + " ") != std::string::npos);
  }
  {  // a wrong password: access_denied, for the queued command too
    RedisConnection c(ex, parse_redis_url(fmt_url(host, port, user + ":wrong@")));
    auto [ec, r] = co_await c.command(args("PING"), 1s);
    CHECK(ec == net::error::access_denied);
    CHECK(c.last_error().find("AUTH") != std::string::npos);
    CHECK_FALSE(c.connected());
    auto t0 = Clock::now();  // within the backoff: no new attempt
    auto [ec2, r2] = co_await c.command(args("PING"), 1s);
    CHECK(ec2 == net::error::access_denied);
    CHECK(ms_since(t0) < 20);
  }
  {  // SELECT out of range
    RedisConnection c(ex, parse_redis_url(fmt_url(host, port, "") + "/100000"));
    auto [ec, r] = co_await c.command(args("PING"), 1s);
    CHECK(ec == boost::system::errc::invalid_argument);
    CHECK(c.last_error().find("SELECT") != std::string::npos);
  }
  co_await admin.command(args("ACL", "DELUSER", user), 1s);
}

net::awaitable<void> cancelled_by_caller(RedisConnection& c) {
  auto ex = co_await net::this_coro::executor;
  long long id = co_await client_id(c);
  net::cancellation_signal stop;
  Outcome blpop;
  // BLPOP answers nil after 200 ms; the caller gives up after 20 ms.
  net::co_spawn(ex, timed_command(&c, args("BLPOP", unique("empty"), "0.2"), 2s, &blpop),
                net::bind_cancellation_slot(stop.slot(), net::detached));
  co_await sleep_for(20ms);
  stop.emit(net::cancellation_type::terminal);
  co_await wait_for(blpop, 100ms);
  REQUIRE(blpop.done);
  CHECK(blpop.ec == net::error::operation_aborted);
  CHECK(blpop.ms < 60);
  // The command stayed in flight; its reply is discarded and the stream stays in step.
  auto [ec, r] = co_await c.command(args("ECHO", "after"), 1s);
  CHECK_FALSE(ec);
  CHECK(r.str == "after");
  long long id_after = co_await client_id(c);
  CHECK(id_after == id);
}

/// A round trip, then proof the connection is the Unix socket one: Redis reports a Unix socket
/// client's address as "<unixsocket>:0" (a TCP client's as ip:port).
net::awaitable<void> over_unix_socket(RedisConnection& c, std::string path) {
  co_await round_trip(c);
  auto [eec, er] = co_await c.command(args("EVAL", "return {KEYS[1], ARGV[1]}", "1", "k", "over the socket"), 1s);
  REQUIRE_FALSE(eec);
  REQUIRE(er.elements.size() == 2);
  CHECK(er.elements[1].str == "over the socket");
  auto [ec, r] = co_await c.command(args("CLIENT", "INFO"), 1s);
  REQUIRE_FALSE(ec);
  REQUIRE(r.type == RedisReply::Type::string);
  INFO(r.str);
  CHECK(r.str.find(" addr=" + path + ":0 ") != std::string::npos);
  CHECK(r.str.find(" laddr=" + path + ":0 ") != std::string::npos);
  CHECK(r.str.find(" db=1 ") != std::string::npos);  // ?db=1
}

net::awaitable<void> socket_refused(RedisConnection& c, std::string why) {
  auto t0 = Clock::now();
  auto [ec, r] = co_await c.command(args("PING"), 2s);
  INFO("error: " << ec.message() << " / " << c.last_error());
  CHECK(ec == net::error::connection_refused);
  CHECK(ms_since(t0) < 100);  // at once: not the 100 ms connect timeout, nor the 2 s deadline
  CHECK_FALSE(c.connected());
  CHECK(c.last_error().find(why) != std::string::npos);
  co_await sleep_for(120ms);  // after the backoff: tried again, refused again
  t0 = Clock::now();
  auto [ec2, r2] = co_await c.command(args("PING"), 2s);
  CHECK(ec2 == net::error::connection_refused);
  CHECK(ms_since(t0) < 100);
}

net::awaitable<void> leave_in_flight(RedisConnection& c, Outcome* out) {
  auto ex = co_await net::this_coro::executor;
  co_await c.command(args("PING"), 1s);  // connected
  net::co_spawn(ex, timed_command(&c, args("BLPOP", unique("empty"), "1"), 2s, out), net::detached);
  co_await sleep_for(10ms);  // sent; then run() stops the loop with it in flight
}

}  // namespace

// ------------------------------------------------------------------ test cases

TEST_CASE("RedisConnection: SET/GET round trip") {
  net::io_context ioc;
  RedisConnection c(ioc.get_executor(), parse_redis_url(redis_url()));
  CHECK_FALSE(c.connected());  // lazy
  run(ioc, round_trip(c));
}

TEST_CASE("RedisConnection: 1000 commands in flight are answered in order") {
  net::io_context ioc;
  RedisConnection c(ioc.get_executor(), parse_redis_url(redis_url()));
  run(ioc, many_in_flight(c, 1000));
}

TEST_CASE("RedisConnection: EVAL returns nested arrays, copied") {
  net::io_context ioc;
  RedisConnection c(ioc.get_executor(), parse_redis_url(redis_url()));
  run(ioc, eval_nested(c));
}

TEST_CASE("RedisConnection: error replies are replies, not error codes") {
  net::io_context ioc;
  RedisConnection c(ioc.get_executor(), parse_redis_url(redis_url()));
  run(ioc, error_replies(c));
}

TEST_CASE("RedisConnection: two deadlines of silence drop the connection; the next command reconnects") {
  net::io_context ioc;
  RedisConnection c(ioc.get_executor(), parse_redis_url(redis_url()));
  run(ioc, timeout_then_reconnect(c));
}

TEST_CASE("RedisConnection: a paused server times out, then answers on a new connection") {
  net::io_context ioc;
  RedisConnection c(ioc.get_executor(), parse_redis_url(redis_url()));
  RedisConnection admin(ioc.get_executor(), parse_redis_url(redis_url()));
  run(ioc, server_paused(c, admin));
}

TEST_CASE("RedisConnection: the server closing the connection fails pending commands at once") {
  net::io_context ioc;
  RedisConnection c(ioc.get_executor(), parse_redis_url(redis_url()));
  RedisConnection admin(ioc.get_executor(), parse_redis_url(redis_url()));
  run(ioc, killed_by_server(c, admin));
}

TEST_CASE("RedisConnection: connection refused is an error code, quickly, with backoff") {
  net::io_context ioc;
  RedisConnection c(ioc.get_executor(), closed_url(), 100ms, 100ms);
  run(ioc, refused(c));
}

TEST_CASE("RedisConnection: over the Unix socket (unix://)") {
  auto path = redis_socket();
  net::io_context ioc;
  RedisConnection c(ioc.get_executor(), parse_redis_url("unix://" + path + "?db=1"));
  CHECK_FALSE(c.connected());  // lazy
  run(ioc, over_unix_socket(c, path));
}

TEST_CASE("RedisConnection: a Unix socket path without a server is refused at once") {
  SECTION("no socket file") {
    net::io_context ioc;
    RedisConnection c(ioc.get_executor(), parse_redis_url("unix://" + missing_socket_path()), 100ms, 100ms);
    run(ioc, socket_refused(c, "No such file"));
  }
  SECTION("a stale socket file nobody listens on") {
    StaleSocket stale;
    net::io_context ioc;
    RedisConnection c(ioc.get_executor(), parse_redis_url("unix://" + stale.path), 100ms, 100ms);
    run(ioc, socket_refused(c, "refused"));
  }
}

TEST_CASE("RedisConnection: connecting is bounded by the connect timeout") {
  FullListener hole;
  net::io_context ioc;
  RedisUrl u;
  u.port = hole.port;
  RedisConnection c(ioc.get_executor(), u, 100ms);
  run(ioc, connect_timeout(c));
}

TEST_CASE("RedisConnection: AUTH and SELECT from the URL; refusals are error codes") {
  auto u = parse_redis_url(redis_url());
  net::io_context ioc;
  run(ioc, handshakes(u.host, u.port));
}

TEST_CASE("RedisConnection: a cancelled caller abandons the reply; the connection stays in step") {
  net::io_context ioc;
  RedisConnection c(ioc.get_executor(), parse_redis_url(redis_url()));
  run(ioc, cancelled_by_caller(c));
}

TEST_CASE("RedisConnection: destruction completes pending commands with operation_aborted") {
  net::io_context ioc;
  run(ioc, destroyed_while_pending(redis_url()));
}

TEST_CASE("RedisConnection: destroyed with the loop stopped and a command in flight") {
  // Checks (under ASan/LSan) that nothing dangles or leaks when the connection is destroyed
  // while its loop is stopped, and the loop afterwards (its handlers never run).
  Outcome out;
  {
    net::io_context ioc;
    {
      RedisConnection c(ioc.get_executor(), parse_redis_url(redis_url()));
      run(ioc, leave_in_flight(c, &out));
      CHECK_FALSE(out.done);
    }
    ioc.run_for(200ms);  // the aborted command completes once the loop runs again
    CHECK(out.done);
    CHECK(out.ec == net::error::operation_aborted);
  }
  {
    net::io_context ioc;
    RedisConnection c(ioc.get_executor(), parse_redis_url(redis_url()));
    Outcome never;
    run(ioc, leave_in_flight(c, &never));
  }  // connection, then loop destroyed without running again: the coroutine frame is destroyed
}

TEST_CASE("RedisSyncClient: round trip, error reply, timeout and reconnect") {
  RedisSyncClient c(parse_redis_url(redis_url()), 100ms);
  auto key = unique("sync");
  auto r = c.command(args("SET", key, "v1", "PX", "60000"));
  REQUIRE(r);
  CHECK(r->str == "OK");
  r = c.command(args("GET", key));
  REQUIRE(r);
  CHECK(r->type == RedisReply::Type::string);
  CHECK(r->str == "v1");
  r = c.command(args("EVALSHA", std::string(40, '0'), "0"));
  REQUIRE(r);
  CHECK(r->is_error());
  CHECK(r->str.rfind("NOSCRIPT", 0) == 0);
  CHECK(c.connected());

  auto t0 = Clock::now();
  r = c.command(args("BLPOP", unique("empty"), "1"));
  CHECK_FALSE(r);
  CHECK(ms_since(t0) < 300);
  CHECK_FALSE(c.connected());
  CHECK_FALSE(c.last_error().empty());

  r = c.command(args("GET", key));  // reconnects
  REQUIRE(r);
  CHECK(r->str == "v1");
  c.command(args("DEL", key));
}

TEST_CASE("RedisSyncClient: AUTH/SELECT refusals fail the call") {
  auto u = parse_redis_url(redis_url());
  u.password = "wrong";
  RedisSyncClient bad_auth(u, 200ms);
  CHECK_FALSE(bad_auth.command({"PING"}));
  CHECK(bad_auth.last_error().find("AUTH") != std::string::npos);
  u = parse_redis_url(redis_url());
  u.db = 100000;
  RedisSyncClient bad_db(u, 200ms);
  CHECK_FALSE(bad_db.command({"PING"}));
  CHECK(bad_db.last_error().find("SELECT") != std::string::npos);
  u.db = 2;
  RedisSyncClient db2(u, 200ms);
  auto r = db2.command({"CLIENT", "INFO"});
  REQUIRE(r);
  CHECK(r->str.find(" db=2 ") != std::string::npos);
}

TEST_CASE("RedisSyncClient: a closed port fails quickly and is retried on the next call") {
  RedisSyncClient c(closed_url(), 100ms);
  for (int i = 0; i < 2; ++i) {
    auto t0 = Clock::now();
    CHECK_FALSE(c.command(args("PING")));
    CHECK(ms_since(t0) < 200);
    CHECK_FALSE(c.connected());
    CHECK_FALSE(c.last_error().empty());
  }
}

TEST_CASE("RedisSyncClient: over the Unix socket (unix://)") {
  auto path = redis_socket();
  RedisSyncClient c(parse_redis_url("unix://" + path + "?db=2"), 500ms);
  auto key = unique("sync-unix");
  auto r = c.command(args("SET", key, "v1", "PX", "60000"));
  REQUIRE(r);
  CHECK(r->str == "OK");
  r = c.command(args("GET", key));
  REQUIRE(r);
  CHECK(r->str == "v1");
  r = c.command(args("CLIENT", "INFO"));
  REQUIRE(r);
  INFO(r->str);
  CHECK(r->str.find(" addr=" + path + ":0 ") != std::string::npos);
  CHECK(r->str.find(" db=2 ") != std::string::npos);
  c.command(args("DEL", key));
}

TEST_CASE("RedisSyncClient: a Unix socket path without a server fails at once") {
  auto path = missing_socket_path();
  RedisSyncClient c(parse_redis_url("unix://" + path), 100ms);
  for (int i = 0; i < 2; ++i) {
    auto t0 = Clock::now();
    CHECK_FALSE(c.command(args("PING")));
    CHECK(ms_since(t0) < 100);
    CHECK_FALSE(c.connected());
    INFO(c.last_error());
    CHECK(c.last_error().find("unix:" + path) != std::string::npos);
    CHECK(c.last_error().find("No such file") != std::string::npos);
  }
}
