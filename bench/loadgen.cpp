// tollgate-loadgen: the benchmark suite's HTTP/1.1 load generator (bench/run.sh drives it).
//
//   open loop    --rate R          requests are scheduled at t0 + k/R whatever the responses do
//                                  (coordinated-omission free): latency runs from the SCHEDULED
//                                  send time, so queueing in the client pool or the server counts
//   closed loop  --concurrency C   C connections, each sends its next request when the previous
//                                  response is complete; latency runs from the actual send
//   idle streams --idle-streams N  opens N streaming requests, waits for the first event of each,
//                                  holds them open for --hold seconds, reports the RSS of --pid
//
// --stream parses the SSE body: TTFT = first `data:` event (except [DONE]) after the scheduled
// send, and the gaps between consecutive data events. --expect STR counts a 200 whose body lacks
// STR as an error. Every loop is bounded in time (--duration, --timeout, --ramp-timeout, --hold).
// Output: human-readable, or one JSON object with --json (percentiles in microseconds).
//
// GCC 12 note: no co_await inside ?:, no braced temporaries or lambda temporaries passed to
// coroutines; every coroutine takes references to long-lived objects or plain values.
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <fmt/format.h>

#include <sys/resource.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <deque>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace net = boost::asio;
using tcp = net::ip::tcp;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

namespace {

constexpr auto kTuple = net::as_tuple(net::use_awaitable);

[[noreturn]] void die(const std::string& msg) {
  std::cerr << "tollgate-loadgen: " << msg << "\n";
  std::exit(2);
}

std::int64_t ns(Clock::duration d) { return std::chrono::duration_cast<std::chrono::nanoseconds>(d).count(); }
Clock::duration secs(double s) { return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s)); }

// ------------------------------------------------------------------------------------------
// Options

struct Options {
  std::string url, host, port, path;
  std::string method;
  std::string body;
  bool has_body = false;
  std::vector<std::string> headers;
  double rate = 0;
  int concurrency = 0;
  double duration = 5;
  double warmup = 0;
  int connections = 64;
  bool connections_set = false;
  bool stream = false;
  bool json = false;
  std::string expect;
  int threads = 1;
  double timeout = 30;
  int idle_streams = 0;
  double hold = 5;
  double ramp_timeout = 60;
  int ramp_parallel = 256;
  std::vector<int> pids;
  std::string label;
};

const char* kUsage = R"(usage: tollgate-loadgen --url http://127.0.0.1:PORT/path [options]
  --body FILE            POST this file (default method POST with a body, GET without)
  --method M             override the method
  --header 'k: v'        extra request header (repeatable)
  --rate R               open loop: R requests/s on a fixed schedule
  --concurrency C        closed loop: C connections back to back
  --idle-streams N       open N streams, hold them --hold S seconds, report --pid RSS
  --duration S           measured seconds (default 5)
  --warmup S             seconds before the measurement (sent, not recorded; default 0)
  --connections N        open-loop connection pool (default 64)
  --stream               parse SSE: time to first event and inter-event gaps
  --expect STR           a 200 whose body lacks STR is an error
  --timeout S            per-request timeout (default 30)
  --threads T            event-loop threads (default 1)
  --hold S --ramp-timeout S --ramp-parallel N    idle-stream mode knobs
  --pid PID              process to sample RSS of in idle-stream mode (repeatable: summed)
  --label TEXT           copied into the JSON
  --json                 print one JSON object
)";

