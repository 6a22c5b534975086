// tollgate-burst: N HTTP/1.1 requests at once, each on a TCP connection of its own, for the e2e
// overload test (tests/e2e/overload.test.js). On a 2-core box the client shares the CPU with
// everything it tests: node's sockets cost ~0.3 ms of CPU per request (~300 ms for 1,000),
// which starved Redis; this costs a few hundredths of that.
//
//   tollgate-burst --url http://127.0.0.1:P1 [--url …] --n 1000 --path /v1/chat/completions
//                  [--header 'Name: value']… [--body TEXT] [--timeout-ms 10000]
//
// Opens the N connections first (request i to the i-th URL, round robin), then writes every
// request (`Connection: close`) and reads each answer to the end. Prints one JSON object per
// line per request, in order: {"i":…,"status":…,"us":…,"body":"…"} — `us` from the request's
// write to the end of its answer, status 0 (and the error in body) if it failed.
#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

namespace net = boost::asio;
using tcp = net::ip::tcp;
using Clock = std::chrono::steady_clock;

namespace {

constexpr auto kTuple = net::as_tuple(net::use_awaitable);

[[noreturn]] void usage(const std::string& why) {
  std::fprintf(stderr, "tollgate-burst: %s\nusage: tollgate-burst --url URL… --n N --path P [--header H]… "
                       "[--body B] [--timeout-ms MS]\n", why.c_str());
  std::exit(2);
}

struct Target {
  std::string host, port;
};

Target parse_url(const std::string& url) {
  const std::string scheme = "http://";
  if (url.rfind(scheme, 0) != 0) usage("only http:// URLs: " + url);
  auto hostport = url.substr(scheme.size());
  hostport = hostport.substr(0, hostport.find('/'));
  auto colon = hostport.rfind(':');
  if (colon == std::string::npos) usage("URL without a port: " + url);
  return {hostport.substr(0, colon), hostport.substr(colon + 1)};
}

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') out += '\\', out += static_cast<char>(c);
    else if (c < 0x20) out += fmt::format("\\u{:04x}", c);
    else out += static_cast<char>(c);
  }
  return out + "\"";
}

struct Exchange {
  std::optional<tcp::socket> socket;
  std::string request, response, error;
  Clock::time_point sent, done;
};

net::awaitable<void> open(Exchange& x, tcp::endpoint ep, int& pending) {
  x.socket.emplace(co_await net::this_coro::executor);
  auto [ec] = co_await x.socket->async_connect(ep, kTuple);
  if (ec) x.error = "connect: " + ec.message();
  --pending;
}

net::awaitable<void> exchange(Exchange& x, int& pending) {
  x.sent = Clock::now();
  auto [wec, wn] = co_await net::async_write(*x.socket, net::buffer(x.request), kTuple);
  if (wec) {
    x.error = "write: " + wec.message();
  } else {
    auto [rec, rn] = co_await net::async_read(*x.socket, net::dynamic_buffer(x.response), kTuple);
    if (rec && rec != net::error::eof) x.error = "read: " + rec.message();
  }
  x.done = Clock::now();
  --pending;
}

/// Runs the loop until `pending` reaches 0 or the deadline passes.
bool run_until(net::io_context& ioc, const int& pending, Clock::time_point deadline) {
  while (pending > 0 && Clock::now() < deadline) {
    ioc.restart();
    ioc.run_for(std::chrono::milliseconds(20));
  }
  return pending == 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> urls, headers;
  std::string path, body;
  int n = 0;
  long timeout_ms = 10'000;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage("missing value after " + a);
      return argv[++i];
    };
    if (a == "--url") urls.push_back(value());
    else if (a == "--n") n = std::atoi(value().c_str());
    else if (a == "--path") path = value();
    else if (a == "--header") headers.push_back(value());
    else if (a == "--body") body = value();
    else if (a == "--timeout-ms") timeout_ms = std::atol(value().c_str());
    else usage("unknown option " + a);
  }
  if (urls.empty() || n <= 0 || path.empty()) usage("--url, --n and --path are required");

  net::io_context ioc{1};
  tcp::resolver resolver(ioc);
  std::vector<tcp::endpoint> endpoints;
  std::vector<std::string> requests;
  for (const auto& u : urls) {
    Target t = parse_url(u);
    endpoints.push_back(*resolver.resolve(t.host, t.port).begin());
    std::string head = fmt::format("POST {} HTTP/1.1\r\nHost: {}:{}\r\n", path, t.host, t.port);
    for (const auto& h : headers) head += h + "\r\n";
    requests.push_back(fmt::format("{}Content-Length: {}\r\nConnection: close\r\n\r\n{}", head, body.size(), body));
  }

  const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  std::vector<Exchange> xs(static_cast<std::size_t>(n));
  int pending = n;
  for (int i = 0; i < n; ++i) {
    xs[i].request = requests[i % urls.size()];
    net::co_spawn(ioc, open(xs[i], endpoints[i % endpoints.size()], pending), net::detached);
  }
  if (!run_until(ioc, pending, deadline)) usage("connections not open within the timeout");
  pending = 0;
  for (auto& x : xs) {
    if (!x.error.empty()) continue;
    ++pending;
    net::co_spawn(ioc, exchange(x, pending), net::detached);
  }
  const bool finished = run_until(ioc, pending, deadline);

  std::string out;
  for (int i = 0; i < n; ++i) {
    const auto& x = xs[i];
    int status = 0;
    std::string text = x.error;
    if (x.error.empty() && x.done != Clock::time_point{}) {
      if (x.response.rfind("HTTP/1.1 ", 0) == 0 && x.response.size() >= 12) status = std::atoi(x.response.c_str() + 9);
      auto end_of_head = x.response.find("\r\n\r\n");
      text = end_of_head == std::string::npos ? x.response : x.response.substr(end_of_head + 4);
    } else if (text.empty()) {
      text = "no answer within the timeout";
    }
    long long us = x.done == Clock::time_point{}
                       ? -1
                       : std::chrono::duration_cast<std::chrono::microseconds>(x.done - x.sent).count();
    out += fmt::format("{{\"i\":{},\"status\":{},\"us\":{},\"body\":{}}}\n", i, status, us, json_string(text));
  }
  std::fwrite(out.data(), 1, out.size(), stdout);
  return finished ? 0 : 1;
}
