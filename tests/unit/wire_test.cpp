#include "proxy/wire.hpp"

#include <boost/json.hpp>
#include <catch2/catch.hpp>

#include <cstdint>
#include <limits>

using namespace tollgate::wire;

namespace {
std::optional<ParsedRequest> parse(std::string body, RequestError& err) { return parse_request(body, err); }
}  // namespace

TEST_CASE("request fields are read") {
  RequestError err;
  auto r = parse(R"({"model":"openai/gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"stream":true,"max_tokens":64})", err);
  REQUIRE(r);
  CHECK(r->model == "openai/gpt-4o-mini");
  CHECK(r->stream);
  CHECK(r->max_tokens == 64);
  CHECK_FALSE(r->include_usage);
  auto r2 = parse(R"({"model":"m","max_completion_tokens":7,"stream_options":{"include_usage":true}})", err);
  REQUIRE(r2);
  CHECK(r2->max_tokens == 7);
  CHECK(r2->include_usage);
  CHECK(r2->has_stream_options);
}

TEST_CASE("bad requests get a 400 with a reason") {
  RequestError err;
  CHECK_FALSE(parse("{not json", err));
  CHECK(err.status == 400);
  CHECK(err.code == "invalid_json");
  CHECK_FALSE(parse("[1,2]", err));
  CHECK_FALSE(parse(R"({"messages":[]})", err));
  CHECK(err.code == "missing_model");
  CHECK_FALSE(parse(R"({"model":42})", err));
  CHECK(err.code == "invalid_model");
  CHECK_FALSE(parse(R"({"model":""})", err));
  CHECK_FALSE(parse(R"({"model":"m","max_tokens":-1})", err));
  CHECK_FALSE(parse(R"({"model":"m","stream":"yes"})", err));
  CHECK_FALSE(parse(R"({"model":"m"} trailing)", err));
  CHECK_FALSE(parse("", err));
}

TEST_CASE("upstream body asks for usage and caps max_tokens only where absent") {
  RequestError err;
  std::string body = R"({"model":"m","stream":true,"messages":[]})";
  auto r = parse(body, err);
  REQUIRE(r);
  auto up = boost::json::parse(upstream_body(body, Endpoint::chat_completions, *r, 4096)).as_object();
  CHECK(up["stream_options"].as_object()["include_usage"].as_bool());
  CHECK(up["max_tokens"].as_int64() == 4096);
  CHECK(up["model"].as_string() == "m");

  std::string body2 = R"({"model":"m","stream":true,"stream_options":{"include_usage":false},"max_tokens":5})";
  auto r2 = parse(body2, err);
  REQUIRE(r2);
  auto up2 = boost::json::parse(upstream_body(body2, Endpoint::chat_completions, *r2, 4096)).as_object();
  CHECK(up2["stream_options"].as_object()["include_usage"].as_bool());
  CHECK(up2["max_tokens"].as_int64() == 5);

  std::string body3 = R"({"model":"m","input":"x"})";
  auto r3 = parse(body3, err);
  CHECK(upstream_body(body3, Endpoint::embeddings, *r3, 4096) == body3);  // untouched
}

TEST_CASE("the whole request body must be valid JSON, values tollgate does not read included") {
  // Found by tests/fuzz wire_request: on-demand parsing skipped unread values unchecked, so the
  // upstream got invalid JSON, and upstream_body() threw when it had to edit such a body.
  RequestError err;
  for (const char* bad : {R"({"model":"m","x":tru})", R"({"model":"m","x":[1,]})", R"({"model":"m","x":"\q"})",
                          R"({"model":"m","x":01})", R"({"model":"m","x":{"a" 1}})",
                          R"({"model":"m","stream":true,"stream_options":{},"x":tru})"}) {
    CAPTURE(bad);
    CHECK_FALSE(parse(bad, err));
    CHECK(err.code == "invalid_json");
  }
}

