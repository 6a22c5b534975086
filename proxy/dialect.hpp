#pragma once
// The API-dialect seam: everything on the request path that depends on which API the client
// speaks. Today one dialect, OpenAI's (chat completions, completions, embeddings: OpenAI API
// reference, with OpenRouter's additions in ../shared/reference/WIRE.md); the Responses and
// Anthropic Messages APIs plug in here as further dialects, each an endpoint row's choice
// (proxy/endpoints.hpp).
#include "proxy/wire.hpp"

#include <cstdint>
#include <optional>
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

class Dialect {
 public:
  virtual ~Dialect() = default;
  /// "openai": for logs and request metadata.
  virtual std::string_view name() const = 0;

  /// Reads the fields billing needs from the client's body (may pad `body` in place). nullopt:
  /// `err` holds the 400 to answer.
  virtual std::optional<wire::ParsedRequest> parse_request(std::string& body, wire::Endpoint ep,
                                                           wire::RequestError& err) const = 0;
  /// The body sent upstream: usage reporting asked for, the completion cap `default_cap`
  /// (tokens) set where the client set none, and the model renamed to `upstream_model` (empty:
  /// as asked).
  virtual std::string upstream_body(const RequestCtx& ctx, std::string_view upstream_model) const = 0;

  /// Reads usage, generation id and finish reason from a complete 2xx JSON response into `out`.
  virtual void read_response(std::string_view body, Outcome& out) const = 0;
  /// One complete SSE event of a 2xx stream: records what billing learns from it in `out`, and
  /// appends what the client gets to `batch` — the event as it came, the upstream's error event
  /// in this dialect's envelope without `upstream_key`, or nothing (the usage event tollgate
  /// asked for and the client did not).
  virtual void relay_event(std::string_view event, const RequestCtx& ctx, std::string_view upstream_key,
                           Outcome& out, SseBatch& batch) const = 0;

  /// A local error's body (OpenAI: {"error":{"message","type","param","code"}}).
  virtual std::string error_body(int status, std::string_view message, std::string_view type,
                                 std::string_view code) const = 0;
  /// An upstream's error response (any status, any content type) in this dialect's envelope,
  /// without `upstream_key` or the upstream's cost.
  virtual std::string upstream_error_body(int status, std::string_view body, std::string_view content_type,
                                          std::string_view upstream_key) const = 0;
};

/// OpenAI's API (chat completions, completions, embeddings), as OpenRouter serves it.
const Dialect& openai_dialect();

}  // namespace tollgate