Options parse(int argc, char** argv) {
  Options o;
  auto need = [&](int& i) -> std::string {
    if (i + 1 >= argc) die(std::string("missing value for ") + argv[i]);
    return argv[++i];
  };
  auto num = [](const std::string& s, const char* what) {
    try {
      std::size_t used = 0;
      double v = std::stod(s, &used);
      if (used != s.size() || !std::isfinite(v)) throw std::invalid_argument(s);
      return v;
    } catch (const std::exception&) {
      die(fmt::format("{} must be a number, not '{}'", what, s));
    }
  };
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--url") o.url = need(i);
    else if (a == "--body") {
      std::ifstream f(need(i), std::ios::binary);
      if (!f) die(std::string("cannot read body file ") + argv[i]);
      std::ostringstream ss;
      ss << f.rdbuf();
      o.body = ss.str();
      o.has_body = true;
    } else if (a == "--method") o.method = need(i);
    else if (a == "--header") o.headers.push_back(need(i));
    else if (a == "--rate") o.rate = num(need(i), "--rate");
    else if (a == "--concurrency") o.concurrency = static_cast<int>(num(need(i), "--concurrency"));
    else if (a == "--idle-streams") o.idle_streams = static_cast<int>(num(need(i), "--idle-streams"));
    else if (a == "--duration") o.duration = num(need(i), "--duration");
    else if (a == "--warmup") o.warmup = num(need(i), "--warmup");
    else if (a == "--connections") o.connections = static_cast<int>(num(need(i), "--connections")), o.connections_set = true;
    else if (a == "--stream") o.stream = true;
    else if (a == "--expect") o.expect = need(i);
    else if (a == "--timeout") o.timeout = num(need(i), "--timeout");
    else if (a == "--threads") o.threads = static_cast<int>(num(need(i), "--threads"));
    else if (a == "--hold") o.hold = num(need(i), "--hold");
    else if (a == "--ramp-timeout") o.ramp_timeout = num(need(i), "--ramp-timeout");
    else if (a == "--ramp-parallel") o.ramp_parallel = static_cast<int>(num(need(i), "--ramp-parallel"));
    else if (a == "--pid") o.pids.push_back(static_cast<int>(num(need(i), "--pid")));
    else if (a == "--label") o.label = need(i);
    else if (a == "--json") o.json = true;
    else if (a == "-h" || a == "--help") {
      std::cout << kUsage;
      std::exit(0);
    } else die("unknown argument " + a + "\n" + kUsage);
  }
  if (o.url.rfind("http://", 0) != 0) die("--url must start with http:// (got '" + o.url + "')");
  std::string rest = o.url.substr(7);
  auto slash = rest.find('/');
  std::string authority = rest.substr(0, slash);
  o.path = slash == std::string::npos ? "/" : rest.substr(slash);
  auto colon = authority.rfind(':');
  if (colon == std::string::npos) o.host = authority, o.port = "80";
  else o.host = authority.substr(0, colon), o.port = authority.substr(colon + 1);
  if (o.host == "localhost") o.host = "127.0.0.1";
  int modes = (o.rate > 0) + (o.concurrency > 0) + (o.idle_streams > 0);
  if (modes != 1) die("give exactly one of --rate, --concurrency, --idle-streams");
  if (o.duration <= 0 || o.duration > 3600) die("--duration must be in (0, 3600]");
  if (o.warmup < 0 || o.warmup > 600) die("--warmup must be in [0, 600]");
  if (o.timeout <= 0 || o.timeout > 600) die("--timeout must be in (0, 600]");
  if (o.hold < 0 || o.hold > 3600) die("--hold must be in [0, 3600]");
  if (o.ramp_timeout <= 0 || o.ramp_timeout > 3600) die("--ramp-timeout must be in (0, 3600]");
  if (o.threads < 1 || o.threads > 64) die("--threads must be in [1, 64]");
  if (o.connections < 1) die("--connections must be >= 1");
  if (o.ramp_parallel < 1) die("--ramp-parallel must be >= 1");
  if (o.method.empty()) o.method = o.has_body ? "POST" : "GET";
  if (o.idle_streams > 0) o.stream = true;
  return o;
}

std::string build_request(const Options& o) {
  std::string r = fmt::format("{} {} HTTP/1.1\r\nHost: {}:{}\r\n", o.method, o.path, o.host, o.port);
  bool has_ct = false;
  for (const auto& h : o.headers) {
    auto colon = h.find(':');
    if (colon == std::string::npos) die("--header must look like 'name: value', got '" + h + "'");
    std::string name = h.substr(0, colon);
    std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
    if (name == "content-type") has_ct = true;
    if (name == "content-length" || name == "host") die("--header may not set " + name);
    r += h;
    r += "\r\n";
  }
  if (o.has_body) {
    if (!has_ct) r += "Content-Type: application/json\r\n";
    r += fmt::format("Content-Length: {}\r\n", o.body.size());
  }
  r += "\r\n";
  r += o.body;
  return r;
}

// ------------------------------------------------------------------------------------------
// Statistics

struct Stats {
  std::vector<std::int64_t> latency, ttft, gaps, lag;  // nanoseconds
  std::uint64_t scheduled = 0, completed = 0, ok = 0;
  std::uint64_t err_connect = 0, err_io = 0, err_status = 0, err_body = 0, err_timeout = 0, unfinished = 0;
  std::uint64_t events = 0, streams = 0, connects = 0, retries = 0;
  std::map<int, std::uint64_t> statuses;
  std::string first_error;

  void error(std::uint64_t& counter, const std::string& what) {
    ++counter;
    if (first_error.empty()) first_error = what;
  }
  std::uint64_t errors() const { return err_connect + err_io + err_status + err_body + err_timeout + unfinished; }
  void merge(Stats&& o) {
    latency.insert(latency.end(), o.latency.begin(), o.latency.end());
    ttft.insert(ttft.end(), o.ttft.begin(), o.ttft.end());
    gaps.insert(gaps.end(), o.gaps.begin(), o.gaps.end());
    lag.insert(lag.end(), o.lag.begin(), o.lag.end());
    scheduled += o.scheduled, completed += o.completed, ok += o.ok;
    err_connect += o.err_connect, err_io += o.err_io, err_status += o.err_status, err_body += o.err_body;
    err_timeout += o.err_timeout, unfinished += o.unfinished;
    events += o.events, streams += o.streams, connects += o.connects, retries += o.retries;
    for (auto [k, v] : o.statuses) statuses[k] += v;
    if (first_error.empty()) first_error = o.first_error;
  }
};

struct Summary {
  std::size_t n = 0;
  double p50 = 0, p90 = 0, p99 = 0, p999 = 0, max = 0, mean = 0;
};