TEST_CASE("fields tollgate bills by may appear only once") {
  // Parsers disagree on which duplicate wins: the upstream could read another model or cap.
  RequestError err;
  for (const char* dup : {R"({"model":"cheap","model":"dear"})", R"({"model":"m","max_tokens":100000,"max_tokens":1})",
                          R"({"model":"m","max_tokens":5,"max_tokens":null})", R"({"model":"m","stream":false,"stream":true})",
                          R"({"model":"m","max_completion_tokens":1,"max_completion_tokens":9})",
                          R"({"model":"m","stream_options":null,"stream_options":{}})",
                          R"({"model":"m","stream_options":{"include_usage":false,"include_usage":true}})"}) {
    CAPTURE(dup);
    CHECK_FALSE(parse(dup, err));
    CHECK(err.code == "invalid_json");
    CHECK(err.status == 400);
  }
}

TEST_CASE("one cap: the smaller of max_tokens and max_completion_tokens is held and sent in both") {
  // issue 11: {"max_tokens":1,"max_completion_tokens":100000} was held for 1 token while the
  // upstream, like OpenAI, honoured max_completion_tokens.
  RequestError err;
  for (const char* body : {R"({"model":"m","max_tokens":1,"max_completion_tokens":100000})",
                           R"({"max_completion_tokens":100000,"model":"m","max_tokens":1})",
                           R"({"model":"m","max_completion_tokens":1,"max_tokens":100000})"}) {
    CAPTURE(body);
    std::string b = body;
    auto r = parse(b, err);
    REQUIRE(r);
    CHECK(r->max_tokens == 1);
    auto up = boost::json::parse(upstream_body(b, Endpoint::chat_completions, *r, 4096)).as_object();
    CHECK(up.at("max_tokens").as_int64() == 1);
    CHECK(up.at("max_completion_tokens").as_int64() == 1);
  }
  std::string same = R"({"model":"m","max_tokens":7,"max_completion_tokens":7})";
  auto r = parse(same, err);
  REQUIRE(r);
  CHECK(r->max_tokens == 7);
  CHECK(upstream_body(same, Endpoint::chat_completions, *r, 4096) == same);  // nothing to rewrite
  std::string only = R"({"model":"m","max_completion_tokens":9})";
  r = parse(only, err);
  REQUIRE(r);
  CHECK(r->max_tokens == 9);
  CHECK(upstream_body(only, Endpoint::chat_completions, *r, 4096) == only);
}

TEST_CASE("usage that cannot be believed is flagged implausible") {
  auto usage_of = [](std::string_view json) { return inspect_json(json).value().usage.value(); };
  CHECK_FALSE(usage_of(R"({"usage":{"prompt_tokens":3,"completion_tokens":5}})").implausible);
  CHECK_FALSE(usage_of(R"({"usage":{"prompt_tokens":3,"completion_tokens":5,"cost":0.0001}})").implausible);
  for (const char* bad : {R"({"usage":{"prompt_tokens":-3,"completion_tokens":5}})",
                          R"({"usage":{"prompt_tokens":3,"completion_tokens":1000000000000}})",
                          R"({"usage":{"prompt_tokens":3,"completion_tokens":"5"}})",
                          R"({"usage":{"prompt_tokens":3,"completion_tokens":5,"cost":-1}})",
                          R"({"usage":{"prompt_tokens":3,"completion_tokens":5,"cost":123456789012345678901234567890}})"}) {
    CAPTURE(bad);
    CHECK(usage_of(bad).implausible);
  }
}

TEST_CASE("output is found in chunks however their JSON is spaced") {
  // issue 11: an idle-cut stream whose chunks read `"content": "…"` (with a space) was billed $0.
  CHECK(chunk_has_output(R"({"choices":[{"delta":{"content":"hi"}}]})"));
  CHECK(chunk_has_output(R"({"choices":[{"delta":{"content": "hi"}}]})"));
  CHECK(chunk_has_output(R"({"choices": [ {"delta": {"content" : "hi"} } ]})"));
  CHECK(chunk_has_output(R"({"choices":[{"delta":{"tool_calls": [{"index":0}]}}]})"));
  CHECK(chunk_has_output(R"({"choices":[{"text" : "x","index":0}]})"));
  CHECK_FALSE(chunk_has_output(R"({"choices":[{"delta":{"content": ""}}]})"));
  CHECK_FALSE(chunk_has_output(R"({"choices":[{"delta":{"role": "assistant"}}]})"));
  CHECK_FALSE(chunk_has_output(R"({"choices":[],"usage":{"prompt_tokens":1}})"));
  CHECK_FALSE(chunk_has_output("not json \"content\": \"x"));
}

