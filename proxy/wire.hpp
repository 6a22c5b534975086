#pragma once
// OpenAI / OpenRouter wire formats tollgate reads and writes (shared/reference/WIRE.md):
// the request fields it needs, the `usage` object, SSE event framing, and the error envelope.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace tollgate::wire {

/// The endpoints tollgate serves (OpenAI paths under /v1).
enum class Endpoint { chat_completions, completions, embeddings };

/// Fields of an OpenAI request body that phases 3-5 need (OpenAI chat/completions/embeddings).
struct ParsedRequest {
  std::string model;
  bool stream = false;
  std::optional<std::int64_t> max_tokens;  ///< max_tokens, else max_completion_tokens
  bool max_tokens_null = false;     ///< `"max_tokens": null` was sent (upstream_body replaces it)
  bool has_stream_options = false;  ///< `stream_options` was sent (an object or null)
  bool include_usage = false;  ///< the client asked for the usage chunk (stream_options)
};

/// A request the proxy refuses: HTTP status + OpenAI error fields.
struct RequestError {
  int status;
  std::string message;
  std::string code;
};

/// Parses and validates a request body with simdjson (the whole document must be valid JSON;
/// the fields above may appear once each). `body` is copied into a padded buffer only when its
/// capacity lacks simdjson's padding. Returns the fields or a 400 error.
std::optional<ParsedRequest> parse_request(std::string& body, RequestError& err);

/// The body to send upstream: the client's body with, where absent,
/// `"stream_options":{"include_usage":true}` (streams) and `"max_tokens":<default_cap>`
/// (chat/completions), so usage is always reported and the worst case is bounded.
std::string upstream_body(std::string_view body, Endpoint ep, const ParsedRequest& req,
                          std::int64_t default_max_tokens);

/// OpenAI/OpenRouter `usage` object (OpenRouter adds `cost`, USD).
struct Usage {
  std::int64_t prompt_tokens = 0;
  std::int64_t completion_tokens = 0;
  std::optional<std::string> cost_usd;  ///< the number's JSON text, exact (parse_decimal it)
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

/// Cheap check (no parse) whether a chunk carries visible output (non-empty delta content,
/// text or tool call): used to estimate tokens delivered when a stream ends without usage.
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

/// The `data:` payload of an event (multi-line data joined with '\n'); empty for comments.
std::string event_data(std::string_view event);

/// OpenAI error envelope: {"error":{"message":…,"type":…,"param":null,"code":…}}.
std::string error_body(std::string_view message, std::string_view type, std::string_view code);

}  // namespace tollgate::wire
