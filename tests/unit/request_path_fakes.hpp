#pragma once
// Fakes and a harness for the request-path unit tests (request_path_test.cpp): the whole path
// (run_session → phases → forward/relay → record_and_settle) on one io_context in the test's
// thread, with the seams of proxy/seams.hpp faked — no Redis, no Postgres, no other process.
//
//   client  ──loopback socket──▶ run_session (the real request path)
//                                   ├─ FakeKeySource, FakeAdmission, FakeUsageSink
//                                   └─ FakeConnector ──loopback socket──▶ FakeUpstream (scripted)
//
// Why loopback sockets and not beast's test::stream: the request path takes the client as a
// beast::tcp_stream and uses its socket directly — the relay writes with the socket's
// non-blocking write_some and tests for a departed client with recv(MSG_PEEK), ClientWatch waits
// on the socket's readiness (proxy/relay.cpp) — and an UpstreamConnection holds a
// beast::tcp_stream (or TLS over one) that ClientWatch closes. test::stream fits neither side, so
// both are real TCP sockets on 127.0.0.1 (microseconds each, no external process).
#include "proxy/app.hpp"
#include "proxy/phase.hpp"
#include "proxy/session.hpp"
#include "proxy/upstream.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/beast/http.hpp>
#include <boost/json.hpp>

#include <chrono>
#include <deque>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace tollgate::test {

namespace http = beast::http;
using tcp = net::ip::tcp;
using namespace std::chrono_literals;

/// API keys and balances from maps; `fail` makes both calls throw (Postgres down).
struct FakeKeySource final : KeySource {
  std::map<std::string, keys::KeyRecord> keys;       ///< by key hash
  std::map<std::string, pricing::Micros> balances;  ///< by account
  bool fail = false;
  int lookups = 0;
  net::awaitable<std::optional<keys::KeyRecord>> find_key(std::string key_hash) override;
  net::awaitable<std::optional<pricing::Micros>> balance(std::string account) override;
};

/// The self-service reports from maps; `fail` makes every call throw (Postgres down). The
/// generation lookup matches a row of the asking account by request id or generation id.
struct FakeAccountSource final : AccountSource {
  std::map<std::string, sql::KeyUsage> keys;               ///< by key id
  std::map<std::string, sql::AccountCredits> credits_of;   ///< by account
  std::vector<std::pair<std::string, sql::Generation>> generations;  ///< (account, row)
  bool fail = false;
  std::vector<std::string> asked;  ///< "<call> <account> [<key id or generation id>]", in order
  net::awaitable<std::optional<sql::KeyUsage>> key_usage(std::string key_id, std::string account) override;
  net::awaitable<sql::AccountCredits> credits(std::string account) override;
  net::awaitable<std::optional<sql::Generation>> generation(std::string account, std::string id) override;
};

/// Scripted verdicts (admitted when the script is empty); remembers admissions and settles.
struct FakeAdmission final : AdmissionPort {
  std::deque<ratelimit::Admission> script;
  std::vector<std::string> admitted;  ///< request ids, in order
  std::vector<ratelimit::Settlement> settles;
  net::awaitable<ratelimit::Admission> admit(const keys::KeyRecord& key, const std::string& request_id,
                                             pricing::Micros worst, std::int64_t tokens) override;
  void settle(ratelimit::Settlement s) override { settles.push_back(std::move(s)); }

  /// Over key_requests_per_minute (limit 60), retry in `retry_after_ms`.
  static ratelimit::Admission rate_limited(std::int64_t retry_after_ms);
  static ratelimit::Admission insufficient(pricing::Micros available);
};

struct FakeUsageSink final : sql::UsageSink {
  std::vector<sql::UsageRecord> records;
  void append(sql::UsageRecord&& rec) override { records.push_back(std::move(rec)); }
  sql::UsageWriterStats stats() const override { return {}; }
};

