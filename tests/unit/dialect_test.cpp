// The API dialects (proxy/dialect*.cpp): what each reads for billing, what the client gets
// (the customer's charge as usage.cost, never the upstream's cost), and each API's errors.
#include "proxy/dialect.hpp"
#include "proxy/record.hpp"
#include "proxy/request.hpp"
#include "proxy/wire_usage.hpp"

#include <catch2/catch.hpp>

#include <string>
#include <vector>

using namespace tollgate;

namespace {

constexpr std::string_view upstream_key = "sk-or-v1-UPSTREAMSECRET";

/// A priced model "m" (USD 1 / 1M prompt tokens, 2 / 1M completion, cache reads 0.1 / 1M) with a
/// 50 % markup, and a request for it.
RequestCtx ctx_for(const Dialect& d, wire::Endpoint ep, bool stream = false) {
  pricing::ModelPrice p;
  p.prompt_per_token = 1'000'000;
  p.completion_per_token = 2'000'000;
  p.cache_read_per_token = 100'000;
  std::unordered_map<std::string, pricing::ModelPrice> prices{{"m", p}};
  std::vector<pricing::PricingRule> rules{{"*", 5000, 0, 0}};
  RequestCtx ctx;
  ctx.pricing = std::make_shared<const pricing::PricingSnapshot>(std::move(prices), std::move(rules));
  ctx.dialect = &d;
  ctx.endpoint = ep;
  ctx.req.model = "m";
  ctx.req.stream = stream;
  ctx.hold = 1'000'000;  // USD 1: never the bound here
  ctx.out.status = 200;
  ctx.out.reached_upstream = true;
  return ctx;
}

/// The charge for `prompt` (of which `cached` read from cache) and `completion` tokens of "m".
pricing::Micros charge_for(std::int64_t prompt, std::int64_t completion, std::int64_t cached = 0) {
  RequestCtx ctx = ctx_for(openai_dialect(), wire::Endpoint::chat_completions);
  ctx.out.usage = wire::Usage{};
  ctx.out.usage->prompt_tokens = prompt;
  ctx.out.usage->completion_tokens = completion;
  ctx.out.usage->cached_tokens = cached;
  return quote(ctx);
}

std::string usd(pricing::Micros m) {
  std::string s;
  pricing::append_micros(s, m);
  return s;
}

/// Runs events through a dialect's stream relay and its end, returning what the client gets.
std::string relay(RequestCtx& ctx, const std::vector<std::string>& events, SseBatch* last = nullptr) {
  StreamState st;
  SseBatch batch;
  for (const auto& ev : events) ctx.dialect->relay_event(ev, ctx, upstream_key, st, batch);
  ctx.dialect->end_stream(ctx, st, batch);
  if (last) *last = batch;
  return batch.bytes;
}

}  // namespace

TEST_CASE("chat JSON: usage.cost becomes the charge, cost_details and the upstream's cost go", "[dialect]") {
  RequestCtx ctx = ctx_for(openai_dialect(), wire::Endpoint::chat_completions);
  std::string body =
      R"({"id":"gen-1","choices":[{"message":{"content":"hi"},"finish_reason":"stop"}],)"
      R"("usage":{"prompt_tokens":1000,"completion_tokens":500,"cost":0.987654,"cost_details":{"upstream_inference_cost":0.5},"cost":0.123456}})";
  openai_dialect().read_response(body, ctx);
  REQUIRE(ctx.out.usage);
  CHECK(ctx.out.usage->prompt_tokens == 1000);
  CHECK(ctx.out.generation_id == "gen-1");
  pricing::Micros charge = charge_for(1000, 500);
  CHECK(charge == 3000);  // (1000 × 1 + 500 × 2) µUSD × 1.5
  CHECK(body.find("\"cost\":" + usd(charge)) != std::string::npos);
  CHECK(body.find("cost_details") == std::string::npos);
  CHECK(body.find("0.987654") == std::string::npos);
  CHECK(body.find("0.123456") == std::string::npos);
  CHECK(body.find("upstream_inference_cost") == std::string::npos);
}

