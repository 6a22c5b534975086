// hiredis 0.14 driven by Asio, and a blocking hiredis client.
//
// How the asynchronous connection works (hiredis 0.14.1 async.c is the reference):
//  - Each connect attempt is a Link: one redisAsyncContext plus the Asio objects that drive it.
//    hiredis owns the socket; a non-owning posix::stream_descriptor on its fd waits for
//    readiness (async_wait) and the handlers call redisAsyncHandleRead/Write. The ev hooks only
//    record what hiredis wants (want_read_/want_write_) and arm a wait if none is pending, like a
//    persistent watcher in hiredis' own adapters; a wait that completes when it is no longer
//    wanted does nothing. The cleanup hook releases the fd (cancelling the waits) before hiredis
//    closes it, and marks the Link dead (ac_ = nullptr), so stale handlers do nothing.
//  - A command is a Pending: its reply slot and a steady_timer that is both the deadline and
//    the wake-up signal. The hiredis reply callback copies the reply and cancels the timer; the
//    awaiting coroutine is resumed later by the executor, never inside hiredis.
//  - The deadline measures Redis, not this event loop: it runs from the write(2) that handed the
//    command to the socket (Link::write stamps Pending::written), not from the call. The timer
//    is armed at the call for `timeout` (the earliest the deadline can pass, so the common path
//    costs nothing extra); when it fires, the coroutine first reads what Redis has already sent
//    (Link::drain: the socket and hiredis' buffer, without waiting), writes the command itself
//    if the loop has not got to it yet (Link::flush_now), and re-arms the timer for
//    written + timeout if that is later. Only then is the command timed out, and the Link is
//    freed if Redis has been silent for two deadlines: hiredis then calls every pending
//    callback once with a NULL reply, which completes the other commands with an error.
//    A Pending stays in its Link's FIFO until hiredis has called its callback, so privdata never
//    dangles, whatever happens to the awaiting coroutine.
//  - Every C callback is a noexcept trampoline that catches everything.
#include "ratelimit/redis_client.hpp"

#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include <boost/asio/error.hpp>
#include <boost/asio/this_coro.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <poll.h>
#include <strings.h>
#include <sys/ioctl.h>
#include <sys/time.h>
#include <sys/un.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <climits>
#include <cstdint>
#include <deque>
#include <stdexcept>

namespace tollgate::ratelimit {

namespace net = boost::asio;
using boost::system::error_code;
using Clock = std::chrono::steady_clock;

// ---------------------------------------------------------------- replies and URLs

namespace {

RedisReply copy_reply(const redisReply& r) {
  RedisReply out;
  switch (r.type) {
    case REDIS_REPLY_STRING:
      out.type = RedisReply::Type::string;
      out.str.assign(r.str, r.len);
      break;
    case REDIS_REPLY_STATUS:
      out.type = RedisReply::Type::status;
      out.str.assign(r.str, r.len);
      break;
    case REDIS_REPLY_ERROR:
      out.type = RedisReply::Type::error;
      out.str.assign(r.str, r.len);
      break;
    case REDIS_REPLY_INTEGER:
      out.type = RedisReply::Type::integer;
      out.integer = r.integer;
      break;
    case REDIS_REPLY_ARRAY:
      out.type = RedisReply::Type::array;
      out.elements.reserve(r.elements);
      for (size_t i = 0; i < r.elements; ++i) out.elements.push_back(copy_reply(*r.element[i]));
      break;
    default:  // REDIS_REPLY_NIL
      break;
  }
  return out;
}

[[noreturn]] void bad_url(const std::string& url, const std::string& why) {
  throw std::invalid_argument(fmt::format("invalid Redis URL '{}': {}", url, why));
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::string percent_decode(std::string_view s, const std::string& url, const char* where = "the user information") {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      out += s[i];
      continue;
    }
    int hi = i + 2 < s.size() ? hex_digit(s[i + 1]) : -1;
    int lo = i + 2 < s.size() ? hex_digit(s[i + 2]) : -1;
    if (hi < 0 || lo < 0) bad_url(url, fmt::format("bad percent-encoding in {}", where));
    out += static_cast<char>(hi * 16 + lo);
    i += 2;
  }
  return out;
}

int parse_int(std::string_view s, int min, int max, const std::string& url, const char* what) {
  int v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || ec != std::errc() || end != s.data() + s.size() || v < min || v > max)
    bad_url(url, fmt::format("{} must be an integer in {}..{}", what, min, max));
  return v;
}

bool has_scheme(const std::string& url, std::string_view scheme) {
  return url.size() >= scheme.size() && strncasecmp(url.c_str(), scheme.data(), scheme.size()) == 0;
}

