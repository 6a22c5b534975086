// Which outcomes send a request on to the next route, and which count against a circuit
// (routing/policy.hpp), and [routing] in the configuration.
#include "routing/policy.hpp"

#include "proxy/config.hpp"

#include <catch2/catch.hpp>
#include <unistd.h>

#include <cstdio>
#include <fstream>

using namespace tollgate::routing;
using namespace std::chrono_literals;
using K = AttemptOutcome::Kind;

namespace {
AttemptOutcome status(int s, bool sent = false) { return {K::response, s, sent}; }
AttemptOutcome kind(K k, bool sent = false) { return {k, 0, sent}; }
}  // namespace

TEST_CASE("default policy: connect failure, timeout, 429 and 5xx go on to the next route") {
  RoutingConfig cfg;
  CHECK(cfg.max_attempts == 3);
  CHECK(cfg.retry_statuses == std::vector<int>{429, 500, 502, 503, 504});
  CHECK(may_try_next(cfg, kind(K::connect_failed), 1, 1s));
  CHECK(may_try_next(cfg, kind(K::timed_out), 1, 1s));
  CHECK(may_try_next(cfg, kind(K::failed_before_head), 1, 1s));
  for (int s : {429, 500, 502, 503, 504}) CHECK(may_try_next(cfg, status(s), 1, 1s));
  for (int s : {200, 400, 401, 402, 404, 413, 422, 501}) CHECK_FALSE(may_try_next(cfg, status(s), 1, 1s));
  CHECK_FALSE(may_try_next(cfg, kind(K::cut_mid_body), 1, 1s));
}

TEST_CASE("never after a byte went to the client, nor past max_attempts, nor past the deadline") {
  RoutingConfig cfg;
  CHECK_FALSE(may_try_next(cfg, status(503, true), 1, 1s));
  CHECK_FALSE(may_try_next(cfg, kind(K::connect_failed, true), 1, 1s));
  CHECK(may_try_next(cfg, status(503), 2, 1s));
  CHECK_FALSE(may_try_next(cfg, status(503), 3, 1s));  // the third attempt was the last
  CHECK_FALSE(may_try_next(cfg, status(503), 1, 0ms));
  // A circuit refusal is no attempt: it does not use up max_attempts.
  CHECK(may_try_next(cfg, kind(K::circuit_open), 3, 1s));
  CHECK_FALSE(may_try_next(cfg, kind(K::circuit_open), 3, 0ms));
}

TEST_CASE("the retry statuses and attempts are configurable") {
  RoutingConfig cfg;
  cfg.retry_statuses = {503};
  cfg.max_attempts = 1;
  CHECK_FALSE(may_try_next(cfg, status(503), 1, 1s));
  cfg.max_attempts = 2;
  CHECK(may_try_next(cfg, status(503), 1, 1s));
  CHECK_FALSE(may_try_next(cfg, status(429), 1, 1s));
  CHECK_FALSE(may_try_next(cfg, status(502), 1, 1s));
  cfg.retry_statuses = {};
  CHECK_FALSE(may_try_next(cfg, status(503), 1, 1s));
  CHECK(may_try_next(cfg, kind(K::connect_failed), 1, 1s));  // transport failures always go on
}

TEST_CASE("bad [routing] settings are refused") {
  RoutingConfig cfg;
  CHECK_NOTHROW(check_routing_config(cfg));
  cfg.retry_statuses = {200};
  CHECK_THROWS_AS(check_routing_config(cfg), std::invalid_argument);
  cfg = {};
  cfg.max_attempts = 0;
  CHECK_THROWS_AS(check_routing_config(cfg), std::invalid_argument);
  cfg = {};
  cfg.circuit.failure_threshold = 0;
  CHECK_THROWS_AS(check_routing_config(cfg), std::invalid_argument);
}

TEST_CASE("what counts against the circuit: transport failures and 5xx, not 429 or 4xx") {
  CHECK(counts_against_circuit(kind(K::connect_failed)));
  CHECK(counts_against_circuit(kind(K::timed_out)));
  CHECK(counts_against_circuit(kind(K::failed_before_head)));
  CHECK(counts_against_circuit(kind(K::cut_mid_body)));
  CHECK(counts_against_circuit(status(500)));
  CHECK(counts_against_circuit(status(503)));
  CHECK_FALSE(counts_against_circuit(status(429)));
  CHECK_FALSE(counts_against_circuit(status(400)));
  CHECK_FALSE(counts_against_circuit(status(200)));
  CHECK_FALSE(counts_against_circuit(kind(K::circuit_open)));
}

namespace {
/// Config::load of a file holding `toml`.
tollgate::Config load_toml(const std::string& toml) {
  std::string path = "/tmp/tollgate-routing-config-" + std::to_string(::getpid()) + ".toml";
  std::ofstream(path) << toml;
  struct Remove {
    std::string p;
    ~Remove() { std::remove(p.c_str()); }
  } remove{path};
  return tollgate::Config::load(path);
}
}  // namespace

TEST_CASE("[routing] in the configuration file") {
  auto c = load_toml("[routing]\nretry_statuses = [503, 429]\nmax_attempts = 2\n"
                     "circuit_failure_threshold = 3\ncircuit_cooldown_ms = 1000\n");
  CHECK(c.routing.retry_statuses == std::vector<int>{503, 429});
  CHECK(c.routing.max_attempts == 2);
  CHECK(c.routing.circuit.failure_threshold == 3);
  CHECK(c.routing.circuit.cooldown == 1s);
  auto d = load_toml("[server]\nthreads = 1\n");  // no [routing]: the defaults
  CHECK(d.routing.retry_statuses == RoutingConfig{}.retry_statuses);
  CHECK(d.routing.max_attempts == 3);
  CHECK(d.default_upstream().base_url == d.upstream_url_text);
  CHECK_THROWS_AS(load_toml("[routing]\nretry_statuses = [200]\n"), std::invalid_argument);
  CHECK_THROWS_AS(load_toml("[routing]\nretry_statuses = 503\n"), std::invalid_argument);
  CHECK_THROWS_AS(load_toml("[routing]\nretry_statuses = [\"503\"]\n"), std::invalid_argument);
  CHECK_THROWS_AS(load_toml("[routing]\nmax_attempts = 0\n"), std::invalid_argument);
}
