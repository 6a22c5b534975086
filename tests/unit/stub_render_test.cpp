// tollgate-stub's pure request decoding and rendering (bench/stub/stub_api.*): the wire shapes
// the e2e tests rely on for /responses, /messages and /images/generations, and the chat usage
// fields driven by stub_* request fields.
#include "stub_api.hpp"

#include <catch2/catch.hpp>
#include <simdjson.h>

#include <string>
#include <utility>
#include <vector>

using namespace tollgate::stub;
namespace dom = simdjson::dom;

namespace {

/// Decodes `body` for `endpoint` with 4 chunks by default; fails the test on a decode error.
Plan plan_for(Endpoint endpoint, std::string body, std::int64_t chunks = 4) {
  RequestDecoder decoder;
  Plan p;
  const std::string err = decoder.decode(endpoint, body, Defaults{chunks, 0, 0}, p);
  INFO(err);
  REQUIRE(err.empty());
  p.gen = 7;
  p.created = 1700000000;
  return p;
}

std::string decode_error(Endpoint endpoint, std::string body) {
  RequestDecoder decoder;
  Plan p;
  return decoder.decode(endpoint, body, Defaults{}, p);
}

template <class Render>
std::string render(Render&& r) {
  Buffer out;
  r(out);
  return fmt::to_string(out);
}

/// Parses a JSON document the test keeps alive in `storage` (simdjson views into the parser).
struct Json {
  dom::parser parser;
  dom::element root;
  explicit Json(const std::string& text) {
    auto err = parser.parse(text).get(root);
    INFO(text);
    REQUIRE(err == simdjson::SUCCESS);
  }
};

struct Event {
  std::string name;
  std::string data;
};

/// Every event of a complete typed stream (prologue, content, epilogue), split into name + data.
std::vector<Event> typed_stream(const Plan& p) {
  std::vector<std::string> raw;
  for (std::size_t i = 0; i < typed_prologue_events(p); ++i)
    raw.push_back(render([&](Buffer& b) { render_typed_prologue(b, p, i); }));
  for (std::uint64_t i = 0; i < p.completion_tokens; ++i)
    raw.push_back(render([&](Buffer& b) { render_typed_content(b, p, i); }));
  for (std::size_t i = 0; i < typed_epilogue_events(p); ++i)
    raw.push_back(render([&](Buffer& b) { render_typed_epilogue(b, p, i); }));
  std::vector<Event> events;
  for (const auto& e : raw) {
    // Exactly "event: <name>\ndata: <json>\n\n".
    REQUIRE(e.starts_with("event: "));
    REQUIRE(e.ends_with("\n\n"));
    const auto nl = e.find('\n');
    REQUIRE(e.compare(nl + 1, 6, "data: ") == 0);
    events.push_back({e.substr(7, nl - 7), e.substr(nl + 7, e.size() - nl - 9)});
  }
  return events;
}

std::int64_t get_int(dom::element e, std::string_view pointer) {
  std::int64_t v = -1;
  REQUIRE(e.at_pointer(pointer).get_int64().get(v) == simdjson::SUCCESS);
  return v;
}
std::string get_str(dom::element e, std::string_view pointer) {
  std::string_view v;
  INFO(pointer);
  REQUIRE(e.at_pointer(pointer).get_string().get(v) == simdjson::SUCCESS);
  return std::string(v);
}
double get_num(dom::element e, std::string_view pointer) {
  double v = -1;
  REQUIRE(e.at_pointer(pointer).get_double().get(v) == simdjson::SUCCESS);
  return v;
}
bool has(dom::element e, std::string_view pointer) { return e.at_pointer(pointer).error() == simdjson::SUCCESS; }

}  // namespace

TEST_CASE("stub routes the new endpoints on any prefix") {
  CHECK(route("POST", "/v1/responses") == Endpoint::responses);
  CHECK(route("POST", "/api/v1/responses?x=1") == Endpoint::responses);
  CHECK(route("POST", "/v1/messages") == Endpoint::messages);
  CHECK(route("POST", "/api/v1/messages/") == Endpoint::messages);
  CHECK(route("POST", "/v1/images/generations") == Endpoint::images);
  CHECK(route("GET", "/v1/responses") == Endpoint::not_found);
  CHECK(route("POST", "/v1/chat/completions") == Endpoint::chat);
}

