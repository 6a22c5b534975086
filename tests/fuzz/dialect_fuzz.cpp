// Fuzz target: what an upstream sends back, through each API dialect (proxy/dialect*.cpp) as
// the request path relays and bills it: a 2xx JSON body (Dialect::read_response) or an SSE
// stream split into events (Dialect::relay_event, end_stream).
//
// Input: byte 0 picks the dialect and endpoint (bits 0-2: chat, chat stream without
// stream_options, responses, messages, images, chat stream with include_usage) and whether the
// rest is a stream (bit 3); the rest is the body or stream.
//
// Invariants: nothing throws; the usage read is in range (usage_checks.hpp); the charge quoted
// (and written as usage.cost) never exceeds the hold; an error event is never relayed with the
// upstream's key in it; a relayed stream holds every byte of the events it did not rewrite.
#include "proxy/dialect.hpp"
#include "proxy/record.hpp"
#include "proxy/request.hpp"
#include "tests/fuzz/fuzz_check.hpp"
#include "tests/fuzz/usage_checks.hpp"

#include <cstdint>
#include <string>
#include <string_view>

namespace {
using namespace tollgate;

constexpr std::string_view key = "sk-or-v1-FUZZKEY";

RequestCtx make_ctx(std::uint8_t pick) {
  static const auto prices = [] {
    pricing::ModelPrice p;
    p.prompt_per_token = 1'000'000;
    p.completion_per_token = 2'000'000;
    p.cache_read_per_token = 100'000;
    std::unordered_map<std::string, pricing::ModelPrice> m{{"m", p}};
    return std::make_shared<const pricing::PricingSnapshot>(std::move(m),
                                                             std::vector<pricing::PricingRule>{{"*", 5000, 0, 0}});
  }();
  RequestCtx ctx;
  ctx.pricing = prices;
  ctx.req.model = "m";
  ctx.hold = 50'000;
  ctx.out.status = 200;
  ctx.out.reached_upstream = true;
  switch (pick % 6) {
    case 0: ctx.dialect = &openai_dialect(); ctx.endpoint = wire::Endpoint::chat_completions; break;
    case 1: ctx.dialect = &openai_dialect(); ctx.endpoint = wire::Endpoint::chat_completions; ctx.req.stream = true; break;
    case 2: ctx.dialect = &responses_dialect(); ctx.endpoint = wire::Endpoint::responses; break;
    case 3: ctx.dialect = &messages_dialect(); ctx.endpoint = wire::Endpoint::messages; break;
    case 4: ctx.dialect = &openai_dialect(); ctx.endpoint = wire::Endpoint::images_generations; break;
    default:
      ctx.dialect = &openai_dialect();
      ctx.endpoint = wire::Endpoint::chat_completions;
      ctx.req.stream = ctx.req.include_usage = true;
  }
  return ctx;
}

void check_outcome(const RequestCtx& ctx) {
  if (ctx.out.usage) fuzz::check_chunk_info(wire::ChunkInfo{ctx.out.usage});
  pricing::Micros q = quote(ctx);
  FUZZ_CHECK(q >= 0 && q <= ctx.hold);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  RequestCtx ctx = make_ctx(data[0]);
  const bool stream = data[0] & 8;
  std::string body(reinterpret_cast<const char*>(data + 1), size - 1);
  if (!stream) {
    ctx.dialect->read_response(body, ctx);
    check_outcome(ctx);
    return 0;
  }
  wire::SseSplitter splitter;
  StreamState st;
  SseBatch batch;
  std::size_t events = 0;
  splitter.feed(body, [&](std::string_view ev) {
    ++events;
    std::size_t before = batch.bytes.size();
    const bool was_error = ctx.out.midstream_error, held = !st.held_event.empty();
    ctx.dialect->relay_event(ev, ctx, key, st, batch);
    // The event that reports the upstream's error goes out without the upstream's key.
    if (!was_error && ctx.out.midstream_error && !held) FUZZ_CHECK(batch.bytes.find(key, before) == std::string::npos);
    check_outcome(ctx);
  });
  ctx.dialect->end_stream(ctx, st, batch);
  FUZZ_CHECK(st.held_event.empty());
  for (std::size_t end : batch.output_ends) FUZZ_CHECK(end <= batch.bytes.size());
  check_outcome(ctx);
  return 0;
}
