// tollgate-stub: OpenRouter-compatible request decoding and response rendering.
//
// Everything here is transport-agnostic (no Boost.Beast/Asio), so the heavy HTTP
// translation unit stays small. All response bodies are rendered with fmt into
// caller-owned, reusable memory buffers.
#pragma once

#include <cstddef>
#include <cstdint>
#include <iterator>
#include <memory>
#include <string>
#include <string_view>

#include <fmt/format.h>

namespace tollgate::stub {

using Buffer = fmt::memory_buffer;

/// Endpoints recognised by the stub. API paths match on their suffix, so
/// `/chat/completions`, `/v1/chat/completions` and `/api/v1/chat/completions` are equivalent.
enum class Endpoint {
    chat,         ///< POST .../chat/completions (OpenAI chat completions, OpenRouter usage)
    completions,  ///< POST .../completions (legacy text completions)
    embeddings,   ///< POST .../embeddings
    responses,    ///< POST .../responses (OpenAI Responses API)
    messages,     ///< POST .../messages (Anthropic Messages API)
    images,       ///< POST .../images/generations (OpenAI Images API)
    models,
    stub_last,
    stub_reset,
    not_found
};

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

/// A validated generation request (any generation endpoint).
struct Plan {
    Endpoint endpoint = Endpoint::not_found;
    bool stream = false;
    std::string model_json;              ///< model as an escaped JSON string literal, quotes included
    bool catalogued = false;              ///< model is in the built-in catalogue (has prices)
    std::uint64_t prompt_tokens = 0;      ///< uncached prompt tokens (from the request text)
    std::uint64_t cached_tokens = 0;      ///< `stub_cached_tokens`: prompt tokens read from cache
    std::uint64_t cache_write_tokens = 0; ///< `stub_cache_write_tokens`: prompt tokens written to cache
    std::uint64_t completion_tokens = 0;  ///< number of content chunks actually produced
    std::uint64_t reasoning_tokens = 0;   ///< `stub_reasoning_tokens` (capped), on top of the chunks
    bool truncated = false;               ///< capped by max_tokens -> finish_reason "length"
    std::int64_t max_output = -1;         ///< the request's output cap, -1 when absent
    std::uint64_t cost_pico = 0;          ///< usage.cost in 1e-12 USD
    std::uint64_t inputs = 0;             ///< embeddings: number of input strings; images: n
    std::uint64_t image_tokens = 0;       ///< images: output tokens per image; chat: image output tokens
    bool image_url = false;               ///< images: response_format "url" instead of b64_json
    bool omit_usage = false;              ///< images: `stub_no_usage` (no `usage` object)
    std::string size;                     ///< images: requested size (default "1024x1024")
    bool midstream_error_event = false;   ///< responses: `stub_midstream_event:"error"`
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

/// Anthropic's error `type` for an HTTP status (401 authentication_error, 429 rate_limit_error, ...).
std::string_view anthropic_error_type(int status);

/// {"type":"error","error":{"type":anthropic_error_type(status),"message":M}}
void render_anthropic_error(Buffer& out, int status, std::string_view message);

/// The error body in the endpoint's dialect: Anthropic's shape for `messages`, else render_error.
void render_error_for(Buffer& out, Endpoint endpoint, int status, std::string_view message);

/// The body of a `status:NNN` failure: `stub_error_body` as is, else {"error":<stub_error>} (for
/// messages {"type":"error","error":<stub_error>}), else render_error_for(status, "stub failure").
/// Returns its Content-Type.
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

// ---- typed SSE streams (Responses API, Anthropic Messages) ----------------------------
// A typed stream is: prologue events, one event per content chunk, epilogue events. Each
// render_typed_* call appends exactly one `event: <type>\ndata: {...}\n\n` event.

/// Events before the first content event: responses 4 (response.created, response.in_progress,
/// response.output_item.added, response.content_part.added); messages 3 (message_start,
/// content_block_start, ping).
std::size_t typed_prologue_events(const Plan& plan);
void render_typed_prologue(Buffer& out, const Plan& plan, std::size_t i);

/// Content chunk `index`: response.output_text.delta / content_block_delta (text_delta).
void render_typed_content(Buffer& out, const Plan& plan, std::uint64_t index);

/// Events after the last content event: responses 4 (response.output_text.done,
/// response.content_part.done, response.output_item.done, response.completed or
/// response.incomplete); messages 3 (content_block_stop, message_delta, message_stop).
std::size_t typed_epilogue_events(const Plan& plan);
void render_typed_epilogue(Buffer& out, const Plan& plan, std::size_t i);

/// The mid-stream failure event after `sent` content events: responses `response.failed` (or an
/// `error` event with `stub_midstream_event:"error"`), messages an Anthropic `error` event.
void render_typed_error(Buffer& out, const Plan& plan, std::uint64_t sent);

/// Non-streaming Responses API `response` object.
void render_response(Buffer& out, const Plan& plan);

/// Non-streaming Anthropic `message` object.
void render_message(Buffer& out, const Plan& plan);

/// Images API body: `created`, `data` (n × b64_json or url), and `usage`.
void render_images(Buffer& out, const Plan& plan);

/// The base64 PNG every generated image carries (1×1 pixel).
inline constexpr std::string_view kStubImageB64 =
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";

/// GET /models body (rendered once at startup by the server).
std::string render_models();

/// Request headers recorded by /__stub/last (besides Authorization), lower-case names.
inline constexpr std::string_view kRecordedHeaders[] = {"x-api-key", "anthropic-version", "anthropic-beta"};
inline constexpr std::size_t kRecordedHeaderCount = std::size(kRecordedHeaders);

/// A recorded header: value and whether it was present at all.
struct RecordedHeader {
    bool present = false;
    std::string value;
};

/// GET /__stub/last body; `headers` holds the present ones of kRecordedHeaders, in order.
void render_last(Buffer& out, std::string_view method, std::string_view target,
                 std::string_view authorization, const RecordedHeader (&headers)[kRecordedHeaderCount],
                 std::string_view body, std::uint64_t requests);

}  // namespace tollgate::stub