TEST_CASE("stub chat usage: defaults unchanged, stub_* fields drive cache and reasoning tokens") {
  // "hi" = 2 bytes -> 1 token + 4 per message = 5 prompt tokens.
  const Plan plain = plan_for(Endpoint::chat, R"({"model":"openai/gpt-4o-mini","messages":[{"role":"user","content":"hi"}]})");
  const std::string body = render([&](Buffer& b) { render_completion(b, plain); });
  CHECK_THAT(body, Catch::Contains(
      R"("usage":{"prompt_tokens":5,"completion_tokens":4,"total_tokens":9,"prompt_tokens_details":{"cached_tokens":0},)"
      R"("completion_tokens_details":{"reasoning_tokens":0},"cost":0.00000315,"cost_details":{"upstream_inference_cost":null}})"));

  const Plan p = plan_for(Endpoint::chat,
      R"({"model":"openai/gpt-4o-mini","messages":[{"role":"user","content":"hi"}],"max_tokens":6,)"
      R"("stub_cached_tokens":3,"stub_cache_write_tokens":2,"stub_reasoning_tokens":4})");
  Json j(render([&](Buffer& b) { render_completion(b, p); }));
  CHECK(get_int(j.root, "/usage/prompt_tokens") == 10);  // 5 uncached + 3 cached + 2 written
  CHECK(get_int(j.root, "/usage/prompt_tokens_details/cached_tokens") == 3);
  CHECK(get_int(j.root, "/usage/prompt_tokens_details/cache_write_tokens") == 2);
  CHECK(get_int(j.root, "/usage/completion_tokens") == 6);  // 4 reasoning + 2 chunks (cap 6)
  CHECK(get_int(j.root, "/usage/completion_tokens_details/reasoning_tokens") == 4);
  CHECK(get_str(j.root, "/choices/0/finish_reason") == "length");
  CHECK(get_str(j.root, "/choices/0/message/content") == "tok0 tok1 ");
  // 5 x 0.15 + 3 x 0.075 + 2 x 0 (no write price) + 6 x 0.6 (USD per million tokens)
  CHECK(get_num(j.root, "/usage/cost") == Approx(4.575e-6).epsilon(1e-12));
}

TEST_CASE("stub Responses API: non-streamed response object") {
  const Plan p = plan_for(Endpoint::responses,
      R"({"model":"openai/gpt-4o","input":[{"role":"user","content":[{"type":"input_text","text":"12345678"}]}],)"
      R"("instructions":"abcd","stub_cached_tokens":100,"stub_reasoning_tokens":10})");
  CHECK(p.prompt_tokens == 3 + 4 * 2);  // 12 bytes -> 3 tokens, two messages
  Json j(render([&](Buffer& b) { render_response(b, p); }));
  CHECK(get_str(j.root, "/object") == "response");
  CHECK(get_str(j.root, "/status") == "completed");
  CHECK(get_str(j.root, "/output/0/type") == "message");
  CHECK(get_str(j.root, "/output/0/content/0/type") == "output_text");
  CHECK(get_str(j.root, "/output/0/content/0/text") == "tok0 tok1 tok2 tok3 ");
  CHECK(get_int(j.root, "/usage/input_tokens") == 111);
  CHECK(get_int(j.root, "/usage/input_tokens_details/cached_tokens") == 100);
  CHECK(get_int(j.root, "/usage/output_tokens") == 14);
  CHECK(get_int(j.root, "/usage/output_tokens_details/reasoning_tokens") == 10);
  CHECK(get_int(j.root, "/usage/total_tokens") == 125);
  // 11 x 2.5 + 100 x 1.25 + 14 x 10 (USD per million tokens)
  CHECK(get_num(j.root, "/usage/cost") == Approx(292.5e-6).epsilon(1e-12));

  const Plan unknown = plan_for(Endpoint::responses, R"({"model":"vendor/unknown","input":"hi"})");
  Json u(render([&](Buffer& b) { render_response(b, unknown); }));
  CHECK_FALSE(has(u.root, "/usage/cost"));  // cost only for catalogued models
  CHECK(get_int(u.root, "/usage/input_tokens") == 5);
}

