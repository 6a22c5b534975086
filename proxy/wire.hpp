#pragma once
// OpenAI / OpenRouter wire formats tollgate reads and writes (shared/reference/WIRE.md):
// the request fields it needs, the `usage` object, SSE event framing, and the error envelope.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace tollgate::wire {

/// The endpoints tollgate proxies (paths under /v1): OpenAI's chat completions, completions,
/// embeddings, Responses API and Images API, and Anthropic's Messages API.
enum class Endpoint { chat_completions, completions, embeddings, responses, messages, images_generations };

/// Fields of a request body that phases 3-5 need.
struct ParsedRequest {
  std::string model;
  bool stream = false;
  /// The completion cap tollgate holds and the upstream gets (tokens): chat and completions'
  /// max_tokens / max_completion_tokens (the smaller when both are sent: upstream_body then
  /// sends it in both), the Responses API's max_output_tokens, Anthropic's max_tokens.
  std::optional<std::int64_t> max_tokens;
  std::optional<std::int64_t> max_tokens_field, max_completion_tokens_field;  ///< as the client sent them
  /// Both cap fields sent, with different values: the body is rewritten to hold the cap in both.
  bool caps_differ() const {
    return max_tokens_field && max_completion_tokens_field && *max_tokens_field != *max_completion_tokens_field;
  }
  bool max_tokens_null = false;     ///< `"max_tokens": null` was sent (upstream_body replaces it)
  bool has_stream_options = false;  ///< `stream_options` was sent (an object or null)
  bool include_usage = false;  ///< the client asked for the usage chunk (stream_options)
  /// The client sent `stream_options.include_usage: false`: it gets no usage in a stream
  /// (without stream_options, the usage rides on the finish_reason chunk: proxy/dialect.cpp).
  bool usage_declined = false;
  std::int64_t n = 1;          ///< images to generate (Images API), in [1, 10]
};

/// A request the proxy refuses: HTTP status + OpenAI error fields.
struct RequestError {
  int status;
  std::string message;
  std::string code;
};

/// Parses and validates a request body of endpoint `ep` with simdjson (the whole document must
/// be valid JSON). Per endpoint: the cap field(s) above; `stream_options` (chat, completions,
/// embeddings); `n` (images; a stream is refused there); Anthropic's required max_tokens (a
/// 400 "max_tokens: Field required" without it, as Anthropic answers). The fields read may appear once each: a repeated one (at the top level or in
/// stream_options) is a 400 `invalid_json`, since parsers disagree on which copy counts and the
/// upstream could serve another model or cap than tollgate billed. `body` is copied into a
/// padded buffer only when its capacity lacks simdjson's padding. Returns the fields or a 400.
std::optional<ParsedRequest> parse_request(std::string& body, RequestError& err,
                                          Endpoint ep = Endpoint::chat_completions);

/// The body to send upstream: the client's body with, where absent,
/// `"stream_options":{"include_usage":true}` (chat and completion streams) and the cap
/// (`"max_tokens":<default_cap>` for chat/completions, `max_output_tokens` for the Responses
/// API), so usage is always reported and the worst case is bounded; and `model`
/// set to `upstream_model` when that is non-empty and differs (a route's rename, e.g.
/// `openai/gpt-4o` → `gpt-4o` for OpenAI direct).
std::string upstream_body(std::string_view body, Endpoint ep, const ParsedRequest& req,
                          std::int64_t default_max_tokens, std::string_view upstream_model = {});