TEST_CASE("a null max_tokens or stream_options is replaced upstream, never sent beside ours") {
  // Found by tests/fuzz wire_request: {"max_tokens":4096,…,"max_tokens":null} went upstream, and a
  // last-key-wins parser read no cap at all.
  RequestError err;
  std::string body = R"({"model":"m","stream":true,"max_tokens":null,"stream_options":null,"messages":[]})";
  auto r = parse(body, err);
  REQUIRE(r);
  CHECK(r->max_tokens_null);
  CHECK_FALSE(r->max_tokens);
  std::string up_text = upstream_body(body, Endpoint::chat_completions, *r, 4096);
  CHECK(up_text.find("null") == std::string::npos);
  auto up = boost::json::parse(up_text).as_object();
  CHECK(up["max_tokens"].as_int64() == 4096);
  CHECK(up["stream_options"].as_object()["include_usage"].as_bool());
}

TEST_CASE("usage extraction: of a repeated key the last one counts, as for JSON.parse") {
  auto a = inspect_json(R"({"id":"a","id":7,"usage":{"prompt_tokens":5,"completion_tokens":5},"usage":null})");
  REQUIRE(a);
  CHECK_FALSE(a->generation_id);
  CHECK_FALSE(a->usage);
  auto b = inspect_json(R"({"error":{"code":1},"error":null,"usage":{"prompt_tokens":5,"prompt_tokens":"x","cost":1,"cost":null}})");
  REQUIRE(b);
  CHECK_FALSE(b->error);
  REQUIRE(b->usage);
  CHECK(b->usage->prompt_tokens == 0);
  CHECK_FALSE(b->usage->cost_usd);
  auto c = inspect_json(R"({"choices":[{"finish_reason":"stop","finish_reason":null}],"choices":7})");
  REQUIRE(c);
  CHECK_FALSE(c->finish_reason);
}

TEST_CASE("a usage.cost that is not exactly a JSON number is no cost") {
  // Found by tests/fuzz: on-demand reads a number's type from its first character only.
  for (const char* bad : {R"({"usage":{"cost":1e:400}})", R"({"usage":{"cost":12abc}})", R"({"usage":{"cost":-}})"}) {
    auto d = inspect_json(bad);
    CAPTURE(bad);
    CHECK_FALSE((d && d->usage && d->usage->cost_usd));
  }
  auto e = inspect_json(R"({"usage":{"cost":0.5e-3 }})");
  REQUIRE((e && e->usage && e->usage->cost_usd));
  CHECK(*e->usage->cost_usd == "0.5e-3");
  auto n = inspect_json(R"({"usage":{"cost":-0.5e-3 }})");  // a negative cost is ignored (billing edges)
  CHECK_FALSE((n && n->usage && n->usage->cost_usd));
}

TEST_CASE("usage extraction from a response and from the final stream chunk") {
  auto info = inspect_json(R"({"id":"gen-9","choices":[{"message":{"content":"x"},"finish_reason":"stop"}],)"
                           R"("usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15,"cost":1.5e-05,)"
                           R"("prompt_tokens_details":{"cached_tokens":0}}})");
  REQUIRE(info);
  REQUIRE(info->usage);
  CHECK(info->usage->prompt_tokens == 12);
  CHECK(info->usage->completion_tokens == 3);
  CHECK(info->usage->cost_usd == std::optional<std::string>("1.5e-05"));
  CHECK(info->generation_id == std::optional<std::string>("gen-9"));
  CHECK(info->finish_reason == std::optional<std::string>("stop"));
  CHECK_FALSE(info->usage_only);

  auto last = inspect_json(R"({"id":"g","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}})");
  REQUIRE(last);
  CHECK(last->usage_only);
  CHECK_FALSE(last->usage->cost_usd);

  auto none = inspect_json(R"({"id":"g","choices":[{"delta":{"content":"a"}}],"usage":null})");
  REQUIRE(none);
  CHECK_FALSE(none->usage);

  auto err = inspect_json(R"({"id":"g","error":{"code":502,"message":"x"},"choices":[{"delta":{"content":""},"finish_reason":"error"}]})");
  REQUIRE(err);
  CHECK(err->error);
  CHECK(err->finish_reason == std::optional<std::string>("error"));
  CHECK_FALSE(inspect_json("not json"));
}

