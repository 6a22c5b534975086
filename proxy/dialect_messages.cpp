// Anthropic's Messages API (POST /v1/messages), as Anthropic and OpenRouter serve it
// (reference/WIRE.md "Anthropic Messages API"; Anthropic API reference, "Errors" and
// "Streaming messages"): max_tokens is required; usage is `usage{input_tokens,
// cache_creation_input_tokens, cache_read_input_tokens, output_tokens}`, input_tokens not
// counting the cached parts. In a stream, message_start carries the input usage and each
// message_delta the cumulative output_tokens (and, from some upstreams, the input counts again:
// replaced, never added). Errors are Anthropic's: {"type":"error","error":{"type","message"}}.
#include "proxy/dialect.hpp"

#include "proxy/record.hpp"
#include "proxy/request.hpp"
#include "proxy/wire_usage.hpp"

#include <boost/json.hpp>
#include <fmt/format.h>

#include <array>

namespace tollgate {
namespace {

/// Anthropic's error type for an HTTP status (Anthropic API reference, "HTTP errors").
std::string_view anthropic_error_type(int status) {
  switch (status) {
    case 400: return "invalid_request_error";
    case 401: return "authentication_error";
    case 402: return "billing_error";
    case 403: return "permission_error";
    case 404: return "not_found_error";
    case 413: return "request_too_large";
    case 429: return "rate_limit_error";
    case 503:
    case 529: return "overloaded_error";
    case 504: return "timeout_error";
    default: return status >= 400 && status < 500 ? "invalid_request_error" : "api_error";
  }
}

std::string anthropic_error(std::string_view type, std::string_view message) {
  return fmt::format(R"({{"type":"error","error":{{"type":{},"message":{}}}}})", wire::json_string(type),
                     wire::json_string(message));
}

/// Whether a content_block_delta carries output: a non-empty text, thinking or partial_json.
bool delta_has_output(std::string_view data) {
  for (std::string_view k : {std::string_view(R"("text":")"), std::string_view(R"("partial_json":")"),
                             std::string_view(R"("thinking":")")}) {
    if (auto p = data.find(k); p != std::string_view::npos && p + k.size() < data.size() && data[p + k.size()] != '"')
      return true;
  }
  for (std::string_view k : {"text", "partial_json", "thinking"}) {
    auto s = wire::string_at(data, {"delta", k});
    if (s && !s->empty()) return true;
  }
  return false;
}

class MessagesDialect final : public Dialect {
 public:
  std::string_view name() const override { return "anthropic"; }

  std::span<const std::string_view> passthrough_headers() const override {
    static constexpr std::array<std::string_view, 2> names{"anthropic-version", "anthropic-beta"};
    return names;
  }

  void read_response(std::string& body, RequestCtx& ctx) const override {
    Outcome& out = ctx.out;
    if (!out.generation_id) out.generation_id = wire::string_at(body, {"id"});
    if (auto stop = wire::string_at(body, {"stop_reason"})) out.finish_reason = std::move(stop);
    wire::Usage u;
    if (!wire::usage_at(body, {"usage"}, wire::UsageNames::anthropic, u)) return;
    out.usage = u;
    body = wire::with_charge(body, {"usage"}, quote(ctx));
  }

  void relay_event(std::string_view ev, RequestCtx& ctx, std::string_view upstream_key, StreamState& st,
                   SseBatch& batch) const override {
    Outcome& out = ctx.out;
    std::string data = wire::event_data(ev);
    if (data.empty()) {
      batch.bytes.append(ev);
      return;
    }
    std::string type = wire::event_type(ev, data);
    if (type == "content_block_delta") {
      batch.bytes.append(ev);
      if (delta_has_output(data)) batch.output_ends.push_back(batch.bytes.size());
      return;
    }
    auto relay = [&](std::string_view rewritten) {
      batch.bytes.append("event: ").append(type).append("\ndata: ").append(rewritten).append("\n\n");
    };
    if (type == "message_start") {
      if (!out.generation_id) out.generation_id = wire::string_at(data, {"message", "id"});
      wire::Usage u;
      if (wire::usage_at(data, {"message", "usage"}, wire::UsageNames::anthropic, u)) {
        st.partial_usage = u;
        if (!u.implausible) out.prompt_reported = u.prompt_tokens;
      }
      // The charge is known at the last message_delta; no cost of the upstream's goes out before.
      relay(wire::with_charge(data, {"message", "usage"}, std::nullopt));
    } else if (type == "message_delta") {
      if (auto stop = wire::string_at(data, {"delta", "stop_reason"})) out.finish_reason = std::move(stop);
      wire::Usage u = st.partial_usage.value_or(wire::Usage{});
      if (wire::usage_at(data, {"usage"}, wire::UsageNames::anthropic, u)) {
        st.partial_usage = u;
        out.usage = u;
        relay(wire::with_charge(data, {"usage"}, quote(ctx)));
      } else {
        batch.bytes.append(ev);
      }
    } else if (type == "error") {
      out.midstream_error = true;
      relay(wire::scrubbed(data, upstream_key));
    } else {
      batch.bytes.append(ev);
    }
  }

  /// Anthropic's shape; the type follows the status (`type` and `code` are OpenAI's names).
  std::string error_body(int status, std::string_view message, std::string_view, std::string_view) const override {
    return anthropic_error(anthropic_error_type(status), message);
  }

  std::string stream_error_event(int status, std::string_view message, std::string_view type,
                                 std::string_view code) const override {
    return "event: error\ndata: " + error_body(status, message, type, code) + "\n\n";
  }

  /// Anthropic's own error ({"type":"error","error":{…}}) keeps its type; any other (OpenRouter's
  /// envelope, text, HTML) gets the type of its status and the message OpenAI's reading finds.
  std::string upstream_error_body(int status, std::string_view body, std::string_view content_type,
                                  std::string_view upstream_key) const override {
    std::string clean = wire::scrubbed(body, upstream_key);
    if (wire::string_at(clean, {"type"}) == "error") {
      auto type = wire::string_at(clean, {"error", "type"});
      auto message = wire::string_at(clean, {"error", "message"});
      if (type && message) return anthropic_error(*type, *message);
    }
    std::string openai = wire::upstream_error_body(status, body, content_type, upstream_key);
    return anthropic_error(anthropic_error_type(status),
                           wire::string_at(openai, {"error", "message"}).value_or("The upstream failed."));
  }
};

}  // namespace

const Dialect& messages_dialect() {
  static const MessagesDialect d;
  return d;
}

}  // namespace tollgate