/// OpenAI/OpenRouter `usage` object (OpenRouter adds `cost`, USD), as billing takes it. An
/// upstream may send anything here, so inspect_json reads it defensively:
///  - a token count that is a JSON integer in [0, max_tokens] is taken as is; a number with a
///    fraction or exponent is rounded up (12.5 → 13, 1e3 → 1000: the upstream said at least
///    that much); a negative one counts 0 (nothing to bill for that part); one above max_tokens
///    (10^12, a 30-digit number) counts max_tokens; anything not a number counts as absent (0).
///    max_tokens is 10^9: 100× the largest context window sold today, and prompt + completion
///    still fits usage_logs' int4 `total_tokens`. The charge then saturates as pricing/money.hpp
///    says (capping it at the request's hold is a separate rule).
///  - `cost` is kept only when it is a JSON number in [0, max_request_picos] (USD 1,000,000);
///    a negative, non-numeric or larger one (a 30-digit `cost`) is not believed, and the request
///    is priced from its token counts, as with billing.cost_source = "prices".
///  - the detail counts billing prices apart (OpenRouter, reference/WIRE.md) are read by the
///    same rules: `prompt_tokens_details.cached_tokens` and `.cache_write_tokens` (parts of
///    prompt_tokens), `completion_tokens_details.reasoning_tokens` (a part of
///    completion_tokens: OpenRouter and OpenAI count reasoning inside completion_tokens). A
///    details object that is null or absent, or a count in it that is null, counts 0 (vLLM and
///    others send null for "none"). Parts larger than their whole (cached + cache_write >
///    prompt_tokens, reasoning > completion_tokens) make the usage implausible. OpenRouter
///    reports no count of web searches or image inputs: none is read.
struct Usage {
  static constexpr std::int64_t max_tokens = 1'000'000'000;
  std::int64_t prompt_tokens = 0;      ///< in [0, max_tokens]
  std::int64_t completion_tokens = 0;  ///< in [0, max_tokens]
  std::int64_t cached_tokens = 0;       ///< prompt tokens read from the cache, in [0, max_tokens]
  std::int64_t cache_write_tokens = 0;  ///< prompt tokens written to the cache, in [0, max_tokens]
  std::int64_t reasoning_tokens = 0;    ///< completion tokens spent reasoning, in [0, max_tokens]
  /// Completion tokens that are image output (`completion_tokens_details.image_tokens`, chat
  /// with modalities ["image","text"]; the Images API's output_tokens), in [0, max_tokens].
  std::int64_t image_tokens = 0;
  std::int64_t images = 0;  ///< images generated (the Images API's `data` entries), in [0, 1000]
  std::optional<std::string> cost_usd;  ///< the number's JSON text, exact (parse_decimal it)
  /// A token count that is not a number, negative or ≥ max_tokens, or a `cost` that is not
  /// believed: billing then treats the usage as missing (record.cpp, status usage_missing).
  bool implausible = false;
};

/// What one JSON response or stream chunk says that billing needs.
struct ChunkInfo {
  std::optional<Usage> usage;     ///< present and non-null `usage`
  bool usage_only = false;        ///< `choices: []` with usage (OpenAI's final usage chunk)
  bool error = false;             ///< top-level `error` (OpenRouter mid-stream error)
  std::optional<std::string> generation_id;  ///< `id`
  std::optional<std::string> finish_reason;
};

/// Reads usage/error/id from a complete JSON document (response body or chunk data). Of a
/// repeated key the last one counts, as for JavaScript's JSON.parse (the client's SDK) and most
/// parsers. nullopt if it is not a JSON object.
std::optional<ChunkInfo> inspect_json(std::string_view json);

/// Whether a chunk carries output (non-empty delta content, reasoning, text or tool call): used
/// to bill what was delivered when a stream ends without believable usage. Compact JSON is
/// matched without parsing; any other spelling that may hold output is parsed.
bool chunk_has_output(std::string_view data) noexcept;

/// Splits an SSE byte stream into events (terminated by a blank line; LF, CRLF or CR line
/// ends) across arbitrary chunk boundaries. Events are returned with their terminator so
/// they can be forwarded byte for byte. (WHATWG HTML, "Server-sent events" parsing.)
class SseSplitter {
 public:
  /// Appends bytes and calls `on_event(std::string_view event)` for each complete event.
  template <class F>
  void feed(std::string_view bytes, F&& on_event) {
    std::size_t start = 0;
    std::size_t base = buf_.size();
    buf_.append(bytes);
    for (std::size_t i = base; i < buf_.size(); ++i) {
      char c = buf_[i];
      if (after_cr_ && c == '\n') {  // second half of CRLF
        after_cr_ = false;
        if (event_just_ended_) {
          event_just_ended_ = false;
          on_event(std::string_view(buf_).substr(start, i + 1 - start));
          start = i + 1;
        }
        continue;
      }
      if (event_just_ended_) {  // a lone CR ended the event; this byte starts the next one
        event_just_ended_ = false;
        on_event(std::string_view(buf_).substr(start, i - start));
        start = i;
      }
      after_cr_ = c == '\r';
      if (c == '\n' || c == '\r') {
        if (line_empty_) {
          if (c == '\r') {  // wait for a possible LF so it stays with this event
            event_just_ended_ = true;
            continue;
          }
          on_event(std::string_view(buf_).substr(start, i + 1 - start));
          start = i + 1;
          continue;
        }
        line_empty_ = true;
      } else {
        line_empty_ = false;
      }
    }
    buf_.erase(0, start);
  }
  /// Bytes of an incomplete event held back (at most one event).
  std::string_view pending() const { return buf_; }