TEST_CASE("chunks with output are counted, empty deltas are not") {
  CHECK(chunk_has_output(R"({"choices":[{"delta":{"content":"hi"}}]})"));
  CHECK_FALSE(chunk_has_output(R"({"choices":[{"delta":{"content":""},"finish_reason":"stop"}]})"));
  CHECK_FALSE(chunk_has_output(R"({"choices":[{"delta":{"role":"assistant"}}]})"));
  CHECK(chunk_has_output(R"({"choices":[{"text":"x"}]})"));
}

TEST_CASE("error body is the OpenAI envelope") {
  auto v = boost::json::parse(error_body("bad \"thing\"", "invalid_request_error", "x")).as_object();
  CHECK(v["error"].as_object()["message"].as_string() == "bad \"thing\"");
  CHECK(v["error"].as_object()["type"].as_string() == "invalid_request_error");
  CHECK(v["error"].as_object()["code"].as_string() == "x");
  CHECK(v["error"].as_object()["param"].is_null());
}

TEST_CASE("hostile usage: huge, negative, fractional and non-numeric token counts are clamped") {
  auto usage_of = [](std::string usage_json) {
    auto info = inspect_json(R"({"id":"g","choices":[],"usage":)" + usage_json + "}");
    REQUIRE(info);
    REQUIRE(info->usage);
    return *info->usage;
  };
  constexpr std::int64_t max = Usage::max_tokens;
  auto u = usage_of(R"({"prompt_tokens":1000000000000,"completion_tokens":-5})");  // 10^12, negative
  CHECK(u.prompt_tokens == max);
  CHECK(u.completion_tokens == 0);
  u = usage_of(R"({"prompt_tokens":123456789012345678901234567890,"completion_tokens":-123456789012345678901234567890})");
  CHECK(u.prompt_tokens == max);  // 30 digits: beyond int64 and double precision
  CHECK(u.completion_tokens == 0);
  u = usage_of(R"({"prompt_tokens":12.5,"completion_tokens":1e3})");  // rounded up, exactly
  CHECK(u.prompt_tokens == 13);
  CHECK(u.completion_tokens == 1000);
  u = usage_of(R"({"prompt_tokens":1e400,"completion_tokens":-0.5})");
  CHECK(u.prompt_tokens == max);
  CHECK(u.completion_tokens == 0);
  u = usage_of(R"({"prompt_tokens":"12","completion_tokens":null})");  // not numbers: absent
  CHECK(u.prompt_tokens == 0);
  CHECK(u.completion_tokens == 0);
  u = usage_of(R"({"prompt_tokens":9223372036854775807,"completion_tokens":1000000000})");
  CHECK(u.prompt_tokens == max);
  CHECK(u.completion_tokens == max);
  // Both at the maximum still fit usage_logs' int4 total_tokens.
  CHECK(2 * max <= std::numeric_limits<std::int32_t>::max());
}