/// What the fake upstream does with one request.
enum class Reply {
  json200,    ///< 200 JSON with usage (10 prompt + 5 completion tokens)
  sse,        ///< 200 SSE: `events` content events, a usage event (completion = events), [DONE]
  sse_cut,    ///< `events` content events, then the connection closes mid-stream
  sse_stall,  ///< `events` content events, then nothing until the proxy closes
  status503,
  status429,
  close,      ///< reads the request, closes without an answer
  stall,      ///< reads the request, never answers
};
struct Script {
  Reply reply = Reply::json200;
  int events = 3;
};

/// The upstreams' server: one loopback acceptor for all of them; which upstream a request was
/// for is the first segment of its path (upstream `x` has base URL http://127.0.0.1:<port>/x).
class FakeUpstream {
 public:
  struct Received {
    std::string upstream, target, body;
    std::string anthropic_version, x_api_key, authorization;  ///< those request headers, as received
  };
  explicit FakeUpstream(net::io_context& ioc);
  std::uint16_t port() const { return acceptor_.local_endpoint().port(); }
  /// Queues what `upstream` does with its next request (json200 once the queue is empty).
  void script(const std::string& upstream, Script s) { scripts_[upstream].push_back(s); }
  int requests(const std::string& upstream) const;
  void stop();
  std::vector<Received> received;

 private:
  net::awaitable<void> accept_loop();
  net::awaitable<void> serve(tcp::socket s);
  tcp::acceptor acceptor_;
  std::map<std::string, std::deque<Script>> scripts_;
};

/// Plain TCP connections to the fake upstream (the port of the upstream's URL); upstreams named
/// in `refuse` fail to connect as a refused connection does.
struct FakeConnector final : UpstreamConnector {
  std::set<std::string> refuse;
  std::map<std::string, int> acquires;  ///< by upstream name, refused ones included
  int released = 0;
  net::awaitable<std::unique_ptr<UpstreamConnection>> acquire(const routing::Upstream& u) override;
  void release(const routing::Upstream&, std::unique_ptr<UpstreamConnection>) override { ++released; }
};

struct Options {
  std::vector<std::string> route{"a"};  ///< upstreams serving test/model, highest priority first
  bool admission = true;                ///< false: ThreadContext::admission is null
  std::uint32_t max_requests_per_connection = 1000;
  std::uint32_t circuit_threshold = 5;
  std::chrono::milliseconds upstream_response_timeout{5'000};
};

/// Prices: test/model at $1 / $2 per M tokens (1 and 2 credit units per token), no markup;
/// test/unrouted is priced but no route serves it.
inline constexpr std::string_view model = "test/model";

class Harness;

/// One client connection (a loopback socket) to a run_session on the harness' loop.
class Client {
 public:
  using Response = http::response<http::string_body>;
  explicit Client(Harness& h);
  /// Writes raw bytes (blocking: small writes into an empty socket buffer).
  void send(std::string_view raw);
  /// Runs the loop until one whole response is read (throws on error or after 2 s).
  Response read();
  Response request(std::string_view raw) {
    send(raw);
    return read();
  }
  /// Reads a streamed response's head and body until it holds `n` content events.
  Response read_events(int n);
  /// Reads raw bytes (after what read*() took) until they hold `marker`.
  std::string read_until(std::string marker);
  /// Runs the loop until the server closed the connection (EOF or reset): false after 1 s.
  bool closed();
  void close();

  struct Conn {
    explicit Conn(net::io_context& ioc) : sock(ioc) {}
    tcp::socket sock;
    beast::flat_buffer buf;
  };

 private:
  Harness& h_;
  std::shared_ptr<Conn> c_;
};

class Harness {
 public:
  explicit Harness(Options o = {});
  ~Harness();
  Harness(const Harness&) = delete;
  Harness& operator=(const Harness&) = delete;

