// OpenRouter's self-service endpoints on the request path (issue 14 part 5): routing, the
// caller's own key, the bodies' fields and types from a fake AccountSource, 400/401/404/405/503
// in OpenAI's envelope. The SQL behind them: tests/integration/self_service_sql_test.cpp.
#include "request_path_fakes.hpp"

#include "keys/api_key.hpp"
#include "proxy/self_service.hpp"

#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <set>

using namespace tollgate;
using namespace tollgate::test;
using Response = Client::Response;
namespace json = boost::json;

namespace {

std::string key_id_of(std::string_view raw) { return "key-" + keys::hash_key(raw).substr(0, 8); }

std::string get(std::string_view target, std::optional<std::string_view> key,
                std::string_view header = "Authorization: Bearer ") {
  std::string auth = key ? fmt::format("{}{}\r\n", header, *key) : "";
  return fmt::format("GET {} HTTP/1.1\r\nHost: t\r\n{}\r\n", target, auth);
}

json::object data_of(const Response& r) {
  REQUIRE(r.result_int() == 200);
  REQUIRE(r[http::field::content_type] == "application/json");
  return json::parse(r.body()).as_object().at("data").as_object();
}

std::set<std::string> names_of(const json::object& o) {
  std::set<std::string> out;
  for (const auto& kv : o) out.insert(std::string(kv.key()));
  return out;
}

sql::Generation generation_row(std::string request_id, std::string gen_id) {
  sql::Generation g;
  g.request_id = std::move(request_id);
  g.id = std::move(gen_id);
  g.model = "test/model";
  g.upstream = "a";
  g.tokens_prompt = 10;
  g.tokens_completion = 5;
  g.native_tokens_cached = 4;
  g.native_tokens_reasoning = 2;
  g.total_cost = 20'000;  // $0.02
  g.streamed = true;
  g.cancelled = false;
  g.status = "success";
  g.finish_reason = "stop";
  g.duration_ms = 1234;
  g.created_at = "2026-11-29T01:02:03.456789Z";
  return g;
}

}  // namespace

