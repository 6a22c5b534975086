#include "proxy/wire.hpp"

#include <boost/json.hpp>
#include <catch2/catch.hpp>

using namespace tollgate::wire;
namespace json = boost::json;

namespace {
constexpr std::string_view key = "sk-or-v1-0123456789abcdef";

json::object error_of(const std::string& body) {
  json::object o = json::parse(body).as_object();
  REQUIRE(o.size() == 1);
  return o.at("error").as_object();
}
}  // namespace

TEST_CASE("error types follow the status") {
  CHECK(error_type_for_status(400) == "invalid_request_error");
  CHECK(error_type_for_status(401) == "authentication_error");
  CHECK(error_type_for_status(402) == "insufficient_quota");
  CHECK(error_type_for_status(403) == "permission_denied");
  CHECK(error_type_for_status(404) == "not_found_error");
  CHECK(error_type_for_status(408) == "invalid_request_error");
  CHECK(error_type_for_status(429) == "rate_limit_error");
  CHECK(error_type_for_status(500) == "upstream_error");
  CHECK(error_type_for_status(503) == "upstream_error");
  CHECK(error_type_for_status(302) == "upstream_error");
}

TEST_CASE("OpenRouter's error envelope becomes OpenAI's, keeping code and metadata") {
  auto e = error_of(upstream_error_body(
      403,
      R"({"error":{"code":403,"message":"Input flagged","metadata":{"reasons":["violence"],"provider_name":"X"}},"user_id":"user_2x"})",
      "application/json", key));
  CHECK(e.at("message").as_string() == "Input flagged");
  CHECK(e.at("type").as_string() == "permission_denied");
  CHECK(e.at("param").is_null());
  CHECK(e.at("code").as_int64() == 403);
  CHECK(e.at("metadata").as_object().at("provider_name").as_string() == "X");
  CHECK(e.at("metadata").as_object().at("reasons").as_array().size() == 1);
  // Members are in OpenAI's order, then metadata.
  std::vector<std::string> names;
  for (const auto& m : e) names.emplace_back(m.key());
  CHECK(names == std::vector<std::string>{"message", "type", "param", "code", "metadata"});
}

TEST_CASE("an OpenAI-shaped upstream error is kept as it is") {
  std::string body =
      R"({"error":{"message":"This model's maximum context length is 8192 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}})";
  CHECK(json::parse(upstream_error_body(400, body, "application/json", key)) == json::parse(body));
  auto e = error_of(upstream_error_body(500, R"({"error":{"message":"oops","type":"server_error","param":null,"code":null}})",
                                        "application/json", key));
  CHECK(e.at("type").as_string() == "server_error");
  CHECK(e.at("code").is_null());  // the upstream's own code, even null
}

TEST_CASE("the operator's key and the upstream's cost never reach the client") {
  std::string k(key);
  std::string body = R"j({"error":{"code":401,"message":"Invalid key )j" + k + R"j( (also )j" + k +
                     R"j()","metadata":{"raw":"auth )j" + k +
                     R"j( failed","cost":0.12,"usage":{"total_cost":1,"prompt_tokens":3},"Upstream_Cost":"9"}}})j";
  std::string out = upstream_error_body(401, body, "application/json", key);
  CHECK(out.find(key) == std::string::npos);
  CHECK(out.find("cost") == std::string::npos);
  CHECK(out.find("Cost") == std::string::npos);
  auto e = error_of(out);
  CHECK(e.at("message").as_string() == "Invalid key [redacted] (also [redacted])");
  CHECK(e.at("type").as_string() == "authentication_error");
  CHECK(e.at("metadata").as_object().at("raw").as_string() == "auth [redacted] failed");
  CHECK(e.at("metadata").as_object().at("usage").as_object().at("prompt_tokens").as_int64() == 3);
  // Without a configured key nothing is redacted (and nothing crashes).
  CHECK(error_of(upstream_error_body(400, R"({"error":"plain"})", "application/json", "")).at("message").as_string() == "plain");
}

