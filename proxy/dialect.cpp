#include "proxy/dialect.hpp"

#include "proxy/request.hpp"

namespace tollgate {
namespace {

class OpenAiDialect final : public Dialect {
 public:
  std::string_view name() const override { return "openai"; }

  std::optional<wire::ParsedRequest> parse_request(std::string& body, wire::Endpoint ep,
                                                   wire::RequestError& err) const override {
    auto parsed = wire::parse_request(body, err);
    if (parsed && ep == wire::Endpoint::embeddings && parsed->stream) {
      err = {400, "Embeddings cannot be streamed.", "invalid_value"};
      return std::nullopt;
    }
    return parsed;
  }

  std::string upstream_body(const RequestCtx& ctx, std::string_view upstream_model) const override {
    return wire::upstream_body(ctx.body, ctx.endpoint, ctx.req, ctx.default_cap, upstream_model);
  }

  void read_response(std::string_view body, Outcome& out) const override {
    if (auto info = wire::inspect_json(body)) {
      out.usage = info->usage;
      out.finish_reason = info->finish_reason;
      if (!out.generation_id) out.generation_id = info->generation_id;
    }
  }

  void relay_event(std::string_view ev, const RequestCtx& ctx, std::string_view upstream_key, Outcome& out,
                   SseBatch& batch) const override {
    std::string data = wire::event_data(ev);
    if (data.empty() || data == "[DONE]") {  // comments (": OPENROUTER PROCESSING"), end
      batch.bytes.append(ev);
      return;
    }
    bool maybe_usage =
        data.find("\"usage\"") != std::string::npos && data.find("\"usage\":null") == std::string::npos;
    bool maybe_error = data.find("\"error\"") != std::string::npos;
    if (maybe_usage || maybe_error || !out.generation_id) {
      if (auto info = wire::inspect_json(data)) {
        if (info->generation_id && !out.generation_id) out.generation_id = info->generation_id;
        if (info->finish_reason) out.finish_reason = info->finish_reason;
        if (info->usage) out.usage = info->usage;
        if (info->error) {
          out.midstream_error = true;
          if (auto rewritten = wire::upstream_error_event(data, upstream_key)) {
            batch.bytes.append("data: ").append(*rewritten).append("\n\n");
            if (wire::chunk_has_output(data)) batch.output_ends.push_back(batch.bytes.size());
            return;
          }
        }
        // Strip what the client did not ask for: the usage-only chunk we requested.
        if (info->usage && info->usage_only && !ctx.req.include_usage) return;
      }
    } else if (auto fr = data.find("\"finish_reason\":\""); fr != std::string::npos) {
      auto start = fr + 17;
      out.finish_reason = data.substr(start, data.find('"', start) - start);
    }
    batch.bytes.append(ev);
    if (wire::chunk_has_output(data)) batch.output_ends.push_back(batch.bytes.size());
  }

  std::string error_body(int, std::string_view message, std::string_view type,
                         std::string_view code) const override {
    return wire::error_body(message, type, code);
  }

  std::string upstream_error_body(int status, std::string_view body, std::string_view content_type,
                                  std::string_view upstream_key) const override {
    return wire::upstream_error_body(status, body, content_type, upstream_key);
  }
};

}  // namespace

const Dialect& openai_dialect() {
  static const OpenAiDialect d;
  return d;
}

}  // namespace tollgate