TEST_CASE("chat stream without stream_options: the usage rides on the finish_reason chunk", "[dialect]") {
  RequestCtx ctx = ctx_for(openai_dialect(), wire::Endpoint::chat_completions, true);
  SseBatch batch;
  std::string got = relay(ctx, {
      R"(data: {"id":"g","choices":[{"delta":{"content":"a"},"finish_reason":null}]})" "\n\n",
      R"(data: {"id":"g","choices":[{"delta":{},"finish_reason":"stop"}]})" "\n\n",
      ": OPENROUTER PROCESSING\n\n",
      R"(data: {"id":"g","choices":[],"usage":{"prompt_tokens":10,"completion_tokens":1,"cost":0.9,"cost_details":{"upstream_inference_cost":0.9}}})" "\n\n",
      "data: [DONE]\n\n"}, &batch);
  CHECK(got.find("\"choices\":[]") == std::string::npos);  // choices[0] readers do not break
  auto finish = got.find("\"finish_reason\":\"stop\"");
  REQUIRE(finish != std::string::npos);
  auto usage = got.find("\"usage\":{\"prompt_tokens\":10,\"completion_tokens\":1,\"cost\":" + usd(charge_for(10, 1)) + "}");
  CHECK(usage != std::string::npos);
  CHECK(got.find("0.9") == std::string::npos);
  CHECK(got.rfind("data: [DONE]\n\n") == got.size() - 14);
  CHECK(batch.output_ends.size() == 1);
  CHECK(ctx.out.usage->prompt_tokens == 10);
}

TEST_CASE("chat stream: include_usage gets OpenAI's usage chunk, include_usage:false gets none", "[dialect]") {
  const std::vector<std::string> events{
      R"(data: {"id":"g","choices":[{"delta":{},"finish_reason":"stop"}]})" "\n\n",
      R"(data: {"id":"g","choices":[],"usage":{"prompt_tokens":10,"completion_tokens":1,"cost":0.9}})" "\n\n",
      "data: [DONE]\n\n"};
  RequestCtx asked = ctx_for(openai_dialect(), wire::Endpoint::chat_completions, true);
  asked.req.include_usage = true;
  std::string got = relay(asked, events);
  CHECK(got.find(R"("choices":[],"usage":{"prompt_tokens":10,"completion_tokens":1,"cost":)" + usd(charge_for(10, 1)) +
                 "}") != std::string::npos);
  RequestCtx declined = ctx_for(openai_dialect(), wire::Endpoint::chat_completions, true);
  declined.req.usage_declined = true;
  got = relay(declined, events);
  CHECK(got.find("usage") == std::string::npos);
  CHECK(got.find("finish_reason") != std::string::npos);
  CHECK(declined.out.usage->completion_tokens == 1);  // still billed from it
}

TEST_CASE("chat stream that ends without usage: the held finish chunk still goes out, in order", "[dialect]") {
  RequestCtx ctx = ctx_for(openai_dialect(), wire::Endpoint::chat_completions, true);
  std::string got = relay(ctx, {R"(data: {"id":"g","choices":[{"delta":{"content":"x"},"finish_reason":"length"}]})" "\n\n"});
  CHECK(got == R"(data: {"id":"g","choices":[{"delta":{"content":"x"},"finish_reason":"length"}]})" "\n\n");
  CHECK(ctx.out.finish_reason == "length");
}

TEST_CASE("images: usage and the number of images are metered, cost rewritten", "[dialect]") {
  RequestCtx ctx = ctx_for(openai_dialect(), wire::Endpoint::images_generations);
  std::string body = R"({"created":1,"data":[{"b64_json":"AA=="},{"b64_json":"AA=="}],)"
                     R"("usage":{"input_tokens":3,"input_tokens_details":{"text_tokens":3},"output_tokens":2112,"cost":0.5}})";
  openai_dialect().read_response(body, ctx);
  REQUIRE(ctx.out.usage);
  CHECK(ctx.out.usage->images == 2);
  CHECK(ctx.out.usage->prompt_tokens == 3);
  CHECK(ctx.out.usage->completion_tokens == 2112);
  CHECK(ctx.out.usage->image_tokens == 2112);
  CHECK(body.find("\"cost\":0.5") == std::string::npos);
  CHECK(body.find("\"cost\":" + usd(quote(ctx))) != std::string::npos);
}