TEST_CASE("non-JSON, empty and message-less error bodies get a clear message") {
  auto e = error_of(upstream_error_body(502, "<html><body>Bad Gateway</body></html>", "text/html; charset=utf-8", key));
  CHECK(e.at("message").as_string() == "The upstream answered HTTP 502 with a body that is not JSON (text/html, 37 bytes).");
  CHECK(e.at("type").as_string() == "upstream_error");
  CHECK(e.at("code").as_int64() == 502);
  CHECK_FALSE(e.contains("metadata"));
  e = error_of(upstream_error_body(503, "", "", key));
  CHECK(e.at("message").as_string() == "The upstream answered HTTP 503 with an empty body.");
  CHECK(e.at("code").as_int64() == 503);
  e = error_of(upstream_error_body(429, R"({"error":"Rate limit exceeded"})", "application/json", key));
  CHECK(e.at("message").as_string() == "Rate limit exceeded");
  CHECK(e.at("type").as_string() == "rate_limit_error");
  CHECK(e.at("code").as_int64() == 429);
  e = error_of(upstream_error_body(404, R"({"detail":"Not Found"})", "application/json", key));
  CHECK(e.at("message").as_string() == "Not Found");
  CHECK(e.at("type").as_string() == "not_found_error");
  e = error_of(upstream_error_body(500, R"({"status":"broken"})", "application/json", key));
  CHECK(e.at("message").as_string() == "The upstream answered HTTP 500 without an error message.");
  e = error_of(upstream_error_body(500, "[1,2", "application/json", key));
  CHECK(e.at("message").as_string().find("not JSON") != json::string::npos);
  e = error_of(upstream_error_body(400, R"({"error":{"message":42,"code":{"x":1}}})", "application/json", key));
  CHECK(e.at("message").as_string() == "The upstream answered HTTP 400 without an error message.");
  CHECK(e.at("code").as_int64() == 400);  // a code that is neither string nor integer: the status
}

TEST_CASE("a mid-stream error event keeps the chunk, with its error in OpenAI's envelope") {
  std::string data =
      R"({"id":"gen-1","object":"chat.completion.chunk","error":{"code":502,"message":"Provider disconnected )" +
      std::string(key) + R"(","metadata":{"provider_name":"P"}},"choices":[{"index":0,"delta":{"content":""},"finish_reason":"error"}],"usage":{"prompt_tokens":5,"cost":0.3}})";
  auto out = upstream_error_event(data, key);
  REQUIRE(out);
  CHECK(out->find(key) == std::string::npos);
  CHECK(out->find("cost") == std::string::npos);
  auto o = json::parse(*out).as_object();
  CHECK(o.at("id").as_string() == "gen-1");
  CHECK(o.at("choices").as_array()[0].as_object().at("finish_reason").as_string() == "error");
  CHECK(o.at("usage").as_object().at("prompt_tokens").as_int64() == 5);
  auto& e = o.at("error").as_object();
  CHECK(e.at("message").as_string() == "Provider disconnected [redacted]");
  CHECK(e.at("type").as_string() == "upstream_error");
  CHECK(e.at("param").is_null());
  CHECK(e.at("code").as_int64() == 502);
  CHECK(e.at("metadata").as_object().at("provider_name").as_string() == "P");

  auto r = json::parse(*upstream_error_event(R"({"error":{"code":429,"message":"slow down"}})", key)).as_object();
  CHECK(r.at("error").as_object().at("type").as_string() == "rate_limit_error");
  r = json::parse(*upstream_error_event(R"({"error":"boom"})", key)).as_object();
  CHECK(r.at("error").as_object().at("message").as_string() == "boom");
  CHECK(r.at("error").as_object().at("code").as_int64() == 500);
  CHECK_FALSE(upstream_error_event(R"({"error":null,"choices":[]})", key));
  CHECK_FALSE(upstream_error_event(R"({"choices":[]})", key));
  CHECK_FALSE(upstream_error_event("not json", key));
}