Summary summarize(std::vector<std::int64_t>& v) {
  Summary s;
  s.n = v.size();
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  auto pct = [&](double q) {
    auto rank = static_cast<std::size_t>(std::ceil(q * static_cast<double>(v.size())));
    return static_cast<double>(v[std::min(v.size() - 1, rank == 0 ? 0 : rank - 1)]) / 1000.0;
  };
  s.p50 = pct(0.50), s.p90 = pct(0.90), s.p99 = pct(0.99), s.p999 = pct(0.999);
  s.max = static_cast<double>(v.back()) / 1000.0;
  long double sum = 0;
  for (auto x : v) sum += x;
  s.mean = static_cast<double>(sum / v.size()) / 1000.0;
  return s;
}

std::string json_summary(const Summary& s) {
  return fmt::format(R"({{"n":{},"p50":{:.1f},"p90":{:.1f},"p99":{:.1f},"p999":{:.1f},"max":{:.1f},"mean":{:.1f}}})", s.n,
                     s.p50, s.p90, s.p99, s.p999, s.max, s.mean);
}

std::string json_string(std::string_view s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') out += '\\', out += static_cast<char>(c);
    else if (c < 0x20) out += fmt::format("\\u{:04x}", c);
    else out += static_cast<char>(c);
  }
  return out + "\"";
}

/// VmRSS and VmHWM of a process in KiB (0 if it is gone).
std::pair<long, long> rss_kib(int pid) {
  std::ifstream f(fmt::format("/proc/{}/status", pid));
  std::string line;
  long rss = 0, hwm = 0;
  while (std::getline(f, line)) {
    if (line.rfind("VmRSS:", 0) == 0) rss = std::atol(line.c_str() + 6);
    if (line.rfind("VmHWM:", 0) == 0) hwm = std::atol(line.c_str() + 6);
  }
  return {rss, hwm};
}

// ------------------------------------------------------------------------------------------
// One connection and its response parser

struct Conn {
  explicit Conn(net::io_context& ioc) : sock(ioc), wake(ioc) {}
  tcp::socket sock;
  net::steady_timer wake;       // idle connections wait on it; cancel() hands them a job
  std::vector<char> buf = std::vector<char>(64 * 1024);
  std::size_t rpos = 0, wpos = 0;
  Clock::time_point last_read{};
  bool used = false;            // served a request or was pre-connected: may be stale
  // the request in progress (for the watchdog and the final accounting)
  bool busy = false, record = false, timed_out = false;
  Clock::time_point origin{}, deadline = Clock::time_point::max();
  // a job handed over by the dispatcher
  bool has_job = false;
  Clock::time_point job_sched{};
  bool job_record = false;
  std::string body;             // kept only with --expect
};

/// SSE event scanner: calls on_event(t) at the end of each `data:` event other than [DONE].
struct SseScanner {
  int line_len = 0, plen = 0;
  char prefix[12] = {};
  bool ev_data = false, ev_done = false;
  template <class F>
  void feed(const char* p, std::size_t n, F&& on_event) {
    for (std::size_t i = 0; i < n; ++i) {
      char ch = p[i];
      if (ch == '\n') {
        if (line_len == 0) {
          if (ev_data && !ev_done) on_event();
          ev_data = ev_done = false;
        } else if (plen >= 5 && std::memcmp(prefix, "data:", 5) == 0) {
          ev_data = true;
          std::string_view rest(prefix + 5, static_cast<std::size_t>(plen - 5));
          if (!rest.empty() && rest.front() == ' ') rest.remove_prefix(1);
          if (rest.rfind("[DONE]", 0) == 0) ev_done = true;
        }
        line_len = plen = 0;
      } else if (ch != '\r') {
        if (plen < static_cast<int>(sizeof prefix)) prefix[plen++] = ch;
        ++line_len;
      }
    }
  }
};

struct Runner;

/// What one exchange observed, for the caller's accounting.
struct Exchange {
  Runner& r;
  Conn& c;
  Clock::time_point origin;
  bool record;
  bool idle_mode;
  SseScanner sse;
  Clock::time_point last_event{};
  std::uint64_t events = 0;
};

struct Runner {
  Runner(const Options& opt, int index) : o(opt), index(index) {}
  const Options& o;
  int index;
  net::io_context ioc{1};
  tcp::endpoint ep;
  std::string request;
  std::vector<std::unique_ptr<Conn>> conns;
  std::vector<Conn*> idle;
  std::uint32_t next_source = 0;  // idle-stream mode: round-robin over loopback source addresses
  struct Job {
    Clock::time_point sched;
    bool record;
  };
  std::deque<Job> pending;
  Stats st;
  bool stopping = false, dispatch_done = false, stopping_hard = false;
  int live = 0;
  Clock::time_point t0{}, t_measure{}, t_end{}, t_drain{};
  // idle-stream mode
  std::atomic<int> opened{0}, failed{0};
  int waiting_first = 0;  // streams started whose first event has not come yet
  std::atomic<bool> release{false};