TEST_CASE("Responses API: usage from the response object and from response.completed", "[dialect]") {
  const Dialect& d = responses_dialect();
  RequestCtx json = ctx_for(d, wire::Endpoint::responses);
  std::string body = R"({"id":"resp_1","object":"response","status":"completed","output":[],)"
                     R"("usage":{"input_tokens":100,"input_tokens_details":{"cached_tokens":40},"output_tokens":20,)"
                     R"("output_tokens_details":{"reasoning_tokens":5},"total_tokens":120,"cost":0.77,"cost_details":{"upstream_inference_cost":0.7}}})";
  d.read_response(body, json);
  REQUIRE(json.out.usage);
  CHECK(json.out.usage->prompt_tokens == 100);
  CHECK(json.out.usage->cached_tokens == 40);
  CHECK(json.out.usage->completion_tokens == 20);
  CHECK(json.out.usage->reasoning_tokens == 5);
  CHECK(json.out.generation_id == "resp_1");
  CHECK(json.out.finish_reason == "completed");
  CHECK(body.find("0.77") == std::string::npos);
  CHECK(body.find("cost_details") == std::string::npos);
  CHECK(body.find("\"cost\":" + usd(charge_for(100, 20, 40))) != std::string::npos);

  RequestCtx s = ctx_for(d, wire::Endpoint::responses, true);
  SseBatch batch;
  std::string got = relay(s, {
      "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_2\",\"status\":\"in_progress\",\"usage\":null}}\n\n",
      "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hel\"}\n\n",
      "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"\"}\n\n",
      "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"lo\"}\n\n",
      "event: response.incomplete\ndata: {\"type\":\"response.incomplete\",\"response\":{\"id\":\"resp_2\",\"status\":\"incomplete\","
      "\"incomplete_details\":{\"reason\":\"max_output_tokens\"},\"usage\":{\"input_tokens\":7,\"output_tokens\":2,\"cost\":0.31}}}\n\n"},
      &batch);
  CHECK(batch.output_ends.size() == 2);  // the empty delta is not output
  CHECK(s.out.generation_id == "resp_2");
  CHECK(s.out.finish_reason == "incomplete:max_output_tokens");
  REQUIRE(s.out.usage);
  CHECK(s.out.usage->prompt_tokens == 7);
  CHECK(got.find("0.31") == std::string::npos);
  CHECK(got.find("event: response.incomplete\ndata: ") != std::string::npos);
  CHECK(got.find("\"cost\":" + usd(charge_for(7, 2))) != std::string::npos);
}

TEST_CASE("Responses API: failures pass through, flagged, without the upstream's key or cost", "[dialect]") {
  const Dialect& d = responses_dialect();
  RequestCtx s = ctx_for(d, wire::Endpoint::responses, true);
  std::string got = relay(s, {"event: response.failed\ndata: {\"type\":\"response.failed\",\"response\":{\"status\":\"failed\","
                              "\"error\":{\"code\":\"server_error\",\"message\":\"key sk-or-v1-UPSTREAMSECRET\"},\"usage\":{\"cost\":1}}}\n\n"});
  CHECK(s.out.midstream_error);
  CHECK(got.find("UPSTREAMSECRET") == std::string::npos);
  CHECK(got.find("cost") == std::string::npos);
  CHECK(got.find("event: response.failed") == 0);
  // A stream tollgate cuts ends with the Responses API's own error event.
  std::string cut = d.stream_error_event(502, "lost", "upstream_error", "upstream_disconnected");
  CHECK(cut == "event: error\ndata: {\"type\":\"error\",\"code\":\"upstream_disconnected\",\"message\":\"lost\",\"param\":null}\n\n");
}