/// Removes "[user]:password@" from the front of `authority` (up to its last '@') into `out`.
void take_userinfo(std::string_view& authority, RedisUrl& out, const std::string& url) {
  auto at = authority.rfind('@');
  if (at == std::string_view::npos) return;
  auto userinfo = authority.substr(0, at);
  authority.remove_prefix(at + 1);
  auto colon = userinfo.find(':');
  if (colon == std::string_view::npos) bad_url(url, "user information must be [user]:password");
  out.username = percent_decode(userinfo.substr(0, colon), url);
  out.password = percent_decode(userinfo.substr(colon + 1), url);
  if (out.password.empty()) bad_url(url, "empty password");
}

/// hiredis copies the path into sockaddr_un::sun_path with strncpy, silently cutting it there.
constexpr size_t max_socket_path = sizeof(sockaddr_un::sun_path) - 1;

/// unix://[[user]:password@]/absolute/path/to/redis.sock[?db=N]; `rest` follows "unix://".
RedisUrl parse_unix_url(const std::string& url, std::string_view rest) {
  RedisUrl out;
  out.host.clear();
  out.port = 0;
  if (rest.find('#') != std::string_view::npos) bad_url(url, "fragments are not supported");
  auto qmark = rest.find('?');
  std::string_view query = qmark == std::string_view::npos ? std::string_view() : rest.substr(qmark + 1);
  if (qmark != std::string_view::npos && query.empty()) bad_url(url, "empty query string");
  rest = rest.substr(0, qmark);

  auto slash = rest.find('/');
  std::string_view authority = rest.substr(0, slash);
  std::string_view path = slash == std::string_view::npos ? std::string_view() : rest.substr(slash);
  take_userinfo(authority, out, url);
  if (!authority.empty())  // unix://redis.sock, unix://host/path, unix://:pw@run/redis.sock
    bad_url(url, "the socket path must be absolute: unix:///path/to/redis.sock");
  if (path.empty()) bad_url(url, "missing socket path: unix:///path/to/redis.sock");
  out.socket_path = percent_decode(path, url, "the socket path");
  if (out.socket_path.find('\0') != std::string::npos) bad_url(url, "the socket path contains a NUL byte");
  if (out.socket_path.size() > max_socket_path)
    bad_url(url, fmt::format("the socket path is {} bytes long; a Unix socket path can have at most {}",
                             out.socket_path.size(), max_socket_path));

  bool have_db = false;
  while (!query.empty()) {
    auto amp = query.find('&');
    std::string_view param = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    auto eq = param.find('=');
    std::string_view name = param.substr(0, eq);
    std::string_view value = eq == std::string_view::npos ? std::string_view() : param.substr(eq + 1);
    if (name != "db") bad_url(url, fmt::format("unsupported query parameter '{}' (only db=N is)", name));
    if (have_db) bad_url(url, "db given more than once");
    out.db = parse_int(value, 0, INT_MAX, url, "database number");
    have_db = true;
  }
  return out;
}

}  // namespace

RedisUrl parse_redis_url(const std::string& url) {
  constexpr std::string_view scheme = "redis://", unix_scheme = "unix://";
  if (has_scheme(url, unix_scheme)) return parse_unix_url(url, std::string_view(url).substr(unix_scheme.size()));
  if (!has_scheme(url, scheme)) {
    if (strncasecmp(url.c_str(), "rediss://", 9) == 0) bad_url(url, "TLS (rediss://) is not supported");
    bad_url(url, "expected redis://[[user]:password@]host[:port][/db] or "
                 "unix://[[user]:password@]/path/to/redis.sock[?db=N]");
  }
  std::string_view rest(url);
  rest.remove_prefix(scheme.size());
  RedisUrl out;

  auto slash = rest.find('/');
  std::string_view authority = rest.substr(0, slash);
  std::string_view path = slash == std::string_view::npos ? std::string_view() : rest.substr(slash + 1);
  if (path.find_first_of("?#") != std::string_view::npos) bad_url(url, "query strings are not supported");

  take_userinfo(authority, out, url);

  std::string_view port;
  if (!authority.empty() && authority.front() == '[') {
    auto close = authority.find(']');
    if (close == std::string_view::npos) bad_url(url, "unterminated [IPv6] host");
    out.host = std::string(authority.substr(1, close - 1));
    auto after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') bad_url(url, "unexpected text after ]");
      port = after.substr(1);
      if (port.empty()) bad_url(url, "empty port");
    }
  } else {
    auto colon = authority.find(':');
    out.host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) {
      port = authority.substr(colon + 1);
      if (port.empty()) bad_url(url, "empty port");
    }
  }
  if (out.host.empty()) bad_url(url, "missing host");
  if (!port.empty()) out.port = parse_int(port, 1, 65535, url, "port");
  if (!path.empty()) out.db = parse_int(path, 0, INT_MAX, url, "database number");
  return out;
}