  void on_first_event(Exchange& x) {
    if (x.idle_mode) {
      opened.fetch_add(1);
      --waiting_first;
    }
  }
};

void on_data_event(Exchange& x) {
  Clock::time_point t = x.c.last_read;
  if (x.events == 0) {
    if (x.record) x.r.st.ttft.push_back(ns(t - x.origin));
    x.r.on_first_event(x);
  } else if (x.record) {
    x.r.st.gaps.push_back(ns(t - x.last_event));
  }
  x.last_event = t;
  ++x.events;
}

void consume_body(Exchange& x, const char* p, std::size_t n) {
  if (x.r.o.stream) x.sse.feed(p, n, [&] { on_data_event(x); });
  if (!x.r.o.expect.empty() && x.c.body.size() < (1u << 20)) x.c.body.append(p, n);
}

/// Reads more bytes into c.buf. Returns the error (eof included) or success.
net::awaitable<boost::system::error_code> fill(Conn& c) {
  if (c.rpos == c.wpos) c.rpos = c.wpos = 0;
  if (c.wpos == c.buf.size()) {
    if (c.rpos == 0) co_return make_error_code(boost::system::errc::message_size);
    std::memmove(c.buf.data(), c.buf.data() + c.rpos, c.wpos - c.rpos);
    c.wpos -= c.rpos;
    c.rpos = 0;
  }
  auto [ec, n] = co_await c.sock.async_read_some(net::buffer(c.buf.data() + c.wpos, c.buf.size() - c.wpos), kTuple);
  c.last_read = Clock::now();
  if (!ec && n == 0) ec = net::error::eof;
  c.wpos += n;
  co_return ec;
}

bool iequals_prefix(std::string_view line, std::string_view name) {
  if (line.size() < name.size()) return false;
  for (std::size_t i = 0; i < name.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(line[i])) != name[i]) return false;
  return true;
}

std::string lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(), [](unsigned char ch) { return std::tolower(ch); });
  return out;
}

enum class Result { ok, connect, io, status, body, timeout };

struct Parsed {
  int status = 0;
  bool chunked = false, close = false, has_length = false;
  std::uint64_t length = 0;
};

