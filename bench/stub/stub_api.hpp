// tollgate-stub: OpenRouter-compatible request decoding and response rendering.
//
// Everything here is transport-agnostic (no Boost.Beast/Asio), so the heavy HTTP
// translation unit stays small. All response bodies are rendered with fmt into
// caller-owned, reusable memory buffers.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include <fmt/format.h>

namespace tollgate::stub {

using Buffer = fmt::memory_buffer;

/// Endpoints recognised by the stub. API paths match on their suffix, so
/// `/chat/completions`, `/v1/chat/completions` and `/api/v1/chat/completions` are equivalent.
enum class Endpoint { chat, completions, embeddings, models, stub_last, stub_reset, not_found };

/// Maps an HTTP method and request target (query string allowed) to an endpoint.
Endpoint route(std::string_view method, std::string_view target);

/// Failure-injection modes (see README.md).
enum class FailMode { none, status, midstream, drop, drop_midstream };

struct Failure {
    FailMode mode = FailMode::none;
    int status = 0;  ///< HTTP status for FailMode::status
};

/// Parses "status:NNN" | "midstream" | "drop" | "drop_midstream". Returns false if invalid.
bool parse_failure(std::string_view text, Failure& out);

/// Server-wide defaults that requests may override with `stub_*` body fields.
struct Defaults {
    std::int64_t chunks = 8;
    std::int64_t chunk_interval_ms = 0;
    std::int64_t latency_ms = 0;
};

/// A validated generation request (chat, legacy completion or embeddings).
struct Plan {
    Endpoint endpoint = Endpoint::not_found;
    bool stream = false;
    std::string model_json;              ///< model as an escaped JSON string literal, quotes included
    std::uint64_t prompt_tokens = 0;
    std::uint64_t completion_tokens = 0;  ///< number of content chunks actually produced
    bool truncated = false;               ///< capped by max_tokens -> finish_reason "length"
    std::uint64_t cost_pico = 0;          ///< usage.cost in 1e-12 USD
    std::uint64_t inputs = 0;             ///< embeddings: number of input strings
    std::int64_t chunk_interval_ms = 0;
    std::int64_t latency_ms = 0;
    Failure fail;                         ///< per-request `stub_fail` (mode none when absent)
    std::string retry_after;              ///< `stub_retry_after`: Retry-After of a status failure
    std::string error_json;               ///< `stub_error`: the `error` value (minified JSON) to send
    bool has_error_body = false;          ///< `stub_error_body` was given
    std::string error_body;               ///< `stub_error_body`: a status failure's whole body
    std::string error_content_type;       ///< `stub_error_content_type` (default text/plain)
    std::uint64_t gen = 0;                ///< generation counter; id is "gen-<gen>"
    std::int64_t created = 0;             ///< unix seconds
};

/// Decodes request bodies with a reusable simdjson parser (one per connection).
class RequestDecoder {
public:
    RequestDecoder();
    ~RequestDecoder();
    RequestDecoder(const RequestDecoder&) = delete;
    RequestDecoder& operator=(const RequestDecoder&) = delete;

    /// Fills `out` from `body`. On failure returns a non-empty message for a 400 response.
    /// `body` may get extra capacity reserved (simdjson padding); its contents are unchanged.
    std::string decode(Endpoint endpoint, std::string& body, const Defaults& defaults, Plan& out);

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

// ---- rendering -------------------------------------------------------------------------

/// Appends `s` as a JSON string literal (quotes included); invalid UTF-8 bytes become \u00XX.
void append_json_string(Buffer& out, std::string_view s);

/// Appends a non-negative amount given in 1e-12 units as an exact decimal ("0", "0.0000123").
void append_decimal_pico(Buffer& out, std::uint64_t pico);

/// {"error":{"code":C,"message":M}}
void render_error(Buffer& out, int code, std::string_view message);

/// The body of a `status:NNN` failure: `stub_error_body` as is, else {"error":<stub_error>}, else
/// render_error(status, "stub failure"). Returns its Content-Type.
std::string_view render_status_failure(Buffer& out, const Plan& plan, int status);

/// Non-streaming chat.completion / text_completion body.
void render_completion(Buffer& out, const Plan& plan);

/// Embeddings list body.
void render_embeddings(Buffer& out, const Plan& plan);

/// SSE event (`data: {...}\n\n`) carrying content chunk `index` (< plan.completion_tokens).
void render_stream_content(Buffer& out, const Plan& plan, std::uint64_t index);

/// SSE event with an empty delta and the finish reason.
void render_stream_finish(Buffer& out, const Plan& plan);

/// SSE event with `"choices":[]` and the usage object.
void render_stream_usage(Buffer& out, const Plan& plan);

/// SSE event carrying the OpenRouter-style mid-stream error (its `error` is `stub_error` if given).
void render_stream_error(Buffer& out, const Plan& plan);

/// GET /models body (rendered once at startup by the server).
std::string render_models();

/// GET /__stub/last body.
void render_last(Buffer& out, std::string_view method, std::string_view target,
                 std::string_view authorization, std::string_view body, std::uint64_t requests);

}  // namespace tollgate::stub