// ---------------------------------------------------------------- the asynchronous connection

namespace {

/// A link silent for this many deadlines is dropped (when one of its commands times out). One
/// would turn a Redis stall just over a deadline into failures of every command in flight.
constexpr int kSilentDeadlinesToDrop = 2;

struct Link;

/// One command in flight: the reply slot and the timer that is both deadline and wake-up.
struct Pending {
  explicit Pending(const net::any_io_executor& ex) : timer(ex) {}
  net::steady_timer timer;
  bool done = false;  ///< result set (or abandoned by the awaiting coroutine); set exactly once
  error_code ec;
  RedisReply reply;
  std::weak_ptr<Link> link;  ///< the connection it was sent on
  /// When the command was handed to the socket (the first write(2) after it was queued, which
  /// may take only part of hiredis' buffer when Redis does not read: Redis' lateness); the
  /// deadline runs from here. Default-constructed while not yet written.
  Clock::time_point written{};
};

enum class Handshake : std::uintptr_t { auth = 1, select = 2 };

void on_add_read(void* data) noexcept;
void on_del_read(void* data) noexcept;
void on_add_write(void* data) noexcept;
void on_del_write(void* data) noexcept;
void on_cleanup(void* data) noexcept;
void on_connect(const redisAsyncContext* ac, int status) noexcept;
void on_disconnect(const redisAsyncContext* ac, int status) noexcept;
void on_reply(redisAsyncContext* ac, void* reply, void* privdata) noexcept;
void on_handshake(redisAsyncContext* ac, void* reply, void* privdata) noexcept;

/// One hiredis async context (one connect attempt) and the Asio objects that drive it.
struct Link : std::enable_shared_from_this<Link> {
  Link(const net::any_io_executor& ex, std::string where)
      : sd_(ex), connect_timer_(ex), where_(std::move(where)), started_(Clock::now()) {}
  ~Link() { drop(net::error::operation_aborted, "connection closed"); }

  redisAsyncContext* ac_ = nullptr;  ///< null once freed: the Link is dead
  net::posix::stream_descriptor sd_;  ///< not owning: hiredis closes the fd
  net::steady_timer connect_timer_;
  std::string where_;  ///< host:port or unix:/path, for logs
  Clock::time_point started_;
  bool want_read_ = false, want_write_ = false;        // what hiredis asked for
  bool read_waiting_ = false, write_waiting_ = false;  // an async_wait is pending
  bool flush_posted_ = false;  // a write at the end of this event-loop turn is scheduled
  bool connected_ = false;    ///< TCP connect completed
  bool established_ = false;  ///< connected and AUTH/SELECT (if any) answered OK
  int handshake_left_ = 0;
  error_code failure_;  ///< why it died (set once); what NULL-reply callbacks report
  std::string failure_text_;
  std::deque<std::shared_ptr<Pending>> inflight_;  ///< FIFO, matches hiredis' callback list
  /// Last time the reply stream moved: a reply arrived, or commands were written while none
  /// written before was unanswered. A command that timed out drops the link only if this is
  /// two deadlines ago: under a burst, or after a short stall, one late reply must not fail
  /// every other command.
  Clock::time_point last_progress_ = Clock::now();
  std::uint64_t submitted_ = 0;     ///< commands queued on this link (answered: all but inflight_)
  std::uint64_t written_upto_ = 0;  ///< submitted_ at the last write

  bool alive() const { return ac_ != nullptr; }

  void fail(error_code ec, std::string text) {
    if (failure_) return;
    failure_ = ec;
    failure_text_ = std::move(text);
  }

  /// Frees the context now (not from inside a hiredis callback): pending commands complete with
  /// `why` (unless a failure was already recorded), the fd is released and closed.
  void drop(error_code why, const std::string& text) noexcept {
    if (!ac_) return;
    try {
      fail(why, text);
    } catch (...) {
      if (!failure_) failure_ = why;
    }
    redisAsyncContext* ac = std::exchange(ac_, nullptr);
    redisAsyncFree(ac);  // -> NULL-reply callbacks, on_cleanup, on_disconnect, close(fd)
  }

  void set_established() {
    established_ = true;
    connect_timer_.cancel();
  }

