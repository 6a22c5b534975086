// Route selection (routing/route_table.hpp): priority, fallback order, rename, weights, no
// match, and the configured default while model_routes has no rows.
#include "routing/route_table.hpp"

#include <catch2/catch.hpp>

#include <map>

using namespace tollgate::routing;

namespace {
UpstreamSpec upstream(std::string name, std::string url = "https://example.com/v1") {
  UpstreamSpec u;
  u.name = std::move(name);
  u.base_url = std::move(url);
  return u;
}

RouteSpec route(std::int64_t id, std::string pattern, std::string up, std::int32_t priority = 0, std::int32_t weight = 1,
                std::optional<std::string> rename = std::nullopt) {
  return RouteSpec{id, std::move(pattern), std::move(up), std::move(rename), priority, weight, true};
}

DefaultUpstream config_default() {
  DefaultUpstream d;
  d.base_url = "http://127.0.0.1:8081/api/v1";
  d.api_key = Secret("sk-config");
  return d;
}

std::vector<std::string> names(const Candidates& cs) {
  std::vector<std::string> out;
  for (const auto& c : cs) out.push_back(c.upstream->name);
  return out;
}
}  // namespace

TEST_CASE("the highest-priority matching route comes first, the others follow as fallbacks in priority order") {
  CircuitRegistry circuits;
  auto t = build_route_table({upstream("openai"), upstream("openrouter"), upstream("vllm", "http://10.0.0.5:8000/v1")},
                             {route(1, "*", "openrouter", 0), route(2, "openai/*", "openai", 10, 1, "gpt-4o"),
                              route(3, "meta-llama/*", "vllm", 20)},
                             config_default(), circuits);
  RouteTable::Rng rng(1);
  auto c = t->select("openai/gpt-4o", rng, 8);
  REQUIRE(names(c) == std::vector<std::string>{"openai", "openrouter"});
  CHECK(c[0].upstream_model == "gpt-4o");         // renamed for OpenAI direct
  CHECK(c[1].upstream_model == "openai/gpt-4o");  // as asked
  CHECK(c[0].route_id == 2);
  CHECK(names(t->select("meta-llama/llama-3-70b", rng, 8)) == std::vector<std::string>{"vllm", "openrouter"});
  CHECK(names(t->select("anthropic/claude-3.5-sonnet", rng, 8)) == std::vector<std::string>{"openrouter"});
  // at most max_candidates
  CHECK(names(t->select("openai/gpt-4o", rng, 1)) == std::vector<std::string>{"openai"});
  CHECK(t->select("openai/gpt-4o", rng, 0).empty());
  CHECK_FALSE(t->from_config());
  const Upstream* vllm = t->upstream("vllm");
  REQUIRE(vllm);
  CHECK_FALSE(vllm->url.tls);
  CHECK(vllm->url.host == "10.0.0.5");
  CHECK(vllm->url.port == "8000");
  CHECK(vllm->url.base_path == "/v1");
  CHECK(vllm->wire_fields().find("Authorization") == std::string::npos);  // no key ref: no key sent
  CHECK(vllm->wire_fields().starts_with("Host: 10.0.0.5:8000\r\n"));
}

TEST_CASE("no matching route gives no candidate") {
  CircuitRegistry circuits;
  auto t = build_route_table({upstream("openai")}, {route(1, "openai/*", "openai")}, config_default(), circuits);
  RouteTable::Rng rng(1);
  CHECK(t->select("anthropic/claude-3.5-sonnet", rng, 3).empty());
  CHECK(t->select("", rng, 3).empty());
}

TEST_CASE("inactive routes and upstreams, and routes to them, are left out") {
  CircuitRegistry circuits;
  auto off = upstream("off");
  off.is_active = false;
  auto r2 = route(2, "*", "on", 5);
  r2.is_active = false;
  auto t = build_route_table({upstream("on"), off}, {route(1, "*", "off", 9), r2, route(3, "*", "on", 0)},
                             config_default(), circuits);
  RouteTable::Rng rng(1);
  auto c = t->select("x", rng, 8);
  REQUIRE(c.size() == 1);
  CHECK(c[0].route_id == 3);
  CHECK_FALSE(t->from_config());  // rows exist, all but one inactive: not the configured default
}

TEST_CASE("weights 3:1 among equal priorities give a 75 % split (4,000 selections, seeded)") {
  CircuitRegistry circuits;
  auto t = build_route_table({upstream("a"), upstream("b"), upstream("fallback")},
                             {route(1, "openai/*", "a", 5, 3), route(2, "openai/*", "b", 5, 1), route(3, "*", "fallback", 0)},
                             config_default(), circuits);
  RouteTable::Rng rng(20261128);
  std::map<std::string, int> first, second;
  for (int i = 0; i < 4000; ++i) {
    auto c = t->select("openai/gpt-4o-mini", rng, 8);
    REQUIRE(c.size() == 3);
    ++first[c[0].upstream->name];
    ++second[c[1].upstream->name];
    CHECK(c[0].upstream != c[1].upstream);          // each route once
    CHECK(c[2].upstream->name == "fallback");       // the lower priority after both
  }
  double share = first["a"] / 4000.0;
  CHECK(share > 0.72);
  CHECK(share < 0.78);
  CHECK(first["fallback"] == 0);
  CHECK(second["b"] == first["a"]);  // the other one of the pair is the first fallback
  WARN("weights 3:1: a first in " << first["a"] << " of 4000 selections (" << share * 100 << " %)");
}

