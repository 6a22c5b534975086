// OpenAI's API as OpenRouter serves it: chat completions, completions, embeddings and the
// Images API. Usage reaches the client with the customer's charge as its `cost`; a streaming
// client that did not ask for OpenAI's usage chunk gets the usage on the chunk that carries
// finish_reason instead (OpenRouter's convention, without breaking clients that read choices[0]
// of every chunk: README "Usage in streams").
#include "proxy/dialect.hpp"

#include "proxy/record.hpp"
#include "proxy/request.hpp"
#include "proxy/wire_usage.hpp"

#include <boost/json.hpp>

namespace tollgate {
namespace {

/// `chunk` (a chat chunk's data) with `usage_chunk`'s usage object on it, its cost the charge.
std::string chunk_with_usage(std::string_view chunk, std::string_view usage_chunk, pricing::Micros charge) {
  boost::json::error_code ec;
  boost::json::value c = boost::json::parse(boost::json::string_view(chunk.data(), chunk.size()), ec);
  auto usage = wire::json_at(usage_chunk, {"usage"});
  if (ec || !c.is_object() || !usage) return std::string(chunk);
  boost::json::value u = boost::json::parse(*usage, ec);
  if (ec) return std::string(chunk);
  c.as_object()["usage"] = std::move(u);
  return wire::with_charge(boost::json::serialize(c), {"usage"}, charge);
}

class OpenAiDialect final : public Dialect {
 public:
  std::string_view name() const override { return "openai"; }

  std::optional<wire::ParsedRequest> parse_request(std::string& body, wire::Endpoint ep,
                                                   wire::RequestError& err) const override {
    auto parsed = Dialect::parse_request(body, ep, err);
    if (parsed && ep == wire::Endpoint::embeddings && parsed->stream) {
      err = {400, "Embeddings cannot be streamed.", "invalid_value"};
      return std::nullopt;
    }
    return parsed;
  }

  void read_response(std::string& body, RequestCtx& ctx) const override {
    Outcome& out = ctx.out;
    if (ctx.endpoint == wire::Endpoint::images_generations) {
      // Images API: {"created","data":[…],"usage":{input_tokens,output_tokens,…}}.
      wire::Usage u;
      if (wire::usage_at(body, {"usage"}, wire::UsageNames::images, u)) out.usage = u;
      if (auto data = wire::json_at(body, {"data"})) {
        boost::json::error_code ec;
        auto images = boost::json::parse(*data, ec);
        if (!ec && images.is_array()) {
          if (!out.usage) out.usage = wire::Usage{};
          out.usage->images = std::min<std::int64_t>(static_cast<std::int64_t>(images.get_array().size()), 1000);
        }
      }
    } else if (auto info = wire::inspect_json(body)) {
      out.usage = info->usage;
      out.finish_reason = info->finish_reason;
      if (!out.generation_id) out.generation_id = info->generation_id;
    }
    if (out.usage) body = wire::with_charge(body, {"usage"}, quote(ctx));
  }

  void relay_event(std::string_view ev, RequestCtx& ctx, std::string_view upstream_key, StreamState& st,
                   SseBatch& batch) const override {
    Outcome& out = ctx.out;
    std::string data = wire::event_data(ev);
    if (data.empty() || data == "[DONE]") {  // comments (": OPENROUTER PROCESSING"), end
      if (data == "[DONE]") end_stream(ctx, st, batch);
      batch.bytes.append(ev);
      return;
    }
    bool maybe_usage =
        data.find("\"usage\"") != std::string::npos && data.find("\"usage\":null") == std::string::npos;
    bool maybe_error = data.find("\"error\"") != std::string::npos;
    bool finish = false;
    if (maybe_usage || maybe_error || !out.generation_id) {
      if (auto info = wire::inspect_json(data)) {
        if (info->generation_id && !out.generation_id) out.generation_id = info->generation_id;
        if (info->finish_reason) out.finish_reason = info->finish_reason;
        finish = info->finish_reason.has_value();
        if (info->usage) out.usage = info->usage;
        if (info->error) {
          out.midstream_error = true;
          end_stream(ctx, st, batch);
          if (auto rewritten = wire::upstream_error_event(data, upstream_key)) {
            batch.bytes.append("data: ").append(*rewritten).append("\n\n");
            if (wire::chunk_has_output(data)) batch.output_ends.push_back(batch.bytes.size());
            return;
          }
        }
        if (info->usage) {
          pricing::Micros charge = quote(ctx);
          if (info->usage_only && !ctx.req.include_usage) {
            // The usage chunk tollgate asked for and the client did not: its usage rides on the
            // held finish_reason chunk, or goes (a client that reads choices[0] would break on it).
            if (!st.held_event.empty()) {
              std::string held_data = wire::event_data(st.held_event);
              st.held_event = "data: " + chunk_with_usage(held_data, data, charge) + "\n\n";
              end_stream(ctx, st, batch);
            }
            return;
          }
          end_stream(ctx, st, batch);
          batch.bytes.append("data: ").append(wire::with_charge(data, {"usage"}, charge)).append("\n\n");
          if (wire::chunk_has_output(data)) batch.output_ends.push_back(batch.bytes.size());
          return;
        }
      }
    } else if (auto fr = data.find("\"finish_reason\":\""); fr != std::string::npos) {
      auto start = fr + 17;
      out.finish_reason = data.substr(start, data.find('"', start) - start);
      finish = true;
    }
    end_stream(ctx, st, batch);  // what was held goes first: events keep their order
    if (finish && ctx.req.stream && !ctx.req.include_usage && !ctx.req.usage_declined &&
        ctx.endpoint != wire::Endpoint::embeddings) {
      st.held_event.assign(ev);
      st.held_has_output = wire::chunk_has_output(data);
      return;
    }
    batch.bytes.append(ev);
    if (wire::chunk_has_output(data)) batch.output_ends.push_back(batch.bytes.size());
  }

};

}  // namespace

std::optional<wire::ParsedRequest> Dialect::parse_request(std::string& body, wire::Endpoint ep,
                                                          wire::RequestError& err) const {
  return wire::parse_request(body, err, ep);
}

std::string Dialect::upstream_body(const RequestCtx& ctx, std::string_view upstream_model) const {
  return wire::upstream_body(ctx.body, ctx.endpoint, ctx.req, ctx.default_cap, upstream_model);
}

std::string Dialect::error_body(int, std::string_view message, std::string_view type, std::string_view code) const {
  return wire::error_body(message, type, code);
}

std::string Dialect::upstream_error_body(int status, std::string_view body, std::string_view content_type,
                                         std::string_view upstream_key) const {
  return wire::upstream_error_body(status, body, content_type, upstream_key);
}

const Dialect& openai_dialect() {
  static const OpenAiDialect d;
  return d;
}

}  // namespace tollgate