TEST_CASE("Messages API: input, cache writes and cache reads make the prompt; deltas are cumulative", "[dialect]") {
  const Dialect& d = messages_dialect();
  RequestCtx json = ctx_for(d, wire::Endpoint::messages);
  std::string body = R"({"id":"msg_1","type":"message","stop_reason":"end_turn","usage":{"input_tokens":5,)"
                     R"("cache_creation_input_tokens":7,"cache_read_input_tokens":11,"output_tokens":3}})";
  d.read_response(body, json);
  REQUIRE(json.out.usage);
  CHECK(json.out.usage->prompt_tokens == 23);
  CHECK(json.out.usage->cached_tokens == 11);
  CHECK(json.out.usage->cache_write_tokens == 7);
  CHECK(json.out.finish_reason == "end_turn");
  CHECK(body.find("\"output_tokens\":3,\"cost\":" + usd(quote(json)) + "}") != std::string::npos);

  RequestCtx s = ctx_for(d, wire::Endpoint::messages, true);
  SseBatch batch;
  std::string got = relay(s, {
      "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_2\",\"usage\":{\"input_tokens\":5,"
      "\"cache_read_input_tokens\":11,\"output_tokens\":1,\"cost\":0.42}}}\n\n",
      "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}\n\n",
      "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"max_tokens\"},\"usage\":{\"output_tokens\":9}}\n\n",
      // Some upstreams repeat the input counts in the last delta: replaced, not added.
      "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"input_tokens\":5,\"cache_read_input_tokens\":11,\"output_tokens\":12}}\n\n",
      "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n"},
      &batch);
  REQUIRE(s.out.usage);
  CHECK(s.out.usage->prompt_tokens == 16);
  CHECK(s.out.usage->cached_tokens == 11);
  CHECK(s.out.usage->completion_tokens == 12);
  CHECK(s.out.generation_id == "msg_2");
  CHECK(s.out.finish_reason == "max_tokens");
  CHECK(batch.output_ends.size() == 1);
  CHECK(got.find("0.42") == std::string::npos);  // message_start: the upstream's cost removed, none added
  CHECK(got.find("\"output_tokens\":12,\"cost\":" + usd(charge_for(16, 12, 11)) + "}") != std::string::npos);
}

TEST_CASE("Messages API: a stream cut before its message_delta is billed as delivered, prompt as reported",
          "[dialect]") {
  RequestCtx s = ctx_for(messages_dialect(), wire::Endpoint::messages, true);
  SseBatch batch;
  relay(s, {"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":40,"
            "\"cache_read_input_tokens\":60,\"output_tokens\":1}}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"a\"}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"type\":\"text_delta\",\"text\":\"b\"}}\n\n"},
        &batch);
  CHECK_FALSE(s.out.usage);  // message_start's output_tokens (1) is not the final count
  CHECK(s.out.prompt_reported == 100);
  s.out.delivered_chunks = static_cast<std::int64_t>(batch.output_ends.size());
  s.out.upstream_aborted = true;
  Bill b = bill(s.out, 500, s.hold, *s.pricing, "m", false);
  CHECK(b.prompt_tokens == 100);
  CHECK(b.completion_tokens == 2);
  CHECK(b.status == "upstream_aborted");
}

TEST_CASE("Messages API: errors in Anthropic's shape and types", "[dialect]") {
  const Dialect& d = messages_dialect();
  CHECK(d.error_body(401, "bad key", "invalid_request_error", "invalid_api_key") ==
        R"({"type":"error","error":{"type":"authentication_error","message":"bad key"}})");
  CHECK(d.error_body(402, "x", "insufficient_quota", "c").find("\"billing_error\"") != std::string::npos);
  CHECK(d.error_body(429, "x", "requests", "c").find("\"rate_limit_error\"") != std::string::npos);
  CHECK(d.error_body(400, "x", "t", "c").find("\"invalid_request_error\"") != std::string::npos);
  CHECK(d.error_body(503, "x", "t", "c").find("\"overloaded_error\"") != std::string::npos);
  CHECK(d.error_body(504, "x", "t", "c").find("\"timeout_error\"") != std::string::npos);
  // Anthropic's own error keeps its type; OpenRouter's envelope is converted; the key never leaks.
  CHECK(d.upstream_error_body(529, R"({"type":"error","error":{"type":"overloaded_error","message":"busy sk-or-v1-UPSTREAMSECRET"}})",
                              "application/json", upstream_key) ==
        R"({"type":"error","error":{"type":"overloaded_error","message":"busy [redacted]"}})");
  CHECK(d.upstream_error_body(402, R"({"error":{"code":402,"message":"more credits"},"user_id":"u"})", "application/json",
                              upstream_key) == R"({"type":"error","error":{"type":"billing_error","message":"more credits"}})");
  CHECK(d.upstream_error_body(502, "<html>bad gateway</html>", "text/html", upstream_key).find("\"api_error\"") !=
        std::string::npos);
  auto names = d.passthrough_headers();
  CHECK(std::vector<std::string_view>(names.begin(), names.end()) ==
        std::vector<std::string_view>{"anthropic-version", "anthropic-beta"});
}