/// One request/response on `c` (connecting first if needed). `got_bytes` tells the caller
/// whether any response byte arrived (a reused connection that fails before that is retried).
net::awaitable<Result> exchange_once(Exchange& x, bool& got_bytes, int& status_out) {
  Conn& c = x.c;
  Runner& r = x.r;
  got_bytes = false;
  if (!c.sock.is_open()) {
    c.rpos = c.wpos = 0;
    c.used = false;
    ++r.st.connects;
    if (x.idle_mode && r.ep.address().is_v4() && r.ep.address().is_loopback()) {
      // tollgate caps connections per client address (512 by default): thousands of idle
      // streams come from 200 loopback addresses, as real clients come from many.
      boost::system::error_code bind_ec;
      c.sock.open(tcp::v4(), bind_ec);
      auto source = net::ip::address_v4(0x7f000002u + r.next_source++ % 200);
      if (!bind_ec) c.sock.bind(tcp::endpoint(source, 0), bind_ec);  // unbound on failure: the kernel picks
    }
    auto [ec] = co_await c.sock.async_connect(r.ep, kTuple);
    if (ec) {
      boost::system::error_code ignore;
      c.sock.close(ignore);
      r.st.error(r.st.err_connect, "connect: " + ec.message());
      co_return Result::connect;
    }
    c.sock.set_option(tcp::no_delay(true));
  }
  {
    auto [ec, n] = co_await net::async_write(c.sock, net::buffer(r.request), kTuple);
    if (ec) co_return Result::io;
  }
  // Head
  std::size_t head_end = 0;
  for (;;) {
    std::string_view have(c.buf.data() + c.rpos, c.wpos - c.rpos);
    auto pos = have.find("\r\n\r\n");
    if (pos != std::string_view::npos) {
      head_end = c.rpos + pos + 4;
      break;
    }
    auto ec = co_await fill(c);
    if (c.wpos > c.rpos) got_bytes = true;
    if (ec) co_return Result::io;
  }
  got_bytes = true;
  Parsed p;
  {
    std::string_view head(c.buf.data() + c.rpos, head_end - c.rpos);
    auto eol = head.find("\r\n");
    std::string_view status_line = head.substr(0, eol);
    if (status_line.size() < 12 || status_line.rfind("HTTP/1.", 0) != 0) co_return Result::io;
    bool http10 = status_line[7] == '0';
    p.status = std::atoi(std::string(status_line.substr(9, 3)).c_str());
    p.close = http10;
    std::size_t at = eol + 2;
    while (at < head.size()) {
      auto e = head.find("\r\n", at);
      if (e == std::string_view::npos || e == at) break;
      std::string_view line = head.substr(at, e - at);
      at = e + 2;
      auto colon = line.find(':');
      if (colon == std::string_view::npos) continue;
      std::string_view value = line.substr(colon + 1);
      while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.remove_prefix(1);
      if (iequals_prefix(line, "content-length:")) {
        p.has_length = true;
        p.length = std::strtoull(std::string(value).c_str(), nullptr, 10);
      } else if (iequals_prefix(line, "transfer-encoding:")) {
        if (lower(value).find("chunked") != std::string::npos) p.chunked = true;
      } else if (iequals_prefix(line, "connection:")) {
        std::string v = lower(value);
        if (v.find("close") != std::string::npos) p.close = true;
        if (v.find("keep-alive") != std::string::npos) p.close = false;
      }
    }
  }
  status_out = p.status;
  c.rpos = head_end;
  c.body.clear();
  // Body
  if (p.chunked) {
    enum { size_line, data, data_crlf, trailer } state = size_line;
    std::uint64_t remaining = 0;
    bool done = false;
    while (!done) {
      std::string_view have(c.buf.data() + c.rpos, c.wpos - c.rpos);
      bool need_more = false;
      switch (state) {
        case size_line: {
          auto e = have.find("\r\n");
          if (e == std::string_view::npos) {
            need_more = true;
            break;
          }
          std::uint64_t size = std::strtoull(std::string(have.substr(0, e)).c_str(), nullptr, 16);
          c.rpos += e + 2;
          if (size == 0) state = trailer;
          else remaining = size, state = data;
          break;
        }
        case data: {
          if (have.empty()) {
            need_more = true;
            break;
          }
          std::size_t take = static_cast<std::size_t>(std::min<std::uint64_t>(remaining, have.size()));
          consume_body(x, have.data(), take);
          c.rpos += take;
          remaining -= take;
          if (remaining == 0) state = data_crlf;
          break;
        }
        case data_crlf:
          if (have.size() < 2) {
            need_more = true;
            break;
          }
          c.rpos += 2;
          state = size_line;
          break;
        case trailer: {
          auto e = have.find("\r\n");
          if (e == std::string_view::npos) {
            need_more = true;
            break;
          }
          c.rpos += e + 2;
          if (e == 0) done = true;
          break;
        }
      }
      if (need_more) {
        auto ec = co_await fill(c);
        if (ec) co_return Result::io;
      }
    }
  } else if (p.has_length) {
    std::uint64_t remaining = p.length;
    for (;;) {
      std::size_t take = static_cast<std::size_t>(std::min<std::uint64_t>(remaining, c.wpos - c.rpos));
      consume_body(x, c.buf.data() + c.rpos, take);
      c.rpos += take;
      remaining -= take;
      if (remaining == 0) break;
      auto ec = co_await fill(c);
      if (ec) co_return Result::io;
    }
  } else if (p.status != 204 && p.status != 304 && x.r.o.method != "HEAD") {
    p.close = true;  // body until EOF
    for (;;) {
      consume_body(x, c.buf.data() + c.rpos, c.wpos - c.rpos);
      c.rpos = c.wpos;
      auto ec = co_await fill(c);
      if (ec == net::error::eof) break;
      if (ec) co_return Result::io;
    }
  }
  if (p.close) {
    boost::system::error_code ignore;
    c.sock.close(ignore);
  }
  c.used = true;
  if (p.status != 200) co_return Result::status;
  if (!r.o.expect.empty() && c.body.find(r.o.expect) == std::string::npos) co_return Result::body;
  co_return Result::ok;
}

/// A full request with accounting: retries once on a stale keep-alive connection.
net::awaitable<void> exchange(Runner& r, Conn& c, Clock::time_point origin, bool record, bool idle_mode) {
  c.busy = true;
  c.record = record;
  c.origin = origin;
  c.timed_out = false;
  c.deadline = idle_mode ? Clock::time_point::max() : Clock::now() + secs(r.o.timeout);
  Result res = Result::io;
  int status = 0;
  std::uint64_t events = 0;
  for (int attempt = 0; attempt < 2; ++attempt) {
    Exchange x{r, c, origin, record, idle_mode, {}, {}, 0};
    bool reused = c.used && c.sock.is_open();
    bool got_bytes = false;
    res = co_await exchange_once(x, got_bytes, status);
    events = x.events;
    if (res == Result::io && reused && !got_bytes && !c.timed_out && !r.stopping_hard) {
      boost::system::error_code ignore;
      c.sock.close(ignore);
      ++r.st.retries;
      continue;  // the server closed an idle keep-alive connection: reconnect and resend
    }
    break;
  }
  Clock::time_point done = Clock::now();
  c.busy = false;
  if (res != Result::ok) {
    boost::system::error_code ignore;
    if (res != Result::status && res != Result::body) c.sock.close(ignore);
    if (c.timed_out) res = Result::timeout;
  }
  if (idle_mode) {
    if (status) r.st.statuses[status]++;
    if (events == 0) {  // never opened: a failure (after the release, closing is expected)
      r.failed.fetch_add(1);
      --r.waiting_first;
      if (res == Result::ok) r.st.error(r.st.err_body, "stream ended before its first event");
      else if (res == Result::io) r.st.error(r.st.err_io, "connection closed or failed before the first event");
      else if (res == Result::status) r.st.error(r.st.err_status, fmt::format("HTTP status {}", status));
    }
    co_return;
  }
  if (!record) co_return;
  ++r.st.completed;
  if (status) r.st.statuses[status]++;
  if (r.o.stream && res == Result::ok) ++r.st.streams, r.st.events += events;
  switch (res) {
    case Result::ok:
      ++r.st.ok;
      r.st.latency.push_back(ns(done - origin));
      break;
    case Result::timeout:
      r.st.latency.push_back(ns(done - origin));  // slow, not wrong: it counts as its elapsed time
      r.st.error(r.st.err_timeout, fmt::format("timeout after {} s", r.o.timeout));
      break;
    case Result::connect: break;  // counted where it happened
    case Result::io: r.st.error(r.st.err_io, "connection closed or failed before a complete response"); break;
    case Result::status: r.st.error(r.st.err_status, fmt::format("HTTP status {}", status)); break;
    case Result::body: r.st.error(r.st.err_body, fmt::format("response body lacks '{}'", r.o.expect)); break;
  }
}