TEST_CASE("usd_number: exact credit units as a JSON number in USD", "[self_service]") {
  CHECK(usd_number(0) == "0");
  CHECK(usd_number(1) == "0.000001");
  CHECK(usd_number(1'500'000) == "1.5");
  CHECK(usd_number(123'456'789) == "123.456789");
  CHECK(usd_number(-20'000) == "-0.02");
  CHECK(usd_number(7'000'000) == "7");
  CHECK(usd_number(10'000'000) == "10");  // integer zeros stay
  CHECK(usd_number(100'000'000'000) == "100000");
}

TEST_CASE("rate_limit: the stricter of key and account, shortest interval that has one", "[self_service]") {
  keys::KeyRecord k;
  auto rl = [&] { return json::parse(rate_limit_json(k)).as_object(); };
  k.account_limits = {600, 20'000, 200'000, 0, 0};
  CHECK(rl().at("requests").as_int64() == 600);
  CHECK(rl().at("interval").as_string() == "1m");
  CHECK(std::string(rl().at("note").as_string()).find("20000 requests per hour") != std::string::npos);
  k.key_limits.requests_per_minute = 100;  // the key's own override is stricter
  CHECK(rl().at("requests").as_int64() == 100);
  k.key_limits.requests_per_minute = 1000;  // the account's still binds
  CHECK(rl().at("requests").as_int64() == 600);
  k.key_limits = {};
  k.account_limits = {0, 0, 5000, 0, 0};
  CHECK(rl().at("requests").as_int64() == 5000);
  CHECK(rl().at("interval").as_string() == "1d");
  k.account_limits = {};
  CHECK(rl().at("requests").as_int64() == -1);
  CHECK(names_of(rl()) == std::set<std::string>{"requests", "interval", "note"});
}

TEST_CASE("GET /api/v1/key: OpenRouter's fields from the key's report, on every path", "[self_service]") {
  Harness h;
  const std::string id = key_id_of(h.key);
  sql::KeyUsage u;
  u.label = "ci key";
  u.limit = 5'000'000;            // $5
  u.limit_reset = "monthly";
  u.expires_at = "2027-01-01T00:00:00.000000Z";
  u.usage = 9'876'543;
  u.usage_daily = 250'000;
  u.usage_weekly = 1'000'001;
  u.usage_monthly = 1'250'000;
  u.usage_in_period = 1'250'000;  // the monthly period
  h.accounts.keys[id] = u;
  auto c = h.connect();
  for (std::string path : {"/api/v1/key", "/v1/key", "/api/v1/auth/key", "/api/v1/key/"}) {
    CAPTURE(path);
    auto d = data_of(c.request(get(path, h.key)));
    CHECK(names_of(d) == std::set<std::string>{"label", "limit", "limit_remaining", "limit_reset", "usage",
                                               "usage_daily", "usage_weekly", "usage_monthly", "is_free_tier",
                                               "expires_at", "rate_limit"});
    CHECK(d.at("label").as_string() == "ci key");
    CHECK(d.at("limit").as_int64() == 5);
    CHECK(d.at("limit_remaining").as_double() == 3.75);
    CHECK(d.at("limit_reset").as_string() == "monthly");
    CHECK(d.at("usage").as_double() == 9.876543);
    CHECK(d.at("usage_daily").as_double() == 0.25);
    CHECK(d.at("usage_weekly").as_double() == 1.000001);
    CHECK(d.at("usage_monthly").as_double() == 1.25);
    CHECK(d.at("is_free_tier").as_bool() == false);
    CHECK(d.at("expires_at").as_string() == "2027-01-01T00:00:00.000000Z");
    CHECK(d.at("rate_limit").as_object().at("requests").as_int64() == -1);  // the harness key has none
  }
  CHECK(h.accounts.asked.back() == "key_usage acct-1 " + id);
  // The amounts are written exactly, not through a double's shortest form.
  auto raw = c.request(get("/api/v1/key", h.key)).body();
  CHECK(raw.find(R"("usage":9.876543,)") != std::string::npos);
  CHECK(raw.find(R"("limit_remaining":3.75,)") != std::string::npos);

  SECTION("Anthropic-style x-api-key authenticates too") {
    CHECK(data_of(c.request(get("/api/v1/key", h.key, "x-api-key: "))).at("label").as_string() == "ci key");
  }
  SECTION("over the limit: 0 remaining, never negative; no limit: nulls") {
    h.accounts.keys[id].usage_in_period = 6'000'000;
    CHECK(data_of(c.request(get("/api/v1/key", h.key))).at("limit_remaining").as_int64() == 0);
    h.accounts.keys[id].limit.reset();
    h.accounts.keys[id].limit_reset = "never";
    h.accounts.keys[id].expires_at.reset();
    auto d = data_of(c.request(get("/api/v1/key", h.key)));
    CHECK(d.at("limit").is_null());
    CHECK(d.at("limit_remaining").is_null());
    CHECK(d.at("limit_reset").is_null());
    CHECK(d.at("expires_at").is_null());
  }
  SECTION("a key whose row is gone is 401") {
    h.accounts.keys.clear();
    CHECK(answer_of(c.request(get("/api/v1/key", h.key))) == "401 invalid_api_key");
  }
  SECTION("the key's limits give rate_limit") {
    auto k = h.add_key_of("acct-1", {0, 0, 0, 0, 0}, {600, 0, 0, 0, 0});
    h.accounts.keys[key_id_of(k)] = u;
    auto rl = data_of(c.request(get("/api/v1/key", k))).at("rate_limit").as_object();
    CHECK(rl.at("requests").as_int64() == 600);
    CHECK(rl.at("interval").as_string() == "1m");
  }
}

TEST_CASE("GET /api/v1/credits: the account's totals", "[self_service]") {
  Harness h;
  h.accounts.credits_of["acct-1"] = {25'000'000, 1'234'567};
  auto c = h.connect();
  for (std::string path : {"/api/v1/credits", "/v1/credits"}) {
    auto d = data_of(c.request(get(path, h.key)));
    CHECK(names_of(d) == std::set<std::string>{"total_credits", "total_usage"});
    CHECK(d.at("total_credits").as_int64() == 25);
    CHECK(d.at("total_usage").as_double() == 1.234567);
  }
  auto other = h.add_key_of("acct-2");
  auto d = data_of(c.request(get("/api/v1/credits", other)));  // acct-2 has nothing
  CHECK(d.at("total_credits").as_int64() == 0);
  CHECK(h.accounts.asked.back() == "credits acct-2");
}

TEST_CASE("GET /api/v1/generation: by request id or generation id, of the caller's account only",
          "[self_service]") {
  Harness h;
  h.accounts.generations.emplace_back("acct-1", generation_row("req_abc", "gen-123"));
  auto c = h.connect();
  for (std::string target : {"/api/v1/generation?id=req_abc", "/api/v1/generation?id=gen-123",
                             "/v1/generation?id=gen%2D123", "/api/v1/generation?x=1&id=req_abc"}) {
    CAPTURE(target);
    auto d = data_of(c.request(get(target, h.key)));
    CHECK(names_of(d) ==
          std::set<std::string>{"id", "request_id", "model", "upstream", "provider_name", "created_at", "total_cost",
                                "usage", "tokens_prompt", "tokens_completion", "native_tokens_prompt",
                                "native_tokens_completion", "native_tokens_cached", "native_tokens_reasoning",
                                "streamed", "cancelled", "finish_reason", "latency", "generation_time"});
    CHECK(d.at("id").as_string() == "gen-123");
    CHECK(d.at("request_id").as_string() == "req_abc");
    CHECK(d.at("model").as_string() == "test/model");
    CHECK(d.at("upstream").as_string() == "a");
    CHECK(d.at("total_cost").as_double() == 0.02);
    CHECK(d.at("tokens_prompt").as_int64() == 10);
    CHECK(d.at("tokens_completion").as_int64() == 5);
    CHECK(d.at("native_tokens_cached").as_int64() == 4);
    CHECK(d.at("native_tokens_reasoning").as_int64() == 2);
    CHECK(d.at("streamed").as_bool());
    CHECK_FALSE(d.at("cancelled").as_bool());
    CHECK(d.at("finish_reason").as_string() == "stop");
    CHECK(d.at("latency").as_int64() == 1234);
    CHECK(d.at("created_at").as_string() == "2026-11-29T01:02:03.456789Z");
  }
  CHECK(h.accounts.asked.back() == "generation acct-1 req_abc");

  SECTION("another account's id, or one not committed yet, is 404 in OpenAI's envelope") {
    auto other = h.add_key_of("acct-2");
    auto r = c.request(get("/api/v1/generation?id=gen-123", other));
    CHECK(answer_of(r) == "404 generation_not_found");
    CHECK(error_of(r).at("type").as_string() == "invalid_request_error");
    CHECK(h.accounts.asked.back() == "generation acct-2 gen-123");
    CHECK(answer_of(c.request(get("/api/v1/generation?id=req_unknown", h.key))) == "404 generation_not_found");
    CHECK(answer_of(c.request(get("/api/v1/generation?id=" + std::string(300, 'x'), h.key))) ==
          "404 generation_not_found");
    CHECK_FALSE(says_close(r));
  }
  SECTION("no id, or an empty one, is 400 without asking the source") {
    auto before = h.accounts.asked.size();
    for (std::string target : {"/api/v1/generation", "/api/v1/generation?id=", "/api/v1/generation?ids=req_abc"})
      CHECK(answer_of(c.request(get(target, h.key))) == "400 missing_id");
    CHECK(h.accounts.asked.size() == before);
  }
  SECTION("nulls where the row has none") {
    auto g = generation_row("req_cut", "req_cut");
    g.upstream.reset();
    g.finish_reason.reset();
    g.duration_ms.reset();
    g.cancelled = true;
    h.accounts.generations.emplace_back("acct-1", g);
    auto d = data_of(c.request(get("/api/v1/generation?id=req_cut", h.key)));
    CHECK(d.at("upstream").is_null());
    CHECK(d.at("finish_reason").is_null());
    CHECK(d.at("latency").is_null());
    CHECK(d.at("cancelled").as_bool());
  }
}

TEST_CASE("self-service endpoints: 401 without a key, 405 for POST, 503 when Postgres fails", "[self_service]") {
  Harness h;
  auto c = h.connect();
  for (std::string path : {"/api/v1/key", "/api/v1/credits", "/api/v1/generation?id=x", "/v1/key", "/v1/credits",
                           "/v1/generation?id=x"}) {
    CAPTURE(path);
    CHECK(answer_of(c.request(get(path, std::nullopt))) == "401 invalid_api_key");
    CHECK(answer_of(c.request(get(path, "tg_not_a_key"))) == "401 invalid_api_key");
  }
  CHECK(h.accounts.asked.empty());
  auto c2 = h.connect();  // a 405 leaves the body unread: that connection closes
  CHECK(answer_of(c2.request(h.post("{}", "/api/v1/key"))) == "405 method_not_allowed");
  h.accounts.fail = true;
  for (std::string path : {"/api/v1/key", "/api/v1/credits", "/api/v1/generation?id=x"}) {
    auto r = c.request(get(path, h.key));
    CHECK(answer_of(r) == "503 accounts_unavailable");
    CHECK_FALSE(says_close(r));
  }
  h.app->accounts = nullptr;
  CHECK(answer_of(c.request(get("/api/v1/credits", h.key))) == "503 accounts_unavailable");
}