  void arm_read() {
    if (read_waiting_ || !ac_ || !sd_.is_open()) return;
    sd_.async_wait(net::posix::stream_descriptor::wait_read,
                   [self = shared_from_this()](error_code ec) noexcept { self->on_ready(ec, true); });
    read_waiting_ = true;
  }
  void arm_write() {
    if (write_waiting_ || !ac_ || !sd_.is_open()) return;
    sd_.async_wait(net::posix::stream_descriptor::wait_write,
                   [self = shared_from_this()](error_code ec) noexcept { self->on_ready(ec, false); });
    write_waiting_ = true;
  }

  /// Once connected, commands are written at the end of the event-loop turn that issued them,
  /// all in one write(2), without asking epoll whether the socket is writable (it nearly always
  /// is); only a full socket buffer falls back to waiting for writability.
  void schedule_flush() {
    if (flush_posted_ || write_waiting_ || !ac_) return;
    net::post(sd_.get_executor(), [self = shared_from_this()]() noexcept {
      self->flush_posted_ = false;
      if (!self->ac_ || !self->want_write_) return;
      self->write();
      self->rearm();
    });
    flush_posted_ = true;
  }

  /// Writes what hiredis has queued (also completes a non-blocking connect) and stamps the
  /// commands it carried as written: their deadlines start now.
  void write() noexcept {
    const bool was_connected = connected_, nothing_on_wire = submitted_ - inflight_.size() >= written_upto_;
    redisAsyncHandleWrite(ac_);
    if (!connected_) return;
    const auto now = Clock::now();
    if (nothing_on_wire || !was_connected) last_progress_ = now;
    // The commands queued since the last write are the newest ones, at the back of the FIFO
    // (none of them can have been answered yet).
    auto fresh = std::min<std::uint64_t>(submitted_ - written_upto_, inflight_.size());
    for (auto it = inflight_.end() - static_cast<std::ptrdiff_t>(fresh); it != inflight_.end(); ++it)
      (*it)->written = now;
    written_upto_ = submitted_;
  }

  /// Delivers the replies Redis has already sent, without waiting: reads the socket while it
  /// holds bytes (hiredis then runs the callbacks of every complete reply in its buffer), until
  /// `p` is answered. For a deadline that fired while this event loop was too busy to read.
  void drain(const Pending& p) noexcept {
    while (ac_ && connected_ && !p.done) {
      int available = 0;
      if (::ioctl(ac_->c.fd, FIONREAD, &available) != 0 || available <= 0) return;
      redisAsyncHandleRead(ac_);  // may free the context (EOF, protocol error): ac_ is then null
    }
  }

  /// Writes what hiredis holds now, if the socket takes it: completes a connect that succeeded
  /// meanwhile (poll, no waiting). For a deadline that fired before this event loop got to the
  /// write it had posted (or to the connect's completion).
  void flush_now() noexcept {
    if (!ac_ || !want_write_) return;
    if (!connected_) {
      pollfd pfd{ac_->c.fd, POLLOUT, 0};
      if (::poll(&pfd, 1, 0) != 1) return;  // the connect is still in progress: Redis' side
    }
    write();
    rearm();
  }

  void on_ready(error_code ec, bool read) noexcept {
    (read ? read_waiting_ : write_waiting_) = false;
    if (!ac_ || ec == net::error::operation_aborted) return;  // stale: the context is gone
    if (ec) {
      drop(ec, "waiting for the socket failed");
      return;
    }
    if (!(read ? want_read_ : want_write_)) return;  // no longer wanted (delRead/delWrite)
    if (read)
      redisAsyncHandleRead(ac_);
    else
      write();
    rearm();
  }

  /// Persistent-watcher semantics: keep waiting while hiredis still wants it (e.g. a connect
  /// still in progress, where hiredis re-adds nothing).
  void rearm() noexcept {
    try {
      if (ac_ && want_read_) arm_read();
      if (ac_ && want_write_) arm_write();
    } catch (...) {
      drop(net::error::no_memory, "cannot wait for the socket");
    }
  }