  Client connect() { return Client(*this); }
  /// Runs the loop until `done()` (false after `max`).
  template <class Pred>
  bool run_until(Pred done, std::chrono::milliseconds max = 2000ms) {
    auto deadline = std::chrono::steady_clock::now() + max;
    while (!done()) {
      auto now = std::chrono::steady_clock::now();
      if (now >= deadline) return false;
      ioc.run_one_for(deadline - now);
    }
    return true;
  }
  /// Runs `op` on the loop to its end (throws its exception, or after `max`).
  template <class T>
  T run(net::awaitable<T> op, std::chrono::milliseconds max = 2000ms) {
    struct State {
      bool done = false;
      std::exception_ptr ep;
      std::optional<T> value;
    };
    auto st = std::make_shared<State>();
    net::co_spawn(ioc, std::move(op), [st](std::exception_ptr e, T v) {
      st->ep = e;
      if (!e) st->value = std::move(v);
      st->done = true;
    });
    if (!run_until([&] { return st->done; }, max)) throw std::runtime_error("timed out on the event loop");
    if (st->ep) std::rethrow_exception(st->ep);
    return std::move(*st->value);
  }

  /// A request to the test model: POST `path` with `body`, the test key unless `key` is given.
  std::string post(std::string_view body, std::string_view path = "/v1/chat/completions",
                   std::optional<std::string_view> key = std::nullopt, std::string_view extra_headers = "") const;
  static std::string chat_body(bool stream = false, std::string_view model_name = model,
                               std::string_view extra = "");

  /// Runs the loop until `n` settles ran (admission on). record_and_settle records first, so the
  /// usage records of those requests are in too.
  bool settled(std::size_t n = 1) {
    return run_until([&] { return admission.settles.size() >= n; });
  }

  Options opt;
  Config cfg;
  std::filesystem::path dir;
  keys::KeyCache key_cache{1000, std::chrono::milliseconds(60'000), std::chrono::milliseconds(5'000)};
  keys::KeyFilter key_filter;
  std::atomic<pricing::PricingSnapshotPtr> pricing;
  FakeKeySource key_source;
  FakeAccountSource accounts;  ///< wired as App::accounts
  LookupPool lookups{"postgresql://unused@127.0.0.1:1/unused", 1};  // connects lazily: never here
  FakeUsageSink usage;
  std::unique_ptr<sql::IntentJournal> intents;
  net::ssl::context tls{net::ssl::context::tls_client};
  routing::CircuitRegistry circuits;
  std::atomic<routing::RouteTablePtr> routes;
  std::unique_ptr<App> app;
  FakeAdmission admission;
  FakeConnector connector;
  ThreadContext tc{connector, nullptr, 0, {}, {}, std::mt19937_64{1}};
  std::vector<std::string> session_errors;  ///< exceptions that escaped run_session
  std::string key;                          ///< the test key (raw), active, account "acct-1"
  // The loop and what lives on it: destroyed first (declared last). ~Harness drains the loop;
  // everything above outlives it, as coroutine frames on it refer to App and tc.
  net::io_context ioc{1};
  net::executor_work_guard<net::io_context::executor_type> work{ioc.get_executor()};
  FakeUpstream upstream{ioc};
  tcp::acceptor listener{ioc, tcp::endpoint(net::ip::make_address("127.0.0.1"), 0)};

  /// Adds a key (active unless said otherwise) to the key source and the filter; its raw key.
  std::string add_key(bool active = true, std::int64_t max_tokens_per_request = 0);
  /// Adds a usable key of `account` with the given record fields; its raw key. The record
  /// (key_id "key-<8 hex>") is key_source.keys[hash].
  std::string add_key_of(const std::string& account, keys::Limits key_limits = {}, keys::Limits account_limits = {});
};

// --- reading replies and usage records (throw when the shape is wrong) -------------------------

/// The "error" object of OpenAI's envelope {"error":{"message","type","param","code"}}.
boost::json::object error_of(const Client::Response& r);
std::string code_of(const Client::Response& r);
/// "<status> <error code>", e.g. "401 invalid_api_key".
inline std::string answer_of(const Client::Response& r) {
  return std::to_string(r.result_int()) + " " + code_of(r);
}
inline bool says_close(const Client::Response& r) { return r[http::field::connection] == "close"; }
/// response_metadata's hold_micros.
std::int64_t hold_of(const sql::UsageRecord& rec);
/// response_metadata's "attempts" as "upstream:outcome[:status]".
std::vector<std::string> attempts_of(const sql::UsageRecord& rec);
/// GET /v1/models with `key` (none: no Authorization).
std::string get_models(std::optional<std::string_view> key = std::nullopt);

}  // namespace tollgate::test