TEST_CASE("stub Responses API: typed stream events, sequence numbers and final usage") {
  const Plan p = plan_for(Endpoint::responses, R"({"model":"openai/gpt-4o-mini","input":"hi","stream":true})", 3);
  const auto events = typed_stream(p);
  std::vector<std::string> names;
  for (const auto& e : events) names.push_back(e.name);
  CHECK(names == std::vector<std::string>{
      "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
      "response.output_text.delta", "response.output_text.delta", "response.output_text.delta",
      "response.output_text.done", "response.content_part.done", "response.output_item.done", "response.completed"});
  std::string deltas;
  for (std::size_t i = 0; i < events.size(); ++i) {
    Json j(events[i].data);
    CHECK(get_str(j.root, "/type") == events[i].name);
    CHECK(get_int(j.root, "/sequence_number") == static_cast<std::int64_t>(i));
    if (events[i].name == "response.output_text.delta") deltas += get_str(j.root, "/delta");
    if (events[i].name == "response.created") CHECK(j.root.at_pointer("/response/usage").is_null());
  }
  Json done(events[7].data);
  CHECK(get_str(done.root, "/text") == deltas);
  Json last(events.back().data);
  CHECK(get_str(last.root, "/response/status") == "completed");
  CHECK(get_int(last.root, "/response/usage/input_tokens") == 5);
  CHECK(get_int(last.root, "/response/usage/output_tokens") == 3);
  CHECK(get_str(last.root, "/response/output/0/content/0/text") == deltas);
}

TEST_CASE("stub Responses API: max_output_tokens ends with response.incomplete") {
  const Plan p = plan_for(Endpoint::responses,
                          R"({"model":"openai/gpt-4o-mini","input":"hi","stream":true,"max_output_tokens":2})", 5);
  CHECK(p.truncated);
  const auto events = typed_stream(p);
  REQUIRE(events.size() == 4 + 2 + 4);
  CHECK(events.back().name == "response.incomplete");
  Json last(events.back().data);
  CHECK(get_str(last.root, "/response/status") == "incomplete");
  CHECK(get_str(last.root, "/response/incomplete_details/reason") == "max_output_tokens");
  CHECK(get_int(last.root, "/response/max_output_tokens") == 2);
  CHECK(get_int(last.root, "/response/usage/output_tokens") == 2);
}

TEST_CASE("stub Responses API: mid-stream failure events") {
  Plan p = plan_for(Endpoint::responses, R"({"model":"m","input":"hi","stream":true})");
  const std::string failed = render([&](Buffer& b) { render_typed_error(b, p, 2); });
  REQUIRE(failed.starts_with("event: response.failed\ndata: "));
  Json f(failed.substr(failed.find("data: ") + 6));
  CHECK(get_int(f.root, "/sequence_number") == 6);
  CHECK(get_str(f.root, "/response/status") == "failed");
  CHECK(get_str(f.root, "/response/error/code") == "server_error");
  CHECK(f.root.at_pointer("/response/usage").is_null());

  p = plan_for(Endpoint::responses, R"({"model":"m","input":"hi","stream":true,"stub_midstream_event":"error",)"
                                    R"("stub_error":{"code":"rate_limit_exceeded","message":"slow down","param":null}})");
  const std::string error = render([&](Buffer& b) { render_typed_error(b, p, 0); });
  REQUIRE(error.starts_with("event: error\ndata: "));
  Json e(error.substr(error.find("data: ") + 6));
  CHECK(get_str(e.root, "/type") == "error");
  CHECK(get_str(e.root, "/code") == "rate_limit_exceeded");
  CHECK(get_str(e.root, "/message") == "slow down");
}