// ------------------------------------------------------------------------------------------
// Modes

net::awaitable<void> open_conn_loop(Runner& r, Conn& c) {
  ++r.live;
  for (;;) {
    Clock::time_point sched;
    bool record = false;
    if (!r.pending.empty()) {
      sched = r.pending.front().sched;
      record = r.pending.front().record;
      r.pending.pop_front();
    } else if (r.stopping) {
      break;
    } else {
      r.idle.push_back(&c);
      c.wake.expires_at(Clock::time_point::max());
      co_await c.wake.async_wait(kTuple);
      if (!c.has_job) {
        if (r.stopping) break;
        continue;
      }
      c.has_job = false;
      sched = c.job_sched;
      record = c.job_record;
    }
    if (record) r.st.lag.push_back(ns(Clock::now() - sched));
    co_await exchange(r, c, sched, record, false);
  }
  --r.live;
}

net::awaitable<void> dispatcher(Runner& r, int nthreads) {
  net::steady_timer timer(r.ioc);
  const double interval_ns = 1e9 / r.o.rate;
  for (std::uint64_t k = static_cast<std::uint64_t>(r.index);; k += static_cast<std::uint64_t>(nthreads)) {
    Clock::time_point sched = r.t0 + std::chrono::nanoseconds(static_cast<std::int64_t>(static_cast<double>(k) * interval_ns));
    if (sched >= r.t_end) break;
    if (Clock::now() < sched) {
      timer.expires_at(sched);
      co_await timer.async_wait(kTuple);
    }
    bool record = sched >= r.t_measure;
    if (record) ++r.st.scheduled;
    if (!r.idle.empty()) {
      Conn* c = r.idle.back();
      r.idle.pop_back();
      c->has_job = true;
      c->job_sched = sched;
      c->job_record = record;
      c->wake.cancel();
    } else {
      r.pending.push_back(Runner::Job{sched, record});
    }
  }
  r.stopping = true;
  for (Conn* c : r.idle) c->wake.cancel();
  r.idle.clear();
  r.dispatch_done = true;
}

net::awaitable<void> closed_conn_loop(Runner& r, Conn& c) {
  ++r.live;
  while (Clock::now() < r.t_end) {
    Clock::time_point origin = Clock::now();
    bool record = origin >= r.t_measure;
    if (record) ++r.st.scheduled;
    co_await exchange(r, c, origin, record, false);
  }
  --r.live;
}

/// Timeouts, the end of the run, and what was left unfinished.
net::awaitable<void> supervisor(Runner& r, bool open_loop) {
  net::steady_timer timer(r.ioc);
  for (;;) {
    timer.expires_after(10ms);
    co_await timer.async_wait(kTuple);
    Clock::time_point now = Clock::now();
    for (auto& c : r.conns)
      if (c->busy && now > c->deadline && !c->timed_out) {
        c->timed_out = true;
        boost::system::error_code ignore;
        c->sock.close(ignore);
      }
    bool finished = r.live == 0 && (!open_loop || r.dispatch_done);
    if (finished || now > r.t_drain) break;
  }
  // Whatever is still queued or in flight at the drain deadline failed; its latency is at least
  // the time it waited (coordinated omission: the schedule does not forgive them).
  Clock::time_point now = Clock::now();
  r.stopping_hard = true;
  for (const auto& j : r.pending)
    if (j.record) {
      r.st.latency.push_back(ns(now - j.sched));
      r.st.error(r.st.unfinished, "request still queued at the end of the drain period");
    }
  r.pending.clear();
  for (auto& c : r.conns)
    if (c->busy && c->record) {
      r.st.latency.push_back(ns(now - c->origin));
      r.st.error(r.st.unfinished, "request still in flight at the end of the drain period");
      c->record = false;
    }
  r.ioc.stop();
}

net::awaitable<void> idle_stream(Runner& r, Conn& c) {
  co_await exchange(r, c, Clock::now(), true, true);
}