  /// The error to report for a command that got no reply because the context is going away.
  error_code failure_for(const redisAsyncContext* ac) {
    if (!failure_) {
      int saved = errno;
      error_code ec;
      switch (ac->err) {
        case REDIS_ERR_EOF: ec = net::error::eof; break;
        case REDIS_ERR_IO:
          ec = saved != 0 && saved != EAGAIN ? error_code(saved, boost::system::system_category())
                                             : error_code(net::error::connection_reset);
          break;
        case REDIS_ERR_PROTOCOL: ec = boost::system::errc::make_error_code(boost::system::errc::protocol_error); break;
        default: ec = net::error::connection_aborted; break;
      }
      fail(ec, ac->errstr ? ac->errstr : ec.message());
    }
    return failure_;
  }
};

// The ev hooks: ev.data is the Link. hiredis calls them only while the context is alive, and the
// Link outlives its context (~Link frees it).
void on_add_read(void* data) noexcept {
  auto* l = static_cast<Link*>(data);
  l->want_read_ = true;
  try {
    l->arm_read();
  } catch (const std::exception& e) {  // the command's deadline will drop the connection
    spdlog::error("redis {}: cannot wait for reads: {}", l->where_, e.what());
  }
}
void on_del_read(void* data) noexcept { static_cast<Link*>(data)->want_read_ = false; }
void on_add_write(void* data) noexcept {
  auto* l = static_cast<Link*>(data);
  l->want_write_ = true;
  try {
    if (l->connected_)
      l->schedule_flush();
    else
      l->arm_write();  // completes the non-blocking connect
  } catch (const std::exception& e) {
    spdlog::error("redis {}: cannot wait for writes: {}", l->where_, e.what());
  }
}
void on_del_write(void* data) noexcept { static_cast<Link*>(data)->want_write_ = false; }

// Called (possibly more than once) just before hiredis frees the context and closes the fd.
void on_cleanup(void* data) noexcept {
  auto* l = static_cast<Link*>(data);
  l->ac_ = nullptr;
  l->want_read_ = l->want_write_ = false;
  try {
    if (l->sd_.is_open()) l->sd_.release();  // deregisters; pending waits finish with operation_aborted
    l->connect_timer_.cancel();
  } catch (...) {  // nothing sensible to do; the handlers see ac_ == nullptr
  }
}

void on_connect(const redisAsyncContext* ac, int status) noexcept {
  auto* l = static_cast<Link*>(ac->data);
  try {
    if (status == REDIS_OK) {
      l->connected_ = true;
      if (l->handshake_left_ == 0) l->set_established();
      spdlog::debug("redis {}: connected", l->where_);
      return;
    }
    // hiredis frees the context right after this returns (not inside a callback: don't free here).
    int saved = errno;  // set from SO_ERROR by redisCheckSocketError
    l->fail(saved ? error_code(saved, boost::system::system_category()) : error_code(net::error::not_connected),
            ac->errstr ? ac->errstr : "connect failed");
    spdlog::warn("redis {}: connect failed: {}", l->where_, l->failure_text_);
  } catch (...) {
  }
}

void on_disconnect(const redisAsyncContext* ac, int status) noexcept {
  auto* l = static_cast<Link*>(ac->data);
  l->connected_ = false;
  try {
    if (status != REDIS_OK)
      spdlog::warn("redis {}: connection lost: {}", l->where_, ac->errstr ? ac->errstr : "unknown error");
  } catch (...) {
  }
}

void complete(Pending& p) noexcept {
  p.done = true;
  try {
    p.timer.cancel();  // wakes the awaiting coroutine via the executor (never inline)
  } catch (...) {      // it then wakes at its deadline and still finds the result
  }
}

void on_reply(redisAsyncContext* ac, void* reply, void* privdata) noexcept {
  auto* l = static_cast<Link*>(ac->data);
  if (l->inflight_.empty() || l->inflight_.front().get() != privdata) {
    // Cannot happen: hiredis calls back in FIFO order, once per command.
    spdlog::critical("redis {}: reply does not match the oldest command", l->where_);
    return;
  }
  std::shared_ptr<Pending> p = std::move(l->inflight_.front());
  l->inflight_.pop_front();
  l->last_progress_ = Clock::now();
  if (p->done) return;  // timed out or abandoned: discard
  try {
    if (reply)
      p->reply = copy_reply(*static_cast<const redisReply*>(reply));
    else
      p->ec = l->failure_for(ac);
  } catch (...) {
    p->ec = net::error::no_memory;
  }
  complete(*p);
}

// AUTH / SELECT replies. An error reply means misconfiguration: record it and free the context
// (hiredis defers the free until this callback returns); queued commands then fail with it.
void on_handshake(redisAsyncContext* ac, void* reply, void* privdata) noexcept {
  auto* l = static_cast<Link*>(ac->data);
  if (!reply) return;  // the context is going away; commands report its failure
  const auto* r = static_cast<const redisReply*>(reply);
  bool auth = static_cast<Handshake>(reinterpret_cast<std::uintptr_t>(privdata)) == Handshake::auth;
  try {
    if (r->type == REDIS_REPLY_ERROR) {
      l->fail(auth ? error_code(net::error::access_denied)
                   : boost::system::errc::make_error_code(boost::system::errc::invalid_argument),
              fmt::format("{} refused: {}", auth ? "AUTH" : "SELECT", std::string_view(r->str, r->len)));
      spdlog::error("redis {}: {}", l->where_, l->failure_text_);
      l->ac_ = nullptr;
      redisAsyncFree(ac);
      return;
    }
    if (--l->handshake_left_ == 0 && l->connected_) l->set_established();
  } catch (...) {
    if (!l->failure_) l->failure_ = net::error::no_memory;
    if (l->ac_) {
      l->ac_ = nullptr;
      redisAsyncFree(ac);
    }
  }
}

bool unsupported_command(const std::string& name) {
  static constexpr const char* refused[] = {"subscribe",  "psubscribe",  "ssubscribe", "unsubscribe",
                                            "punsubscribe", "sunsubscribe", "monitor",    "hello"};
  return std::any_of(std::begin(refused), std::end(refused),
                     [&](const char* r) { return strcasecmp(name.c_str(), r) == 0; });
}

int send_argv(redisAsyncContext* ac, redisCallbackFn* fn, void* privdata, const std::vector<std::string>& argv) {
  std::vector<const char*> ptrs;
  std::vector<size_t> lens;
  ptrs.reserve(argv.size());
  lens.reserve(argv.size());
  for (const auto& a : argv) {
    ptrs.push_back(a.data());
    lens.push_back(a.size());
  }
  return redisAsyncCommandArgv(ac, fn, privdata, static_cast<int>(argv.size()), ptrs.data(), lens.data());
}

/// "host:port" or "unix:/path/to/redis.sock", for logs and error texts.
std::string endpoint(const RedisUrl& u) {
  return u.socket_path.empty() ? fmt::format("{}:{}", u.host, u.port) : "unix:" + u.socket_path;
}

/// The error for a connect that failed synchronously: hiredis' error type and the errno it left.
/// A Unix socket path with no file behind it (ENOENT: Redis is not running, or not with that
/// unixsocket) is connection_refused, like a TCP port nobody listens on; a stale socket file
/// left by a Redis that died gives ECONNREFUSED by itself.
error_code connect_error(int redis_err, int saved_errno, bool unix_socket) {
  if (redis_err == REDIS_ERR_IO && saved_errno == ENOENT && unix_socket) return net::error::connection_refused;
  if (redis_err == REDIS_ERR_IO && saved_errno) return error_code(saved_errno, boost::system::system_category());
  if (redis_err == REDIS_ERR_OTHER) return net::error::host_not_found;
  return net::error::not_connected;
}

}  // namespace

