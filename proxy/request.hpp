#pragma once
// The per-request context every phase reads and writes, what happened upstream, and the
// helpers that answer a client (OpenAI error shape, x-request-id and rate-limit headers).
#include "proxy/app.hpp"
#include "proxy/wire.hpp"
#include "ratelimit/admission.hpp"
#include "routing/route_table.hpp"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/status.hpp>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace tollgate {

namespace net = boost::asio;
namespace beast = boost::beast;
inline constexpr auto tuple_awaitable = net::as_tuple(net::use_awaitable);
inline constexpr std::chrono::seconds client_write_timeout{60};

/// Microseconds since the Unix epoch.
std::int64_t unix_now_us();
/// "req_" + 32 hex: 48 bits of Unix time in ms, then 80 random bits (CSPRNG-seeded): unique
/// across instances, and ordered by time (usage_logs.request_id).
std::string new_request_id();

/// What happened upstream (the serving attempt); bill() (proxy/record.hpp) is a pure function
/// of it. Part of RequestCtx.
struct Outcome {
  bool reached_upstream = false;  ///< the serving attempt's request was written upstream
  int status = 0;
  std::optional<wire::Usage> usage;
  /// The prompt tokens the upstream reported before its final usage (Anthropic's message_start):
  /// what a stream cut before that usage is billed as its prompt.
  std::optional<std::int64_t> prompt_reported;
  std::int64_t delivered_chunks = 0;  ///< SSE events with output whose bytes all reached the client's socket
  std::int64_t delivered_bytes = 0;   ///< a JSON (non-streamed) 2xx body that reached the client's socket
  bool undelivered_output = false;     ///< the client left before an event with output reached it
  bool client_aborted = false;
  bool upstream_aborted = false;
  bool midstream_error = false;
  bool client_started = false;     ///< response bytes were written to the client
  bool response_complete = false;  ///< the relayed response reached the client whole (keep-alive may go on)
  std::optional<std::string> generation_id, finish_reason;
};

/// One attempt on an upstream that did not serve the request (usage_logs.response_metadata
/// "attempts"): never billed.
struct FailedAttempt {
  std::string upstream;  ///< upstreams.name
  std::string_view outcome;  ///< connect_failed | timed_out | failed_before_head | status | circuit_open
  int status = 0;            ///< the upstream's status when outcome == "status"
};

struct EndpointRoute;
class Dialect;

/// Per-request context: every phase reads and writes it (proxy/phase.hpp).
struct RequestCtx {
  std::string request_id = new_request_id();
  std::int64_t started_us = unix_now_us();
  // Routing of the client's request (proxy/endpoints.hpp): its endpoint row and API dialect.
  const EndpointRoute* route = nullptr;
  const Dialect* dialect = nullptr;  ///< never null once routed (OpenAI's before)
  wire::Endpoint endpoint = wire::Endpoint::chat_completions;
  std::string_view upstream_path;  ///< e.g. "/chat/completions" (appended to the upstream's base path)
  std::string path_param;          ///< what follows a prefix row's path, percent-decoded (a model id)
  // The client's connection.
  bool client_keep_alive = true;   ///< the client allows another request on this connection
  bool client_http10 = false;      ///< an HTTP/1.0 request: no chunked coding in the response
  std::string client_accept;
  /// Request header lines passed to the upstream as they came ("name: value\r\n" each;
  /// Dialect::passthrough_headers()).
  std::string passthrough;
  // Phase 2: authenticate.
  keys::KeyCache::Record key;
  pricing::PricingSnapshotPtr pricing;
  const pricing::ModelPrice* price = nullptr;
  bool cost_from_upstream = false;  ///< billing.cost_source = "upstream" (bill())
  // Phase 3: the body.
  std::string body;
  wire::ParsedRequest req;
  // Phase 4: admit.
  std::int64_t default_cap = 0;                    ///< max_tokens sent when the client sets none
  /// The worst case held at admission (credit units): the most the request is ever charged.
  pricing::Micros hold = 0;
  std::optional<ratelimit::Admission> admission;  ///< set when Redis admitted the request
  /// Sent on every response once known (OpenAI's x-ratelimit-* headers, Retry-After).
  std::vector<std::pair<std::string, std::string>> headers;
  // Phase 5: forward.
  routing::RouteTablePtr routes;            ///< the route table this request uses, start to end
  routing::Candidates candidates;           ///< the upstreams to try, in order (route_model)
  std::string upstream;                     ///< the serving upstream's name (usage_logs.upstream)
  std::vector<FailedAttempt> failed_attempts;
  Outcome out;
};

/// Counts a response status in the metrics.
void count_status(App& app, int status);

/// The head of any response to the client (proxy/http_head): status line, Content-Type
/// (Cache-Control: no-cache too when chunked), x-request-id, ctx.headers (rate limits), then
/// x-generation-id and Retry-After when given, Content-Length (none: chunked) and Connection.
std::string response_head(int status, std::string_view content_type, const RequestCtx& ctx,
                          std::optional<std::size_t> content_length, bool keep_alive,
                          const std::optional<std::string>& generation_id = std::nullopt,
                          std::string_view retry_after = {}, bool chunked = true);

/// A reply tollgate makes itself, not the upstream's: an error in the caller's dialect, or a
/// small JSON document (the model list).
struct LocalReply {
  int status = 200;
  std::string body;
  /// The request's body was not (or not wholly) read: after the reply, stop sending and discard
  /// what the client still sends (bounded) before closing, so that it reads the reply instead
  /// of a reset (RFC 9112 §9.6).
  bool drain = false;
};

/// Writes a local reply (Content-Type application/json, x-request-id, ctx.headers, Retry-After
/// from ctx.headers, Connection as `keep_alive` says) and counts its status. Returns whether the
/// write succeeded. The one writer of local replies; session.cpp decides `keep_alive`.
net::awaitable<bool> write_reply(beast::tcp_stream& client, App& app, const RequestCtx& ctx, const LocalReply& r,
                                 bool keep_alive);

/// After answering 413 without reading the body: stop sending, then read and discard what the
/// client is still sending (at most 64 MiB or 5 s) so that it reads our answer instead of a
/// connection reset (RFC 9112 §9.6).
net::awaitable<void> drain_and_close(beast::tcp_stream& client);

}  // namespace tollgate