TEST_CASE("with no route rows the configured [upstream] is the one route * → default") {
  CircuitRegistry circuits;
  auto t = build_route_table({upstream("unused")}, {}, config_default(), circuits);
  CHECK(t->from_config());
  RouteTable::Rng rng(1);
  auto c = t->select("any/model", rng, 3);
  REQUIRE(c.size() == 1);
  CHECK(c[0].upstream->name == "default");
  CHECK(c[0].upstream_model == "any/model");
  CHECK(c[0].upstream->url.host == "127.0.0.1");
  CHECK(c[0].upstream->url.port == "8081");
  CHECK(c[0].upstream->url.base_path == "/api/v1");
  CHECK(c[0].upstream->wire_fields() ==
        "Host: 127.0.0.1:8081\r\nAuthorization: Bearer sk-config\r\n"
        "Content-Type: application/json\r\nUser-Agent: tollgate/0.1\r\n");
  CHECK(c[0].upstream->connect_timeout == std::chrono::milliseconds(5000));
}

TEST_CASE("extra headers are written after Authorization; the port is left out when it is the default") {
  CircuitRegistry circuits;
  auto u = upstream("openrouter", "https://openrouter.ai/api/v1/");
  u.extra_headers = {{"HTTP-Referer", "https://tollgate.example"}, {"X-Title", "tollgate"}};
  auto t = build_route_table({u}, {route(1, "*", "openrouter")}, config_default(), circuits);
  const Upstream* up = t->upstream("openrouter");
  REQUIRE(up);
  CHECK(up->url.base_path == "/api/v1");
  CHECK(up->wire_fields() ==
        "Host: openrouter.ai\r\nHTTP-Referer: https://tollgate.example\r\nX-Title: tollgate\r\n"
        "Content-Type: application/json\r\nUser-Agent: tollgate/0.1\r\n");
}

TEST_CASE("circuit breakers survive a reload: the same upstream gets the same breaker") {
  CircuitRegistry circuits;
  auto t1 = build_route_table({upstream("a")}, {route(1, "*", "a")}, config_default(), circuits);
  auto t2 = build_route_table({upstream("a")}, {route(1, "*", "a"), route(2, "x", "a")}, config_default(), circuits);
  CHECK(t1->upstream("a")->circuit == t2->upstream("a")->circuit);
  CHECK(circuits.all().size() == 1);
}

TEST_CASE("a route with a bad weight, and an invalid upstream row, are left out, never thrown") {
  CircuitRegistry circuits;
  auto bad = upstream("bad", "ftp://example.com");
  auto t = build_route_table({upstream("a"), bad}, {route(1, "*", "a", 0, 0), route(2, "*", "bad"), route(3, "m", "a")},
                             config_default(), circuits);
  REQUIRE(t->routes().size() == 1);
  CHECK(t->routes()[0].id == 3);
  REQUIRE(t->unusable().size() == 1);
  CHECK(t->unusable()[0].starts_with("bad: "));
}

TEST_CASE("an upstream's auth style: x-api-key for Anthropic, Authorization: Bearer otherwise") {
  ::setenv("TOLLGATE_TEST_ANTHROPIC_KEY", "sk-ant-test", 1);
  CircuitRegistry circuits;
  auto anthropic = upstream("anthropic", "https://api.anthropic.com/v1");
  anthropic.api_key_ref = "env:TOLLGATE_TEST_ANTHROPIC_KEY";
  anthropic.auth_style = AuthStyle::x_api_key;
  auto bearer = anthropic;
  bearer.name = "bearer";
  bearer.auth_style = AuthStyle::bearer;
  auto t = build_route_table({anthropic, bearer}, {route(1, "anthropic/*", "anthropic"), route(2, "*", "bearer")},
                             config_default(), circuits);
  const Upstream* a = t->upstream("anthropic");
  REQUIRE(a);
  CHECK(a->wire_fields() ==
        "Host: api.anthropic.com\r\nx-api-key: sk-ant-test\r\nContent-Type: application/json\r\nUser-Agent: tollgate/0.1\r\n");
  const Upstream* b = t->upstream("bearer");
  REQUIRE(b);
  CHECK(b->wire_fields().find("Authorization: Bearer sk-ant-test\r\n") != std::string::npos);
  CHECK(b->wire_fields().find("x-api-key") == std::string::npos);
  CHECK(parse_auth_style("x-api-key") == AuthStyle::x_api_key);
  CHECK(parse_auth_style("bearer") == AuthStyle::bearer);
  CHECK_FALSE(parse_auth_style("Bearer"));
  CHECK(to_string(AuthStyle::x_api_key) == "x-api-key");
  // x-api-key is tollgate's to write: not an extra header.
  CHECK_THROWS_AS(check_extra_header({"X-Api-Key", "k"}), std::invalid_argument);
}