struct RedisConnection::Impl {
  net::any_io_executor ex_;
  RedisUrl url_;
  std::chrono::milliseconds connect_timeout_;
  std::chrono::milliseconds reconnect_backoff_;
  std::string where_;
  std::shared_ptr<Link> link_;  ///< current (or last) connect attempt

  Impl(net::any_io_executor ex, RedisUrl url, std::chrono::milliseconds ct, std::chrono::milliseconds rb)
      : ex_(std::move(ex)), url_(std::move(url)), connect_timeout_(ct), reconnect_backoff_(rb),
        where_(endpoint(url_)) {}

  ~Impl() {
    if (link_) link_->drop(net::error::operation_aborted, "connection closed");
  }

  /// A live Link (connecting or connected), or the error commands should fail with now.
  error_code ensure_link() {
    if (link_ && link_->alive()) return {};
    if (link_ && !link_->established_ && Clock::now() < link_->started_ + reconnect_backoff_)
      return link_->failure_ ? link_->failure_ : error_code(net::error::not_connected);
    return connect();
  }

  error_code connect() {
    auto l = std::make_shared<Link>(ex_, where_);
    link_ = l;
    errno = 0;
    const bool unix_socket = !url_.socket_path.empty();
    redisAsyncContext* ac = unix_socket ? redisAsyncConnectUnix(url_.socket_path.c_str())
                                        : redisAsyncConnect(url_.host.c_str(), url_.port);
    int saved = errno;
    if (!ac) {
      l->fail(net::error::no_memory, "cannot allocate a hiredis context");
      return l->failure_;
    }
    if (ac->err) {  // failed synchronously (e.g. refused on loopback, name lookup failed, no socket file)
      error_code ec = connect_error(ac->err, saved, unix_socket);
      l->fail(ec, ac->errstr);
      redisAsyncFree(ac);
      spdlog::warn("redis {}: connect failed: {}", where_, l->failure_text_);
      return l->failure_;
    }
    l->ac_ = ac;
    ac->data = l.get();
    error_code ec;
    l->sd_.assign(ac->c.fd, ec);
    if (ec) {
      l->drop(ec, "cannot register the socket: " + ec.message());
      return l->failure_;
    }
    ac->ev.data = l.get();
    ac->ev.addRead = on_add_read;
    ac->ev.delRead = on_del_read;
    ac->ev.addWrite = on_add_write;
    ac->ev.delWrite = on_del_write;
    ac->ev.cleanup = on_cleanup;
    redisAsyncSetConnectCallback(ac, on_connect);  // arms the write wait that completes the connect
    redisAsyncSetDisconnectCallback(ac, on_disconnect);

    if (!url_.password.empty()) {
      std::vector<std::string> auth{"AUTH"};
      if (!url_.username.empty()) auth.push_back(url_.username);
      auth.push_back(url_.password);
      if (send_argv(ac, on_handshake, reinterpret_cast<void*>(static_cast<std::uintptr_t>(Handshake::auth)), auth) == REDIS_OK)
        ++l->handshake_left_;
    }
    if (url_.db != 0) {
      if (send_argv(ac, on_handshake, reinterpret_cast<void*>(static_cast<std::uintptr_t>(Handshake::select)),
                    {"SELECT", std::to_string(url_.db)}) == REDIS_OK)
        ++l->handshake_left_;
    }

    l->connect_timer_.expires_after(connect_timeout_);
    l->connect_timer_.async_wait([l, timeout = connect_timeout_](error_code ec) noexcept {
      if (ec || !l->alive() || l->established_) return;
      try {
        l->fail(net::error::timed_out, fmt::format("connect timed out after {} ms", timeout.count()));
        spdlog::warn("redis {}: {}", l->where_, l->failure_text_);
      } catch (...) {
      }
      l->drop(net::error::timed_out, "connect timed out");
    });
    return {};
  }