TEST_CASE("stub Anthropic Messages: validation and non-streamed message") {
  CHECK(decode_error(Endpoint::messages, R"({"model":"m","messages":[]})") == "max_tokens: Field required");
  CHECK(decode_error(Endpoint::messages, R"({"model":"m","max_tokens":5})") == "messages: Field required");
  CHECK_FALSE(decode_error(Endpoint::messages, R"({"model":"m","messages":[],"max_tokens":0})").empty());

  const Plan p = plan_for(Endpoint::messages,
      R"({"model":"anthropic/claude-3.5-sonnet","max_tokens":3,"system":[{"type":"text","text":"be brief"}],)"
      R"("messages":[{"role":"user","content":[{"type":"text","text":"hi"}]}],"stub_cached_tokens":1000,"stub_cache_write_tokens":200})");
  Json j(render([&](Buffer& b) { render_message(b, p); }));
  CHECK(get_str(j.root, "/type") == "message");
  CHECK(get_str(j.root, "/role") == "assistant");
  CHECK(get_str(j.root, "/content/0/type") == "text");
  CHECK(get_str(j.root, "/content/0/text") == "tok0 tok1 tok2 ");
  CHECK(get_str(j.root, "/stop_reason") == "max_tokens");
  CHECK(get_int(j.root, "/usage/input_tokens") == 3 + 4 * 2);  // 10 bytes, system + one message
  CHECK(get_int(j.root, "/usage/cache_read_input_tokens") == 1000);
  CHECK(get_int(j.root, "/usage/cache_creation_input_tokens") == 200);
  CHECK(get_int(j.root, "/usage/output_tokens") == 3);
  // 11 x 3 + 1000 x 0.3 + 200 x 3.75 + 3 x 15 (USD per million tokens)
  CHECK(get_num(j.root, "/usage/cost") == Approx(1128e-6).epsilon(1e-12));
}

TEST_CASE("stub Anthropic Messages: stream events and cumulative usage") {
  const Plan p = plan_for(Endpoint::messages,
      R"({"model":"vendor/unknown","max_tokens":100,"messages":[{"role":"user","content":"hi"}],"stream":true,"stub_cached_tokens":7})", 2);
  const auto events = typed_stream(p);
  std::vector<std::string> names;
  for (const auto& e : events) names.push_back(e.name);
  CHECK(names == std::vector<std::string>{"message_start", "content_block_start", "ping", "content_block_delta",
                                          "content_block_delta", "content_block_stop", "message_delta", "message_stop"});
  for (const auto& e : events) {
    Json j(e.data);
    CHECK(get_str(j.root, "/type") == e.name);
  }
  Json start(events[0].data);
  CHECK(get_int(start.root, "/message/usage/input_tokens") == 5);
  CHECK(get_int(start.root, "/message/usage/cache_read_input_tokens") == 7);
  CHECK(get_int(start.root, "/message/usage/output_tokens") == 1);
  CHECK(start.root.at_pointer("/message/stop_reason").is_null());
  Json delta(events[3].data);
  CHECK(get_str(delta.root, "/delta/type") == "text_delta");
  CHECK(get_str(delta.root, "/delta/text") == "tok0 ");
  Json md(events[6].data);
  CHECK(get_str(md.root, "/delta/stop_reason") == "end_turn");
  CHECK(get_int(md.root, "/usage/output_tokens") == 2);
  CHECK_FALSE(has(md.root, "/usage/cost"));  // not catalogued: no cost, as from Anthropic itself

  const std::string err = render([&](Buffer& b) { render_typed_error(b, p, 1); });
  CHECK(err == "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\","
               "\"message\":\"stub mid-stream error\"}}\n\n");
}

TEST_CASE("stub Anthropic error shape and status failures") {
  CHECK(anthropic_error_type(401) == "authentication_error");
  CHECK(anthropic_error_type(402) == "billing_error");
  CHECK(anthropic_error_type(429) == "rate_limit_error");
  CHECK(anthropic_error_type(529) == "overloaded_error");
  CHECK(anthropic_error_type(503) == "api_error");
  CHECK(anthropic_error_type(422) == "invalid_request_error");
  CHECK(render([](Buffer& b) { render_error_for(b, Endpoint::messages, 401, "bad key"); }) ==
        R"({"type":"error","error":{"type":"authentication_error","message":"bad key"}})");
  CHECK(render([](Buffer& b) { render_error_for(b, Endpoint::responses, 401, "bad key"); }) ==
        R"({"error":{"code":401,"message":"bad key"}})");

  Plan p = plan_for(Endpoint::messages, R"({"model":"m","max_tokens":5,"messages":[],"stub_fail":"status:429"})");
  CHECK(render([&](Buffer& b) { render_status_failure(b, p, 429); }) ==
        R"({"type":"error","error":{"type":"rate_limit_error","message":"stub failure"}})");
  p = plan_for(Endpoint::messages,
               R"({"model":"m","max_tokens":5,"messages":[],"stub_error":{"type":"billing_error","message":"pay"}})");
  CHECK(render([&](Buffer& b) { render_status_failure(b, p, 402); }) ==
        R"({"type":"error","error":{"type":"billing_error","message":"pay"}})");
}