TEST_CASE("request bodies per endpoint: caps, n, required max_tokens", "[dialect][wire]") {
  wire::RequestError err;
  auto parse = [&](std::string body, wire::Endpoint ep) { return wire::parse_request(body, err, ep); };
  auto r = parse(R"({"model":"m","input":"x","max_output_tokens":77})", wire::Endpoint::responses);
  REQUIRE(r);
  CHECK(r->max_tokens == 77);
  CHECK_FALSE(parse(R"({"model":"m","max_output_tokens":0})", wire::Endpoint::responses));
  CHECK_FALSE(parse(R"({"model":"m","max_output_tokens":1,"max_output_tokens":2})", wire::Endpoint::responses));
  CHECK(wire::upstream_body(R"({"model":"m","input":"x"})", wire::Endpoint::responses, *parse(R"({"model":"m","input":"x"})", wire::Endpoint::responses), 512) ==
        R"({"max_output_tokens":512,"model":"m","input":"x"})");
  CHECK_FALSE(parse(R"({"model":"m","messages":[]})", wire::Endpoint::messages));
  CHECK(err.message == "max_tokens: Field required");
  auto m = parse(R"({"model":"m","max_tokens":9,"messages":[],"stream":true})", wire::Endpoint::messages);
  REQUIRE(m);
  CHECK(m->max_tokens == 9);
  CHECK(wire::upstream_body(R"({"model":"m","max_tokens":9,"stream":true})", wire::Endpoint::messages, *m, 512) ==
        R"({"model":"m","max_tokens":9,"stream":true})");  // Anthropic streams report usage: nothing added
  auto i = parse(R"({"model":"m","prompt":"fox","n":3})", wire::Endpoint::images_generations);
  REQUIRE(i);
  CHECK(i->n == 3);
  CHECK_FALSE(parse(R"({"model":"m","prompt":"fox","n":11})", wire::Endpoint::images_generations));
  CHECK_FALSE(parse(R"({"model":"m","prompt":"fox","n":0})", wire::Endpoint::images_generations));
  CHECK_FALSE(parse(R"({"model":"m","prompt":"fox","stream":true})", wire::Endpoint::images_generations));
  auto chat = parse(R"({"model":"m","stream":true,"stream_options":{"include_usage":false}})", wire::Endpoint::chat_completions);
  REQUIRE(chat);
  CHECK(chat->usage_declined);
}

TEST_CASE("with_charge: only the usage object changes, duplicates collapse, no marker escapes", "[dialect][wire]") {
  CHECK(wire::with_charge(R"({"a":{"cost":1},"usage":{"cost":2},"usage":{"x":1,"cost":3}})", {"usage"}, 1234) ==
        R"({"a":{"cost":1},"usage":{"x":1,"cost":0.001234}})");
  CHECK(wire::with_charge(R"({"usage":null})", {"usage"}, 1) == R"({"usage":null})");
  // One usage object: the rest of the document goes out byte for byte (numbers as written).
  CHECK(wire::with_charge(R"({"data":[0.012345678901234567890, 1e-7] , "usage" : {"prompt_tokens":3,"cost":9}, "z":1})",
                          {"usage"}, 42) ==
        R"({"data":[0.012345678901234567890, 1e-7] , "usage" : {"prompt_tokens":3,"cost":0.000042}, "z":1})");
  CHECK(wire::with_charge(R"({"r":{"id":"x","usage":{"cost_details":{"a":1}}}})", {"r", "usage"}, 0) ==
        R"({"r":{"id":"x","usage":{"cost":0.000000}}})");
  CHECK(wire::with_charge("not json", {"usage"}, 1) == "not json");
  CHECK(wire::with_charge(R"({"r":{"usage":{"costly":1}}})", {"r", "usage"}, std::nullopt) == R"({"r":{"usage":{}}})");
}