net::awaitable<void> idle_spawner(Runner& r, int n) {
  net::steady_timer timer(r.ioc);
  for (int i = 0; i < n; ++i) {
    while (r.waiting_first >= std::max(1, r.o.ramp_parallel / r.o.threads) && !r.release.load()) {
      timer.expires_after(1ms);
      co_await timer.async_wait(kTuple);
    }
    if (r.release.load()) break;
    r.conns.push_back(std::make_unique<Conn>(r.ioc));
    ++r.waiting_first;
    net::co_spawn(r.ioc, idle_stream(r, *r.conns.back()), net::detached);
  }
}

net::awaitable<void> idle_closer(Runner& r) {
  net::steady_timer timer(r.ioc);
  while (!r.release.load()) {
    timer.expires_after(20ms);
    co_await timer.async_wait(kTuple);
  }
  for (auto& c : r.conns) {
    boost::system::error_code ignore;
    c->sock.close(ignore);
  }
  timer.expires_after(50ms);
  co_await timer.async_wait(kTuple);
  r.ioc.stop();
}

void raise_nofile() {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
}

}  // namespace

int main(int argc, char** argv) {
  Options o = parse(argc, argv);
  raise_nofile();
  boost::system::error_code ec;
  auto addr = net::ip::make_address(o.host, ec);
  if (ec) die("--url host must be an IP address or localhost (got '" + o.host + "')");
  tcp::endpoint ep(addr, static_cast<unsigned short>(std::atoi(o.port.c_str())));
  const std::string request = build_request(o);

  std::vector<std::unique_ptr<Runner>> runners;
  for (int i = 0; i < o.threads; ++i) {
    runners.push_back(std::make_unique<Runner>(o, i));
    runners.back()->ep = ep;
    runners.back()->request = request;
  }
  auto share = [&](int total, int i) { return total / o.threads + (i < total % o.threads ? 1 : 0); };

  std::string mode;
  long rss_before = 0, rss_hold = 0, hwm_hold = 0, rss_peak = 0;
  double ramp_seconds = 0;
  Clock::time_point run_start = Clock::now();

  if (o.idle_streams > 0) {
    mode = "idle_streams";
    for (int pid : o.pids) rss_before += rss_kib(pid).first;
    for (int i = 0; i < o.threads; ++i) {
      Runner& r = *runners[static_cast<std::size_t>(i)];
      net::co_spawn(r.ioc, idle_spawner(r, share(o.idle_streams, i)), net::detached);
      net::co_spawn(r.ioc, idle_closer(r), net::detached);
    }
    std::vector<std::thread> threads;
    for (auto& r : runners) threads.emplace_back([&r] { r->ioc.run(); });
    Clock::time_point ramp_end = Clock::now() + secs(o.ramp_timeout);
    auto settled = [&] {
      int n = 0;
      for (auto& r : runners) n += r->opened.load() + r->failed.load();
      return n;
    };
    while (settled() < o.idle_streams && Clock::now() < ramp_end) std::this_thread::sleep_for(5ms);
    ramp_seconds = std::chrono::duration<double>(Clock::now() - run_start).count();
    std::this_thread::sleep_for(200ms);  // let the last first-events settle in the proxy
    Clock::time_point hold_end = Clock::now() + secs(o.hold);
    do {
      long rss = 0, hwm = 0;
      for (int pid : o.pids) {
        auto [a, b] = rss_kib(pid);
        rss += a, hwm += b;
      }
      if (rss_hold == 0) rss_hold = rss;
      rss_peak = std::max(rss_peak, rss);
      hwm_hold = std::max(hwm_hold, hwm);
      std::this_thread::sleep_for(100ms);
    } while (Clock::now() < hold_end);
    for (auto& r : runners) r->release.store(true);
    for (auto& t : threads) t.join();
  } else {
    bool open_loop = o.rate > 0;
    mode = open_loop ? "open" : "closed";
    // Pre-connect the open-loop pool so connection setup is not part of the schedule.
    if (open_loop) {
      int per = 0;
      for (int i = 0; i < o.threads; ++i) {
        Runner& r = *runners[static_cast<std::size_t>(i)];
        per = share(o.connections, i);
        for (int k = 0; k < per; ++k) {
          r.conns.push_back(std::make_unique<Conn>(r.ioc));
          Conn& c = *r.conns.back();
          boost::system::error_code cec;
          c.sock.connect(ep, cec);
          ++r.st.connects;
          if (cec) {
            c.sock.close(cec);
            continue;  // connected lazily on first use (and counted then if it fails again)
          }
          c.sock.set_option(tcp::no_delay(true));
          c.used = true;
        }
      }
    } else {
      for (int i = 0; i < o.threads; ++i)
        for (int k = 0; k < share(o.concurrency, i); ++k)
          runners[static_cast<std::size_t>(i)]->conns.push_back(std::make_unique<Conn>(runners[static_cast<std::size_t>(i)]->ioc));
    }
    Clock::time_point t0 = Clock::now() + 20ms;
    for (auto& rp : runners) {
      Runner& r = *rp;
      r.t0 = t0;
      r.t_measure = t0 + secs(o.warmup);
      r.t_end = r.t_measure + secs(o.duration);
      r.t_drain = r.t_end + secs(std::min(o.timeout, 10.0) + 0.5);
      for (auto& c : r.conns) {
        if (open_loop) net::co_spawn(r.ioc, open_conn_loop(r, *c), net::detached);
        else net::co_spawn(r.ioc, closed_conn_loop(r, *c), net::detached);
      }
      if (open_loop) net::co_spawn(r.ioc, dispatcher(r, o.threads), net::detached);
      net::co_spawn(r.ioc, supervisor(r, open_loop), net::detached);
    }
    std::vector<std::thread> threads;
    for (auto& r : runners) threads.emplace_back([&r] { r->ioc.run(); });
    for (auto& t : threads) t.join();
  }

  Stats st;
  int opened = 0, failed = 0;
  for (auto& r : runners) {
    opened += r->opened.load();
    failed += r->failed.load();
    st.merge(std::move(r->st));
  }
  Summary lat = summarize(st.latency), ttft = summarize(st.ttft), gaps = summarize(st.gaps), lag = summarize(st.lag);
  double thr = o.idle_streams > 0 ? 0 : static_cast<double>(st.ok) / o.duration;
  bool stream_stats = o.stream && o.idle_streams == 0;

  if (o.json) {
    std::string statuses;
    for (auto [k, v] : st.statuses) statuses += fmt::format("{}\"{}\":{}", statuses.empty() ? "" : ",", k, v);
    std::string out = fmt::format(
        R"({{"label":{},"mode":"{}","url":{},"rate":{},"concurrency":{},"connections":{},"threads":{},)"
        R"("duration_s":{},"warmup_s":{},"scheduled":{},"completed":{},"ok":{},"errors":{},)"
        R"("error_kinds":{{"connect":{},"io":{},"status":{},"body":{},"timeout":{},"unfinished":{}}},)"
        R"("first_error":{},"statuses":{{{}}},"throughput_rps":{:.1f},"connects":{},"retries":{},)"
        R"("latency_us":{},"send_lag_us":{})",
        json_string(o.label), mode, json_string(o.url), o.rate, o.concurrency,
        o.rate > 0 ? o.connections : (o.concurrency > 0 ? o.concurrency : o.idle_streams), o.threads, o.duration,
        o.warmup, st.scheduled, st.completed, st.ok, st.errors(), st.err_connect, st.err_io, st.err_status, st.err_body,
        st.err_timeout, st.unfinished, json_string(st.first_error), statuses, thr, st.connects, st.retries,
        json_summary(lat), json_summary(lag));
    if (stream_stats || o.idle_streams > 0)
      out += fmt::format(R"(,"streams":{},"events":{},"ttft_us":{},"gap_us":{})", st.streams, st.events,
                         json_summary(ttft), json_summary(gaps));
    if (o.idle_streams > 0)
      out += fmt::format(
          R"(,"idle":{{"target":{},"opened":{},"failed":{},"ramp_s":{:.2f},"hold_s":{},"rss_before_kib":{},)"
          R"("rss_hold_kib":{},"rss_peak_kib":{},"hwm_kib":{}}})",
          o.idle_streams, opened, failed, ramp_seconds, o.hold, rss_before, rss_hold, rss_peak, hwm_hold);
    out += "}";
    std::cout << out << std::endl;
  } else {
    fmt::print("{} {} {}: {} ok / {} scheduled, {} errors{}\n", mode, o.label, o.url, st.ok, st.scheduled, st.errors(),
               st.first_error.empty() ? "" : " (first: " + st.first_error + ")");
    if (o.idle_streams > 0) {
      fmt::print("  streams opened {} / {} (failed {}) in {:.2f} s; RSS before {} KiB, holding {} KiB (peak {} KiB)\n",
                 opened, o.idle_streams, failed, ramp_seconds, rss_before, rss_hold, rss_peak);
    } else {
      fmt::print("  throughput {:.1f} req/s\n", thr);
      fmt::print("  latency µs  p50 {:.1f}  p90 {:.1f}  p99 {:.1f}  p99.9 {:.1f}  max {:.1f}\n", lat.p50, lat.p90,
                 lat.p99, lat.p999, lat.max);
      if (o.rate > 0) fmt::print("  send lag µs p50 {:.1f}  p99 {:.1f}  max {:.1f}\n", lag.p50, lag.p99, lag.max);
    }
    if (stream_stats || o.idle_streams > 0) {
      fmt::print("  TTFT µs     p50 {:.1f}  p90 {:.1f}  p99 {:.1f}  p99.9 {:.1f}  max {:.1f}\n", ttft.p50, ttft.p90,
                 ttft.p99, ttft.p999, ttft.max);
      if (stream_stats)
        fmt::print("  gap µs      p50 {:.1f}  p90 {:.1f}  p99 {:.1f}  p99.9 {:.1f}  max {:.1f}  ({} events / {} streams)\n",
                   gaps.p50, gaps.p90, gaps.p99, gaps.p999, gaps.max, st.events, st.streams);
    }
  }
  return 0;
}
