#include "request_path_fakes.hpp"

#include "keys/api_key.hpp"

#include <boost/asio/detached.hpp>
#include <boost/asio/write.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <random>

namespace tollgate::test {

net::awaitable<std::optional<keys::KeyRecord>> FakeKeySource::find_key(std::string key_hash) {
  ++lookups;
  if (fail) throw std::runtime_error("key source down");
  auto it = keys.find(key_hash);
  if (it == keys.end()) co_return std::nullopt;
  co_return it->second;
}

net::awaitable<std::optional<pricing::Micros>> FakeKeySource::balance(std::string account) {
  if (fail) throw std::runtime_error("key source down");
  auto it = balances.find(account);
  if (it == balances.end()) co_return std::nullopt;
  co_return it->second;
}

net::awaitable<std::optional<sql::KeyUsage>> FakeAccountSource::key_usage(std::string key_id, std::string account) {
  asked.push_back("key_usage " + account + " " + key_id);
  if (fail) throw std::runtime_error("account source down");
  auto it = keys.find(key_id);
  if (it == keys.end()) co_return std::nullopt;
  co_return it->second;
}

net::awaitable<sql::AccountCredits> FakeAccountSource::credits(std::string account) {
  asked.push_back("credits " + account);
  if (fail) throw std::runtime_error("account source down");
  auto it = credits_of.find(account);
  co_return it == credits_of.end() ? sql::AccountCredits{} : it->second;
}

net::awaitable<std::optional<sql::Generation>> FakeAccountSource::generation(std::string account, std::string id) {
  asked.push_back("generation " + account + " " + id);
  if (fail) throw std::runtime_error("account source down");
  for (const auto& [owner, g] : generations)
    if (owner == account && (g.request_id == id || g.id == id)) co_return g;
  co_return std::nullopt;
}

net::awaitable<ratelimit::Admission> FakeAdmission::admit(const keys::KeyRecord&, const std::string& request_id,
                                                          pricing::Micros, std::int64_t tokens) {
  ratelimit::Admission a;
  a.verdict = ratelimit::Verdict::admitted;
  if (!script.empty()) {
    a = std::move(script.front());
    script.pop_front();
  }
  a.token_estimate = tokens;
  if (a.verdict == ratelimit::Verdict::admitted) admitted.push_back(request_id);
  co_return a;
}

ratelimit::Admission FakeAdmission::rate_limited(std::int64_t retry_after_ms) {
  ratelimit::Admission a;
  a.verdict = ratelimit::Verdict::rate_limited;
  ratelimit::Window w;
  w.key = "tg:{acct-1}:rpm";
  w.name = "key_requests_per_minute";
  w.limit = 60;
  w.window_ms = 60'000;
  w.cost = 1;
  w.remaining = 0;
  w.reset_ms = retry_after_ms;
  a.windows.push_back(w);
  a.limited = 0;
  a.retry_after_ms = retry_after_ms;
  return a;
}

ratelimit::Admission FakeAdmission::insufficient(pricing::Micros available) {
  ratelimit::Admission a;
  a.verdict = ratelimit::Verdict::insufficient_balance;
  a.available = available;
  return a;
}

// --- the fake upstream -------------------------------------------------------------------------

FakeUpstream::FakeUpstream(net::io_context& ioc)
    : acceptor_(ioc, tcp::endpoint(net::ip::make_address("127.0.0.1"), 0)) {
  net::co_spawn(ioc, accept_loop(), net::detached);
}

int FakeUpstream::requests(const std::string& upstream) const {
  int n = 0;
  for (const auto& r : received) n += r.upstream == upstream;
  return n;
}

void FakeUpstream::stop() {
  beast::error_code ec;
  acceptor_.close(ec);
}

net::awaitable<void> FakeUpstream::accept_loop() {
  for (;;) {
    auto [ec, s] = co_await acceptor_.async_accept(tuple_awaitable);
    if (ec) co_return;
    net::co_spawn(acceptor_.get_executor(), serve(std::move(s)), net::detached);
  }
}

namespace {
std::string chunk(std::string_view data) { return fmt::format("{:x}\r\n{}\r\n", data.size(), data); }

std::string complete(int status, std::string_view reason, std::string_view body) {
  return fmt::format("HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n"
                     "Connection: close\r\n\r\n{}",
                     status, reason, body.size(), body);
}

/// Reads until the peer closes (or the socket errors).
net::awaitable<void> wait_for_close(tcp::socket& s) {
  char sink[256];
  for (;;) {
    auto [ec, n] = co_await s.async_read_some(net::buffer(sink), tuple_awaitable);
    if (ec) co_return;
  }
}

net::awaitable<bool> write(tcp::socket& s, std::string bytes) {
  auto [ec, n] = co_await net::async_write(s, net::buffer(bytes), tuple_awaitable);
  co_return !ec;
}
}  // namespace

net::awaitable<void> FakeUpstream::serve(tcp::socket s) {
  beast::flat_buffer buf;
  http::request<http::string_body> req;
  auto [ec, n] = co_await http::async_read(s, buf, req, tuple_awaitable);
  if (ec) co_return;
  std::string target(req.target());
  std::string name = target.substr(1, target.find('/', 1) - 1);
  received.push_back({name, target, req.body(), std::string(req["anthropic-version"]), std::string(req["x-api-key"]),
                      std::string(req[http::field::authorization])});
  Script sc;
  if (auto& q = scripts_[name]; !q.empty()) {
    sc = q.front();
    q.pop_front();
  }
  switch (sc.reply) {
    case Reply::json200:
      co_await write(s, complete(200, "OK",
                                 R"({"id":"gen-1","object":"chat.completion","choices":[{"index":0,"message":)"
                                 R"({"role":"assistant","content":"hello"},"finish_reason":"stop"}],)"
                                 R"("usage":{"prompt_tokens":10,"completion_tokens":5,"total_tokens":15}})"));
      co_return;
    case Reply::status503:
      co_await write(s, complete(503, "Service Unavailable", R"({"error":{"message":"overloaded","code":503}})"));
      co_return;
    case Reply::status429:
      co_await write(s, complete(429, "Too Many Requests", R"({"error":{"message":"slow down","code":429}})"));
      co_return;
    case Reply::close:
      co_return;
    case Reply::stall:
      co_await wait_for_close(s);
      co_return;
    default:
      break;
  }
  // Server-sent events, one HTTP chunk per event, each its own write.
  if (!co_await write(s, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n"
                         "Connection: close\r\n\r\n"))
    co_return;
  for (int i = 0; i < sc.events; ++i) {
    auto ev = fmt::format(R"(data: {{"id":"gen-1","choices":[{{"index":0,"delta":{{"content":"t{}"}}}}]}})"
                          "\n\n",
                          i);
    if (!co_await write(s, chunk(ev))) co_return;
  }
  if (sc.reply == Reply::sse_stall) co_await wait_for_close(s);
  if (sc.reply != Reply::sse) co_return;  // sse_cut: closed mid-stream
  auto usage = fmt::format(R"(data: {{"id":"gen-1","choices":[],"usage":{{"prompt_tokens":10,"completion_tokens":{}}}}})"
                           "\n\n",
                           sc.events);
  co_await write(s, chunk(usage) + chunk("data: [DONE]\n\n") + "0\r\n\r\n");
}

net::awaitable<std::unique_ptr<UpstreamConnection>> FakeConnector::acquire(const routing::Upstream& u) {
  ++acquires[u.name];
  if (refuse.count(u.name)) throw boost::system::system_error(net::error::connection_refused);
  beast::tcp_stream s(co_await net::this_coro::executor);
  tcp::endpoint ep(net::ip::make_address(u.url.host), static_cast<std::uint16_t>(std::stoi(u.url.port)));
  co_await s.async_connect(ep, net::use_awaitable);
  co_return std::make_unique<UpstreamConnection>(std::move(s));
}

// --- the client --------------------------------------------------------------------------------

namespace {
using Response = Client::Response;

net::awaitable<Response> read_response(std::shared_ptr<Client::Conn> c) {
  http::response_parser<http::string_body> p;
  p.body_limit(1 << 20);
  auto [ec, n] = co_await http::async_read(c->sock, c->buf, p, tuple_awaitable);
  if (ec) throw boost::system::system_error(ec, "client read");
  co_return p.release();
}

std::size_t count(std::string_view s, std::string_view what) {
  std::size_t n = 0;
  for (auto p = s.find(what); p != std::string_view::npos; p = s.find(what, p + 1)) ++n;
  return n;
}

net::awaitable<Response> read_until_events(std::shared_ptr<Client::Conn> c, int events) {
  http::response_parser<http::string_body> p;
  auto [ec, n] = co_await http::async_read_header(c->sock, c->buf, p, tuple_awaitable);
  if (ec) throw boost::system::system_error(ec, "client read");
  while (count(p.get().body(), R"("content":")") < static_cast<std::size_t>(events)) {
    auto [rec, rn] = co_await http::async_read_some(c->sock, c->buf, p, tuple_awaitable);
    if (rec) throw boost::system::system_error(rec, "client read");
  }
  co_return p.release();
}

net::awaitable<std::string> read_raw(std::shared_ptr<Client::Conn> c, std::string marker) {
  std::string out(static_cast<const char*>(c->buf.data().data()), c->buf.size());
  c->buf.consume(c->buf.size());
  char b[512];
  while (out.find(marker) == std::string::npos) {
    auto [ec, n] = co_await c->sock.async_read_some(net::buffer(b), tuple_awaitable);
    if (ec) throw boost::system::system_error(ec, "client read");
    out.append(b, n);
  }
  co_return out;
}

net::awaitable<bool> read_to_close(std::shared_ptr<Client::Conn> c) {
  char b[512];
  for (;;) {
    auto [ec, n] = co_await c->sock.async_read_some(net::buffer(b), tuple_awaitable);
    if (ec) co_return ec == net::error::eof || ec == net::error::connection_reset;
  }
}
}  // namespace

Client::Client(Harness& h) : h_(h), c_(std::make_shared<Conn>(h.ioc)) {
  c_->sock.connect(h.listener.local_endpoint());
  tcp::socket server = h.listener.accept();  // already in the backlog
  server.set_option(tcp::no_delay(true));
  ConnectionLimiter::Refusal refusal;
  auto slot = h.app->connections.acquire(server.remote_endpoint().address(), refusal);
  if (refusal != ConnectionLimiter::Refusal::none) throw std::runtime_error("connection refused by the limiter");
  net::co_spawn(h.ioc, run_session(beast::tcp_stream(std::move(server)), *h.app, h.tc, std::move(slot)),
                [&h](std::exception_ptr e) {
                  if (!e) return;
                  try {
                    std::rethrow_exception(e);
                  } catch (const std::exception& x) {
                    h.session_errors.push_back(x.what());
                  }
                });
}

void Client::send(std::string_view raw) { net::write(c_->sock, net::buffer(raw)); }
Client::Response Client::read() { return h_.run(read_response(c_)); }
Client::Response Client::read_events(int n) { return h_.run(read_until_events(c_, n)); }
std::string Client::read_until(std::string marker) { return h_.run(read_raw(c_, std::move(marker))); }
bool Client::closed() {
  try {
    return h_.run(read_to_close(c_), 1000ms);
  } catch (const std::exception&) {
    return false;
  }
}
void Client::close() {
  beast::error_code ec;
  c_->sock.close(ec);
}

// --- the harness -------------------------------------------------------------------------------

namespace {
Config make_config(const Options& o) {
  Config c;
  c.max_requests_per_connection = o.max_requests_per_connection;
  c.admission.enabled = o.admission;
  c.routing.circuit.failure_threshold = o.circuit_threshold;
  c.routing.circuit.cooldown = std::chrono::milliseconds(60'000);
  return c;
}
}  // namespace

Harness::Harness(Options o) : opt(std::move(o)), cfg(make_config(opt)), circuits(cfg.routing.circuit) {
  spdlog::set_level(spdlog::level::off);  // the paths under test log warnings by design
  dir = std::filesystem::temp_directory_path() / fmt::format("tollgate-rp-{:x}", std::random_device{}());
  std::filesystem::create_directories(dir);
  intents = std::make_unique<sql::IntentJournal>(dir);
  key_filter.load(16, [](const keys::KeyFilter::AddFn&) {});
  key = add_key();
  key_source.balances["acct-1"] = 1'000'000'000;
  pricing.store(std::make_shared<const pricing::PricingSnapshot>(
      std::unordered_map<std::string, pricing::ModelPrice>{{std::string(model), {1'000'000, 2'000'000, 0}},
                                                           {"test/unrouted", {1'000'000, 2'000'000, 0}}},
      std::vector<pricing::PricingRule>{}));
  std::vector<routing::UpstreamSpec> ups;
  for (std::string name : {"a", "b", "c"}) {
    routing::UpstreamSpec u;
    u.name = name;
    u.base_url = fmt::format("http://127.0.0.1:{}/{}", upstream.port(), name);
    u.response_timeout = opt.upstream_response_timeout;
    u.idle_timeout = std::chrono::milliseconds(2'000);
    ups.push_back(std::move(u));
  }
  std::vector<routing::RouteSpec> rs;
  for (std::size_t i = 0; i < opt.route.size(); ++i)
    rs.push_back({static_cast<std::int64_t>(i + 1), std::string(model), opt.route[i], std::nullopt,
                  static_cast<std::int32_t>(100 - 10 * i), 1, true});
  routing::DefaultUpstream def;
  def.base_url = "http://127.0.0.1:1/default";
  routes.store(routing::build_route_table(ups, rs, def, circuits));
  app.reset(new App{cfg, key_cache, key_filter, pricing, key_source, lookups, usage, *intents, tls, routes, circuits,
                    {}});  // aggregate, not movable: as main.cpp builds it
  app->accounts = &accounts;
  if (opt.admission) tc.admission = &admission;
}

Harness::~Harness() {
  // Let every session and upstream exchange end (their sockets are closed), so that no
  // coroutine frame outlives what it refers to.
  work.reset();
  beast::error_code ec;
  listener.close(ec);
  upstream.stop();
  ioc.run_for(2s);
  ioc.stop();
  std::filesystem::remove_all(dir, ec);
}

std::string Harness::add_key(bool active, std::int64_t max_tokens_per_request) {
  auto k = keys::generate_key();
  keys::KeyRecord r;
  r.key_id = "key-" + k.hash_hex.substr(0, 8);
  r.user_id = "acct-1";
  r.key_prefix = k.display_prefix;
  r.is_active = active;
  r.key_limits.max_tokens_per_request = max_tokens_per_request;
  key_source.keys[k.hash_hex] = r;
  key_filter.add(k.hash_hex);
  return k.raw;
}

std::string Harness::add_key_of(const std::string& account, keys::Limits key_limits, keys::Limits account_limits) {
  auto k = keys::generate_key();
  keys::KeyRecord r;
  r.key_id = "key-" + k.hash_hex.substr(0, 8);
  r.user_id = account;
  r.key_prefix = k.display_prefix;
  r.is_active = true;
  r.key_limits = key_limits;
  r.account_limits = account_limits;
  key_source.keys[k.hash_hex] = r;
  key_filter.add(k.hash_hex);
  return k.raw;
}

std::string Harness::post(std::string_view body, std::string_view path, std::optional<std::string_view> k,
                          std::string_view extra_headers) const {
  return fmt::format("POST {} HTTP/1.1\r\nHost: tollgate\r\nAuthorization: Bearer {}\r\n"
                     "Content-Type: application/json\r\nContent-Length: {}\r\n{}\r\n{}",
                     path, k.value_or(key), body.size(), extra_headers, body);
}

std::string Harness::chat_body(bool stream, std::string_view model_name, std::string_view extra) {
  return fmt::format(R"({{"model":"{}","messages":[{{"role":"user","content":"hi"}}],"stream":{}{}}})", model_name,
                     stream ? "true" : "false", extra);
}

// --- reading replies and usage records ---------------------------------------------------------

boost::json::object error_of(const Client::Response& r) {
  auto v = boost::json::parse(r.body());
  auto e = v.as_object().at("error").as_object();
  e.at("message").as_string();
  e.at("type").as_string();
  e.at("param");
  return e;
}

std::string code_of(const Client::Response& r) { return std::string(error_of(r).at("code").as_string()); }

std::int64_t hold_of(const sql::UsageRecord& rec) {
  return boost::json::parse(rec.response_metadata_json).at("hold_micros").as_int64();
}

std::vector<std::string> attempts_of(const sql::UsageRecord& rec) {
  std::vector<std::string> out;
  const auto meta = boost::json::parse(rec.response_metadata_json);
  for (const auto& a : meta.at("attempts").as_array()) {
    auto status = a.as_object().contains("status") ? fmt::format(":{}", a.at("status").as_int64()) : "";
    out.push_back(fmt::format("{}:{}{}", std::string_view(a.at("upstream").as_string()),
                              std::string_view(a.at("outcome").as_string()), status));
  }
  return out;
}

std::string get_models(std::optional<std::string_view> key) {
  std::string auth = key ? fmt::format("Authorization: Bearer {}\r\n", *key) : "";
  return fmt::format("GET /v1/models HTTP/1.1\r\nHost: t\r\n{}\r\n", auth);
}

}  // namespace tollgate::test