 private:
  std::string buf_;
  bool line_empty_ = true;  ///< at the start of a line (no characters on it yet)
  bool after_cr_ = false;
  bool event_just_ended_ = false;
};

/// Calls `f(value)` for each line of an SSE event that is the field `prefix` ("data:",
/// "event:"), in order, with the value after the prefix and its one optional space (WHATWG HTML,
/// "Server-sent events": field parsing; LF, CRLF or CR line ends).
template <class F>
void for_each_field(std::string_view ev, std::string_view prefix, F&& f) {
  while (!ev.empty()) {
    auto eol = ev.find_first_of("\r\n");
    std::string_view line = ev.substr(0, eol);
    if (line.substr(0, prefix.size()) == prefix) {
      line.remove_prefix(prefix.size());
      if (!line.empty() && line.front() == ' ') line.remove_prefix(1);
      f(line);
    }
    if (eol == std::string_view::npos) break;
    ev.remove_prefix(eol + 1);
  }
}

/// The `data:` payload of an event (multi-line data joined with '\n'); empty for comments.
std::string event_data(std::string_view event);

/// `s` as a JSON string literal, quotes included.
std::string json_string(std::string_view s);

/// OpenAI error envelope: {"error":{"message":…,"type":…,"param":null,"code":…}}.
std::string error_body(std::string_view message, std::string_view type, std::string_view code);

/// OpenAI-style `error.type` for an HTTP status, as tollgate names them: 400 (and any other 4xx)
/// invalid_request_error, 401 authentication_error, 402 insufficient_quota, 403
/// permission_denied, 404 not_found_error, 429 rate_limit_error; 5xx and anything else
/// upstream_error (the type of tollgate's own 502/504: the fault is upstream of the gateway).
std::string_view error_type_for_status(int status) noexcept;

/// An upstream's non-2xx response body in OpenAI's envelope
/// {"error":{"message","type","param","code"[,"metadata"]}} (reference/WIRE.md). Reads
/// OpenRouter's {"error":{"code":int,"message","metadata"}}, OpenAI's own envelope (kept as it
/// is), {"error":"text"} and {"message"|"detail":"text"}: the upstream's message, `type` (else
/// error_type_for_status), `param`, `code` (else the status, as OpenRouter's equals it) and
/// `metadata` are kept; everything else (top-level fields such as OpenRouter's `user_id`) is
/// dropped. An empty or non-JSON body (a load balancer's HTML page) gets a message saying so.
/// Never leaks: every occurrence of `upstream_key` (the operator's key) becomes "[redacted]" and
/// every member whose name contains "cost" is removed, at any depth.
std::string upstream_error_body(int status, std::string_view body, std::string_view content_type,
                                std::string_view upstream_key);

/// A mid-stream error event's data (OpenRouter: a chunk with a top-level `"error":{"code",
/// "message"[,"metadata"]}` and finish_reason "error") with its `error` member rewritten as
/// upstream_error_body's inner object (type from `code` when it is an HTTP status, else
/// upstream_error), redacted and with cost members removed alike; the rest of the chunk is kept.
/// nullopt when `data` is not a JSON object with a non-null `error`.
std::optional<std::string> upstream_error_event(std::string_view data, std::string_view upstream_key);

/// An upstream's JSON relayed as it is (a Responses or Messages API error event) without what
/// must not leave tollgate: every member whose name mentions "cost" is removed and every
/// occurrence of `upstream_key` becomes "[redacted]", at any depth. Not JSON: only redacted.
std::string scrubbed(std::string_view json, std::string_view upstream_key);

}  // namespace tollgate::wire