TEST_CASE("stub Images API: n images, token and per-image prices") {
  Plan p = plan_for(Endpoint::images, R"({"model":"openai/gpt-image-1","prompt":"a red fox","n":3})");
  Json j(render([&](Buffer& b) { render_images(b, p); }));
  dom::array data;
  REQUIRE(j.root["data"].get_array().get(data) == simdjson::SUCCESS);
  CHECK(data.size() == 3);
  CHECK(get_str(j.root, "/data/2/b64_json") == kStubImageB64);
  CHECK(get_str(j.root, "/size") == "1024x1024");
  CHECK(get_int(j.root, "/usage/input_tokens") == 3);  // 9 bytes
  CHECK(get_int(j.root, "/usage/output_tokens") == 3 * 1056);
  CHECK(get_int(j.root, "/usage/total_tokens") == 3 + 3 * 1056);
  // 3 x 5 + 3168 x 40 (USD per million tokens)
  CHECK(get_num(j.root, "/usage/cost") == Approx(126.735e-3).epsilon(1e-12));

  p = plan_for(Endpoint::images, R"({"model":"openai/dall-e-3","prompt":"x","n":2,"response_format":"url","size":"1792x1024","stub_image_tokens":0})");
  Json d(render([&](Buffer& b) { render_images(b, p); }));
  CHECK(get_str(d.root, "/data/1/url") == "https://stub.invalid/images/gen-7-1.png");
  CHECK(get_str(d.root, "/size") == "1792x1024");
  CHECK(get_num(d.root, "/usage/cost") == Approx(0.08));  // 2 x 0.04 per image

  p = plan_for(Endpoint::images, R"({"model":"openai/dall-e-3","prompt":"x","stub_no_usage":true})");
  Json n(render([&](Buffer& b) { render_images(b, p); }));
  CHECK_FALSE(has(n.root, "/usage"));

  CHECK_FALSE(decode_error(Endpoint::images, R"({"model":"m","prompt":"x","n":0})").empty());
  CHECK_FALSE(decode_error(Endpoint::images, R"({"model":"m","prompt":"x","n":11})").empty());
  CHECK(decode_error(Endpoint::images, R"({"model":"m"})") == "prompt is required");
}

TEST_CASE("stub /__stub/last records the Anthropic headers that were present") {
  RecordedHeader headers[kRecordedHeaderCount];
  headers[1] = {true, "2023-06-01"};
  headers[2] = {true, ""};
  Json j(render([&](Buffer& b) { render_last(b, "POST", "/v1/messages", "", headers, "{}", 3); }));
  CHECK_FALSE(has(j.root, "/headers/x-api-key"));
  CHECK(get_str(j.root, "/headers/anthropic-version") == "2023-06-01");
  CHECK(get_str(j.root, "/headers/anthropic-beta").empty());
  CHECK(get_int(j.root, "/requests") == 3);
}

TEST_CASE("stub /models: image-output price for the token-priced image model only") {
  Json j(render_models());
  dom::array data;
  REQUIRE(j.root["data"].get(data) == simdjson::SUCCESS);
  int seen = 0;
  for (dom::element m : data) {
    std::string id(m["id"].get_string().value());
    std::string_view image_output;
    bool has = m.at_pointer("/pricing/image_output").get_string().get(image_output) == simdjson::SUCCESS;
    INFO(id);
    if (id == "openai/gpt-image-1") {
      REQUIRE(has);
      CHECK(image_output == get_str(m, "/pricing/completion"));
      CHECK(image_output == "0.00004");
      ++seen;
    } else {
      CHECK_FALSE(has);  // dall-e-3 is priced per image; text models have no image output
      if (id == "openai/dall-e-3") ++seen;
    }
  }
  CHECK(seen == 2);
}