  /// Queues the command on a live Link (sent once connected); the reply completes `p`.
  error_code submit(const std::vector<std::string>& argv, const std::shared_ptr<Pending>& p) {
    if (argv.empty()) return boost::system::errc::make_error_code(boost::system::errc::invalid_argument);
    if (unsupported_command(argv.front())) return net::error::operation_not_supported;
    if (auto ec = ensure_link()) return ec;
    Link& l = *link_;
    l.inflight_.push_back(p);
    if (send_argv(l.ac_, on_reply, p.get(), argv) != REDIS_OK) {
      l.inflight_.pop_back();
      return net::error::not_connected;
    }
    ++l.submitted_;
    p->link = link_;
    return {};
  }
};

RedisConnection::RedisConnection(net::any_io_executor ex, RedisUrl url, std::chrono::milliseconds connect_timeout,
                                 std::chrono::milliseconds reconnect_backoff)
    : impl_(std::make_unique<Impl>(std::move(ex), std::move(url), connect_timeout, reconnect_backoff)) {}

RedisConnection::~RedisConnection() = default;

net::awaitable<RedisConnection::Result> RedisConnection::command(std::vector<std::string> argv,
                                                                 std::chrono::milliseconds timeout) {
  // A caller already cancelled: answer without sending (co_await on the timer would throw).
  if ((co_await net::this_coro::cancellation_state).cancelled() != net::cancellation_type::none)
    co_return Result{error_code(net::error::operation_aborted), RedisReply{}};

  // Only this part touches *this; after the first suspension the coroutine uses `p` alone, so
  // the RedisConnection may be destroyed while it waits.
  auto p = std::make_shared<Pending>(impl_->ex_);
  p->timer.expires_after(timeout);  // the earliest the deadline (written + timeout) can pass
  if (error_code ec = impl_->submit(argv, p)) co_return Result{ec, RedisReply{}};

  while (!p->done) {
    error_code wait_ec;
    co_await p->timer.async_wait(net::redirect_error(net::use_awaitable, wait_ec));
    if (p->done) break;
    if (wait_ec == net::error::operation_aborted) {  // without a result: the caller was cancelled
      p->done = true;  // the reply, if it ever comes, is discarded by on_reply
      co_return Result{wait_ec, RedisReply{}};
    }
    // The timer fired. What counts is Redis: a reply it sent that this loop has not read yet is
    // delivered now, and a command this loop has not written yet is written now; either way the
    // command gets its whole deadline from the write.
    auto l = p->link.lock();
    if (l && l->alive()) {
      l->drain(*p);
      if (p->done) break;
      if (p->written == Clock::time_point{}) l->flush_now();
      if (p->done) break;
      if (p->written != Clock::time_point{} && Clock::now() < p->written + timeout) {
        p->timer.expires_at(p->written + timeout);
        continue;
      }
      // Not written (a connect still in progress) or written a whole deadline ago: timed out.
    }
    p->done = true;  // the reply, if it ever comes, is discarded by on_reply
    // A late reply is discarded when it comes, so the stream stays in step. Only a link whose
    // reply stream has not moved for two deadlines is dropped: under a burst, or after a stall
    // shorter than that (Redis waiting for a CPU on a busy host), one late reply must not fail
    // every other command in flight, each of which has its own deadline.
    if (l && l->alive() && l->connected_ && Clock::now() - l->last_progress_ >= kSilentDeadlinesToDrop * timeout) {
      spdlog::warn("redis {}: a command timed out after {} ms; reconnecting", l->where_, timeout.count());
      l->drop(net::error::connection_aborted,
              fmt::format("dropped: a command timed out after {} ms", timeout.count()));
    }
    co_return Result{error_code(net::error::timed_out), RedisReply{}};
  }
  co_return Result{p->ec, std::move(p->reply)};
}

