// OpenAI's Responses API (POST /v1/responses), as OpenAI and OpenRouter serve it
// (reference/WIRE.md "OpenAI Responses API"): the request's cap is max_output_tokens; usage is
// `usage{input_tokens, input_tokens_details.cached_tokens, output_tokens,
// output_tokens_details.reasoning_tokens}` on the response object, which in a stream arrives in
// the `response.completed` (or `response.incomplete`) event. Every typed event is relayed as it
// came, except that usage carries the customer's charge as its cost; errors are OpenAI's.
#include "proxy/dialect.hpp"

#include "proxy/record.hpp"
#include "proxy/request.hpp"
#include "proxy/wire_usage.hpp"

#include <fmt/format.h>

namespace tollgate {
namespace {

/// Whether a `*.delta` event's `delta` string is non-empty: output delivered (text, refusal,
/// reasoning text, function-call arguments).
bool delta_has_output(std::string_view data) {
  constexpr std::string_view compact = R"("delta":")";
  if (auto p = data.find(compact); p != std::string_view::npos && p + compact.size() < data.size())
    return data[p + compact.size()] != '"';
  auto delta = wire::string_at(data, {"delta"});
  return delta && !delta->empty();
}

/// Events whose delta is output the client is billed for when the stream breaks off (one token
/// each, as chat chunks are counted).
bool output_event(std::string_view type) {
  return type == "response.output_text.delta" || type == "response.refusal.delta" ||
         type == "response.reasoning_text.delta" || type == "response.reasoning_summary_text.delta" ||
         type == "response.function_call_arguments.delta" || type == "response.custom_tool_call_input.delta";
}

/// Reads what a response object (a JSON body, or an event's `response`) says into `out`.
void read_response_object(std::string_view doc, std::initializer_list<std::string_view> at, Outcome& out) {
  std::string_view prefix = at.size() ? *at.begin() : std::string_view{};
  auto field = [&](std::string_view name) {
    return prefix.empty() ? wire::string_at(doc, {name}) : wire::string_at(doc, {prefix, name});
  };
  if (!out.generation_id)
    if (auto id = field("id")) out.generation_id = std::move(id);
  if (auto status = field("status"); status && *status != "in_progress" && *status != "queued") {
    auto reason = prefix.empty() ? wire::string_at(doc, {"incomplete_details", "reason"})
                                 : wire::string_at(doc, {prefix, "incomplete_details", "reason"});
    out.finish_reason = reason ? *status + ":" + *reason : *status;
  }
  wire::Usage u;
  bool have = prefix.empty() ? wire::usage_at(doc, {"usage"}, wire::UsageNames::responses, u)
                             : wire::usage_at(doc, {prefix, "usage"}, wire::UsageNames::responses, u);
  if (have) out.usage = u;
}

class ResponsesDialect final : public Dialect {
 public:
  std::string_view name() const override { return "responses"; }

  void read_response(std::string& body, RequestCtx& ctx) const override {
    read_response_object(body, {}, ctx.out);
    if (ctx.out.usage) body = wire::with_charge(body, {"usage"}, quote(ctx));
  }

  void relay_event(std::string_view ev, RequestCtx& ctx, std::string_view upstream_key, StreamState&,
                   SseBatch& batch) const override {
    Outcome& out = ctx.out;
    std::string data = wire::event_data(ev);
    if (data.empty()) {  // comments, keep-alives
      batch.bytes.append(ev);
      return;
    }
    std::string type = wire::event_type(ev, data);
    if (output_event(type)) {
      batch.bytes.append(ev);
      if (delta_has_output(data)) batch.output_ends.push_back(batch.bytes.size());
      return;
    }
    auto relay = [&](std::string_view rewritten) {
      if (!type.empty()) batch.bytes.append("event: ").append(type).append("\n");
      batch.bytes.append("data: ").append(rewritten).append("\n\n");
    };
    if (type == "response.completed" || type == "response.incomplete") {
      read_response_object(data, {"response"}, out);
      relay(wire::with_charge(data, {"response", "usage"}, quote(ctx)));
    } else if (type == "response.failed" || type == "error") {
      // Relayed as they came (the client's SDK knows them), without the upstream's key or cost.
      out.midstream_error = true;
      if (type == "response.failed") read_response_object(data, {"response"}, out);
      relay(wire::scrubbed(data, upstream_key));
    } else {
      if (type == "response.created" && !out.generation_id) out.generation_id = wire::string_at(data, {"response", "id"});
      batch.bytes.append(ev);
    }
  }

  /// The Responses API's `error` event: {"type":"error","code","message","param"}.
  std::string stream_error_event(int, std::string_view message, std::string_view,
                                 std::string_view code) const override {
    return fmt::format("event: error\ndata: {{\"type\":\"error\",\"code\":{},\"message\":{},\"param\":null}}\n\n",
                       wire::json_string(code), wire::json_string(message));
  }
};

}  // namespace

const Dialect& responses_dialect() {
  static const ResponsesDialect d;
  return d;
}

}  // namespace tollgate