TEST_CASE("hostile usage: a negative, oversized or non-numeric cost is not believed") {
  auto cost_of = [](std::string cost_json) {
    auto info = inspect_json(R"({"usage":{"prompt_tokens":1,"completion_tokens":1,"cost":)" + cost_json + "}}");
    REQUIRE(info);
    REQUIRE(info->usage);
    return info->usage->cost_usd;
  };
  CHECK(cost_of("0.00042") == std::optional<std::string>("0.00042"));
  CHECK(cost_of("0") == std::optional<std::string>("0"));
  CHECK(cost_of("1000000") == std::optional<std::string>("1000000"));  // USD 1,000,000: the bound
  CHECK_FALSE(cost_of("1000000.000000000001"));
  CHECK_FALSE(cost_of("123456789012345678901234567890"));  // 30 digits
  CHECK_FALSE(cost_of("-0.5"));
  CHECK_FALSE(cost_of(R"("0.1")"));
  CHECK_FALSE(cost_of("null"));
  CHECK_FALSE(cost_of("1e400"));
}

TEST_CASE("usage details: cached, cache-write and reasoning tokens (OpenRouter's usage object)") {
  auto usage_of = [](std::string_view json) { return inspect_json(json).value().usage.value(); };
  // OpenRouter's documented example, with reasoning: parts of prompt and completion tokens.
  auto u = usage_of(R"({"usage":{"completion_tokens":30,"completion_tokens_details":{"reasoning_tokens":20},)"
                    R"("cost":0.95,"cost_details":{"upstream_inference_cost":19},"prompt_tokens":194,)"
                    R"("prompt_tokens_details":{"cached_tokens":50,"cache_write_tokens":100,"audio_tokens":0},"total_tokens":224}})");
  CHECK_FALSE(u.implausible);
  CHECK(u.prompt_tokens == 194);
  CHECK(u.cached_tokens == 50);
  CHECK(u.cache_write_tokens == 100);
  CHECK(u.completion_tokens == 30);
  CHECK(u.reasoning_tokens == 20);
  // In a stream's usage chunk too; absent, null details and null counts are 0.
  auto chunk = inspect_json(R"({"id":"gen-1","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,)"
                            R"("prompt_tokens_details":null,"completion_tokens_details":{"reasoning_tokens":null}}})");
  REQUIRE((chunk && chunk->usage && chunk->usage_only));
  CHECK_FALSE(chunk->usage->implausible);
  CHECK(chunk->usage->cached_tokens == 0);
  CHECK(chunk->usage->reasoning_tokens == 0);
  // Of a repeated details object the last counts.
  auto dup = usage_of(R"({"usage":{"prompt_tokens":9,"prompt_tokens_details":{"cached_tokens":4},)"
                      R"("prompt_tokens_details":{"cache_write_tokens":3}}})");
  CHECK(dup.cached_tokens == 0);
  CHECK(dup.cache_write_tokens == 3);
  // A fraction is rounded up, as for the other counts.
  CHECK(usage_of(R"({"usage":{"prompt_tokens":9,"prompt_tokens_details":{"cached_tokens":2.5}}})").cached_tokens == 3);
}

TEST_CASE("usage details that cannot be believed make the usage implausible") {
  auto usage_of = [](std::string_view json) { return inspect_json(json).value().usage.value(); };
  CHECK_FALSE(usage_of(R"({"usage":{"prompt_tokens":10,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":6,"cache_write_tokens":4},"completion_tokens_details":{"reasoning_tokens":5}}})").implausible);
  for (const char* bad : {
           R"({"usage":{"prompt_tokens":10,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":-1}}})",
           R"({"usage":{"prompt_tokens":10,"completion_tokens":5,"prompt_tokens_details":{"cache_write_tokens":"4"}}})",
           R"({"usage":{"prompt_tokens":10,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":1000000000000}}})",
           R"({"usage":{"prompt_tokens":10,"completion_tokens":5,"completion_tokens_details":{"reasoning_tokens":[1]}}})",
           // parts beyond their whole
           R"({"usage":{"prompt_tokens":10,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":11}}})",
           R"({"usage":{"prompt_tokens":10,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":6,"cache_write_tokens":5}}})",
           R"({"usage":{"prompt_tokens":10,"completion_tokens":5,"completion_tokens_details":{"reasoning_tokens":6}}})",
           R"({"usage":{"completion_tokens_details":{"reasoning_tokens":1}}})"}) {
    CAPTURE(bad);
    CHECK(usage_of(bad).implausible);
  }
}