bool RedisConnection::connected() const { return impl_->link_ && impl_->link_->alive() && impl_->link_->connected_; }

std::string RedisConnection::last_error() const { return impl_->link_ ? impl_->link_->failure_text_ : std::string(); }

// ---------------------------------------------------------------- the blocking client

void RedisSyncClient::ContextDeleter::operator()(redisContext* c) const noexcept { redisFree(c); }

RedisSyncClient::RedisSyncClient(RedisUrl url, std::chrono::milliseconds timeout)
    : url_(std::move(url)), timeout_(timeout) {}
RedisSyncClient::~RedisSyncClient() = default;
RedisSyncClient::RedisSyncClient(RedisSyncClient&&) noexcept = default;
RedisSyncClient& RedisSyncClient::operator=(RedisSyncClient&&) noexcept = default;

namespace {

redisReply* sync_argv(redisContext* c, const std::vector<std::string>& argv) {
  std::vector<const char*> ptrs;
  std::vector<size_t> lens;
  for (const auto& a : argv) {
    ptrs.push_back(a.data());
    lens.push_back(a.size());
  }
  return static_cast<redisReply*>(redisCommandArgv(c, static_cast<int>(argv.size()), ptrs.data(), lens.data()));
}

struct ReplyDeleter {
  void operator()(redisReply* r) const noexcept { freeReplyObject(r); }
};
using ReplyPtr = std::unique_ptr<redisReply, ReplyDeleter>;

}  // namespace

bool RedisSyncClient::connect() {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(timeout_.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((timeout_.count() % 1000) * 1000);
  std::unique_ptr<redisContext, ContextDeleter> c(
      url_.socket_path.empty() ? redisConnectWithTimeout(url_.host.c_str(), url_.port, tv)
                               : redisConnectUnixWithTimeout(url_.socket_path.c_str(), tv));
  if (!c) {
    last_error_ = "cannot allocate a hiredis context";
    return false;
  }
  if (c->err || redisSetTimeout(c.get(), tv) != REDIS_OK) {
    last_error_ = fmt::format("connect to {}: {}", endpoint(url_), c->errstr);
    return false;
  }
  auto handshake = [&](const std::vector<std::string>& argv, const char* what) {
    ReplyPtr r(sync_argv(c.get(), argv));
    if (!r) {
      last_error_ = fmt::format("{} on {}: {}", what, endpoint(url_), c->errstr);
      return false;
    }
    if (r->type == REDIS_REPLY_ERROR) {
      last_error_ = fmt::format("{} refused by {}: {}", what, endpoint(url_), std::string_view(r->str, r->len));
      return false;
    }
    return true;
  };
  if (!url_.password.empty()) {
    std::vector<std::string> auth{"AUTH"};
    if (!url_.username.empty()) auth.push_back(url_.username);
    auth.push_back(url_.password);
    if (!handshake(auth, "AUTH")) return false;
  }
  if (url_.db != 0 && !handshake({"SELECT", std::to_string(url_.db)}, "SELECT")) return false;
  ctx_ = std::move(c);
  return true;
}

std::optional<RedisReply> RedisSyncClient::command(const std::vector<std::string>& argv) {
  if (argv.empty()) {
    last_error_ = "empty command";
    return std::nullopt;
  }
  if (!ctx_ && !connect()) return std::nullopt;
  ReplyPtr r(sync_argv(ctx_.get(), argv));
  if (!r) {  // I/O error or timeout: the stream is out of step, start over next time
    last_error_ = fmt::format("{} on {}: {}", argv.front(), endpoint(url_), ctx_->errstr);
    ctx_.reset();
    return std::nullopt;
  }
  return copy_reply(*r);
}

}  // namespace tollgate::ratelimit
