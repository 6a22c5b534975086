#pragma once
// The API-dialect seam: everything on the request path that depends on which API the client
// speaks. Three dialects: OpenAI's (chat completions, completions, embeddings, images: OpenAI
// API reference, with OpenRouter's additions in ../shared/reference/WIRE.md), OpenAI's
// Responses API, and Anthropic's Messages API; each an endpoint row's choice
// (proxy/endpoints.hpp).
#include "proxy/wire.hpp"

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace tollgate {

struct RequestCtx;
struct Outcome;

/// The SSE bytes of one relay step, and where in them each event that carries output ends
/// (billing counts an output event as delivered only when all its bytes reached the client).
struct SseBatch {
  std::string bytes;
  std::vector<std::size_t> output_ends;
  void clear() {
    bytes.clear();
    output_ends.clear();
  }
};

/// What a dialect remembers between the events of one stream (proxy/relay.cpp owns it).
struct StreamState {
  /// OpenAI chat: the chunk with finish_reason, held until the usage chunk comes so that the
  /// usage rides on it (clients that did not ask for the usage chunk); empty when none.
  std::string held_event;
  bool held_has_output = false;
  /// Anthropic: the usage of message_start, completed by each message_delta. It becomes
  /// ctx.out.usage only with a message_delta: a stream cut before one is billed for what was
  /// delivered (message_start's output_tokens is a placeholder), its prompt as reported.
  std::optional<wire::Usage> partial_usage;
};

class Dialect {
 public:
  virtual ~Dialect() = default;
  /// "openai": for logs and request metadata.
  virtual std::string_view name() const = 0;

  /// Reads the fields billing needs from the client's body (may pad `body` in place). nullopt:
  /// `err` holds the 400 to answer. By default wire::parse_request for the endpoint.
  virtual std::optional<wire::ParsedRequest> parse_request(std::string& body, wire::Endpoint ep,
                                                           wire::RequestError& err) const;
  /// The body sent upstream: usage reporting asked for, the completion cap `default_cap`
  /// (tokens) set where the client set none, and the model renamed to `upstream_model` (empty:
  /// as asked). wire::upstream_body, which knows each endpoint's fields.
  std::string upstream_body(const RequestCtx& ctx, std::string_view upstream_model) const;

  /// Request headers of the client's passed to the upstream as they are (Anthropic's
  /// anthropic-version and anthropic-beta), lower-case names.
  virtual std::span<const std::string_view> passthrough_headers() const { return {}; }

  /// A complete 2xx JSON response: reads usage, generation id and finish reason into ctx.out,
  /// and rewrites `body` for the client: its usage's `cost` becomes the request's charge
  /// (quote(), proxy/record.hpp) and the upstream's cost members go.
  virtual void read_response(std::string& body, RequestCtx& ctx) const = 0;
  /// One complete SSE event of a 2xx stream: records what billing learns from it in ctx.out,
  /// and appends what the client gets to `batch` — the event as it came, its usage with the
  /// charge instead of the upstream's cost, the upstream's error event in this dialect's
  /// envelope without `upstream_key` or costs, or nothing (an event held in `st`, or the usage
  /// event tollgate asked for and the client did not).
  virtual void relay_event(std::string_view event, RequestCtx& ctx, std::string_view upstream_key, StreamState& st,
                           SseBatch& batch) const = 0;
  /// The stream ended (completely or cut): appends whatever `st` still holds to `batch`.
  virtual void end_stream(RequestCtx&, StreamState& st, SseBatch& batch) const {
    if (st.held_event.empty()) return;
    batch.bytes += st.held_event;
    if (st.held_has_output) batch.output_ends.push_back(batch.bytes.size());
    st.held_event.clear();
  }

  /// A local error's body; by default OpenAI's {"error":{"message","type","param","code"}}.
  virtual std::string error_body(int status, std::string_view message, std::string_view type,
                                 std::string_view code) const;
  /// The SSE event that ends a stream tollgate cuts (the upstream lost or stalled, a graceful
  /// stop): OpenAI's is `data: <error_body>`.
  virtual std::string stream_error_event(int status, std::string_view message, std::string_view type,
                                         std::string_view code) const {
    return "data: " + error_body(status, message, type, code) + "\n\n";
  }
  /// An upstream's error response (any status, any content type) in this dialect's envelope,
  /// without `upstream_key` or the upstream's cost; by default OpenAI's (wire::upstream_error_body).
  virtual std::string upstream_error_body(int status, std::string_view body, std::string_view content_type,
                                          std::string_view upstream_key) const;
};

/// OpenAI's API (chat completions, completions, embeddings, images), as OpenRouter serves it.
const Dialect& openai_dialect();
/// OpenAI's Responses API (POST /v1/responses): typed SSE events.
const Dialect& responses_dialect();
/// Anthropic's Messages API (POST /v1/messages): its error shape and typed SSE events.
const Dialect& messages_dialect();

}  // namespace tollgate
