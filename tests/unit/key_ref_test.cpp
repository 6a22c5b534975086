// Upstream key refs (routing/secret.hpp): env: and file: are read at load, a missing one makes
// the upstream unusable with a line naming the ref, and the key never appears in a log line,
// a formatted upstream, a metric or an error.
#include "routing/route_table.hpp"
#include "routing/secret.hpp"

#include <catch2/catch.hpp>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <unistd.h>

using namespace tollgate::routing;

namespace {
/// Captures everything spdlog's default logger writes while it lives.
class LogCapture {
 public:
  LogCapture() : previous_(spdlog::default_logger()) {
    auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(out_);
    auto logger = std::make_shared<spdlog::logger>("capture", sink);
    logger->set_level(spdlog::level::trace);
    spdlog::set_default_logger(logger);
  }
  ~LogCapture() { spdlog::set_default_logger(previous_); }
  std::string text() const { return out_.str(); }

 private:
  std::ostringstream out_;
  std::shared_ptr<spdlog::logger> previous_;
};

UpstreamSpec spec(std::string name, std::string url, std::optional<std::string> key_ref) {
  UpstreamSpec u;
  u.name = std::move(name);
  u.base_url = std::move(url);
  u.api_key_ref = std::move(key_ref);
  return u;
}

RouteSpec route_to(std::string up) { return RouteSpec{1, "*", std::move(up), std::nullopt, 0, 1, true}; }
}  // namespace

TEST_CASE("env: and file: refs are read at load (file trimmed)") {
  ::setenv("TOLLGATE_TEST_KEY_A", "sk-env-value", 1);
  auto r = resolve_key_ref("env:TOLLGATE_TEST_KEY_A");
  REQUIRE(r.key);
  CHECK(r.key->reveal() == "sk-env-value");

  char path[] = "/tmp/tollgate-key-XXXXXX";
  int fd = ::mkstemp(path);
  REQUIRE(fd >= 0);
  ::close(fd);
  std::ofstream(path) << "  sk-file-value\n\n";
  auto f = resolve_key_ref(std::string("file:") + path);
  REQUIRE(f.key);
  CHECK(f.key->reveal() == "sk-file-value");
  std::ofstream(path) << "two words\n";
  CHECK_FALSE(resolve_key_ref(std::string("file:") + path).key);  // a space cannot go in a Bearer header
  std::remove(path);
  auto gone = resolve_key_ref(std::string("file:") + path);
  CHECK_FALSE(gone.key);
  CHECK(gone.error == std::string("api_key_ref file:") + path + " cannot be read");
}

TEST_CASE("a missing or empty key makes the upstream unusable, with a log line naming the ref") {
  ::unsetenv("TOLLGATE_TEST_KEY_MISSING");
  ::setenv("TOLLGATE_TEST_KEY_EMPTY", "  ", 1);
  CHECK(resolve_key_ref("env:TOLLGATE_TEST_KEY_MISSING").error == "api_key_ref env:TOLLGATE_TEST_KEY_MISSING is not set");
  CHECK(resolve_key_ref("env:TOLLGATE_TEST_KEY_EMPTY").error == "api_key_ref env:TOLLGATE_TEST_KEY_EMPTY is empty");

  auto u = spec("missing", "https://api.openai.com/v1", "env:TOLLGATE_TEST_KEY_MISSING");
  auto ok = spec("ok", "https://openrouter.ai/api/v1", std::nullopt);
  CircuitRegistry circuits;
  LogCapture log;
  auto t = build_route_table({u, ok}, {route_to("missing"), route_to("ok")}, {}, circuits);
  CHECK(t->upstream("missing") == nullptr);
  REQUIRE(t->routes().size() == 1);
  CHECK(t->routes()[0].upstream->name == "ok");
  REQUIRE(t->unusable().size() == 1);
  CHECK(t->unusable()[0] == "missing: api_key_ref env:TOLLGATE_TEST_KEY_MISSING is not set");
  CHECK(log.text().find("upstream missing is unusable, its routes are left out: api_key_ref "
                        "env:TOLLGATE_TEST_KEY_MISSING is not set") != std::string::npos);
}

TEST_CASE("malformed refs are refused with the ref named") {
  for (const char* bad : {"sk-or-v1-abc", "env:", "env:1ABC", "env:A-B", "file:relative", "file:/a b", "ENV:X"})
    CHECK_THROWS_AS(check_key_ref(bad), std::invalid_argument);
  CHECK_NOTHROW(check_key_ref("env:OPENROUTER_API_KEY"));
  CHECK_NOTHROW(check_key_ref("file:/run/secrets/openai"));
}

TEST_CASE("the key read from env: never appears in a log line, a formatted upstream, a metric or an error") {
  const std::string secret = "sk-or-v1-0123456789abcdef-TOPSECRET";
  ::setenv("TOLLGATE_TEST_KEY_SECRET", secret.c_str(), 1);
  auto u = spec("openrouter", "https://openrouter.ai/api/v1", "env:TOLLGATE_TEST_KEY_SECRET");
  u.extra_headers = {{"X-Title", "tollgate"}};
  UpstreamSpec bad_header = u;  // the same key, on a row that cannot be used
  bad_header.name = "broken";
  bad_header.extra_headers = {{"Authorization", "Bearer x"}};
  CircuitRegistry circuits;
  std::string seen;
  RouteTablePtr t;
  {
    LogCapture log;
    spdlog::set_level(spdlog::level::trace);
    t = build_route_table({u, bad_header}, {route_to("openrouter"), route_to("broken")}, {}, circuits);
    const Upstream* up = t->upstream("openrouter");
    REQUIRE(up);
    REQUIRE(up->api_key);
    // What the request path sends: the key is there (so this test can see it when it leaks).
    CHECK(up->wire_fields().find("Authorization: Bearer " + secret + "\r\n") != std::string::npos);

    spdlog::info("upstream {} key {}", *up, *up->api_key);
    spdlog::error("failed on {}", up->describe());
    seen += log.text();
    seen += fmt::format("{} {} {:>40}", *up, *up->api_key, *up->api_key);
    std::ostringstream os;
    os << *up << ' ' << *up->api_key;
    seen += os.str();
    for (const auto& s : t->unusable()) seen += s;
    render_circuit_metrics(circuits, seen);
    try {
      check_upstream_spec(bad_header);
    } catch (const std::invalid_argument& e) {
      seen += e.what();
    }
  }
  INFO(seen);
  CHECK(seen.find("env:TOLLGATE_TEST_KEY_SECRET") != std::string::npos);  // the ref is named
  CHECK(seen.find("[redacted]") != std::string::npos);
  CHECK(seen.find(secret) == std::string::npos);
  CHECK(seen.find("TOPSECRET") == std::string::npos);
  ::unsetenv("TOLLGATE_TEST_KEY_SECRET");
}
