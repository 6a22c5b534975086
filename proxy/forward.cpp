#include "proxy/forward.hpp"

#include "proxy/accept_backoff.hpp"
#include "proxy/http_head.hpp"

#include <boost/asio/write.hpp>
#include <boost/beast/core/buffers_suffix.hpp>
#include <boost/beast/http.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <array>
#include <memory>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

namespace tollgate {
namespace http = beast::http;
using net::awaitable;

namespace {

/// Writes `buffers` to the client right away when the socket takes them all (the usual case: a
/// few hundred bytes into a drained socket buffer), sparing an event-loop round trip per SSE
/// event; the rest, if any, goes out with async_write under the stream's write timeout. Returns
/// the error and how many bytes reached the socket (all of them when there is no error; on a
/// partial write, the prefix that did).
template <class Buffers>
awaitable<std::pair<beast::error_code, std::size_t>> write_now(beast::tcp_stream& client, const Buffers& buffers) {
  auto& sock = client.socket();
  beast::error_code ec;
  if (!sock.non_blocking()) sock.non_blocking(true, ec);  // once per connection
  std::size_t n = ec ? 0 : sock.write_some(buffers, ec);
  if (!ec && n == beast::buffer_bytes(buffers)) co_return std::pair{ec, n};
  if (ec && ec != net::error::would_block && ec != net::error::try_again) co_return std::pair{ec, n};
  beast::buffers_suffix<Buffers> rest(buffers);
  rest.consume(n);
  auto [wec, wn] = co_await net::async_write(client, rest, tuple_awaitable);
  co_return std::pair{wec, n + wn};
}

/// Whether the client has closed its end (its FIN or RST arrived): a non-blocking one-byte
/// MSG_PEEK (0.26 µs measured: a recv(2) on an idle loopback socket). A write after the client
/// left still succeeds once (the kernel takes the bytes; the client's RST fails the next write),
/// so without this check the event written after an abort would count as delivered. Waiting
/// bytes (a pipelined next request) mean the client is still there. Like nginx's test for a
/// client that closed early, this takes a half-close (the client shut down its sending side) for
/// leaving.
bool client_gone(beast::tcp_stream& client) {
  auto& sock = client.socket();
  beast::error_code ec;
  if (!sock.non_blocking()) sock.non_blocking(true, ec);
  if (ec) return false;  // cannot peek without blocking: the write will tell
  char byte;
  sock.receive(net::buffer(&byte, 1), net::socket_base::message_peek, ec);
  return ec && ec != net::error::would_block && ec != net::error::try_again;  // eof, reset
}

/// Watches the client while the upstream streams: when the client leaves (its FIN
/// or RST arrives), the upstream connection is closed at once, so a slow or stalled upstream
/// stops generating (and costing) instead of running on to its idle timeout (the fault suite's
/// hostile stall: 2 s and more). One wait on the client socket for the whole exchange; bytes from
/// the client that are not a close (a pipelined request) end the watch.
class ClientWatch {
 public:
  ClientWatch(beast::tcp_stream& client, beast::tcp_stream& upstream)
      : client_(client), state_(std::make_shared<State>(&upstream)) {
    client_.socket().async_wait(net::socket_base::wait_read, [state = state_, &client](const beast::error_code& ec) {
      if (ec || !state->upstream || !client_gone(client)) return;
      state->client_left = true;
      beast::error_code ignored;
      state->upstream->socket().close(ignored);  // pending upstream reads and writes fail now
    });
  }
  ~ClientWatch() {
    state_->upstream = nullptr;  // the handler, if it still runs, touches nothing
    beast::error_code ignored;
    client_.socket().cancel(ignored);  // no other operation is pending on the client here
  }
  ClientWatch(const ClientWatch&) = delete;
  ClientWatch& operator=(const ClientWatch&) = delete;
  bool client_left() const { return state_->client_left; }

 private:
  struct State {
    explicit State(beast::tcp_stream* up) : upstream(up) {}
    beast::tcp_stream* upstream;
    bool client_left = false;
  };
  beast::tcp_stream& client_;
  std::shared_ptr<State> state_;
};

/// Runs the bytes already in `upbuf` through the parser, without I/O, while its body buffer has
/// room. Beast's read_some stops at each chunk boundary; without this, SSE events that arrived in
/// one read (an upstream's headers, a comment and the first token, say) would go to the client in
/// as many writes, each waking it.
template <class Parser>
beast::error_code parse_buffered(Parser& p, beast::flat_buffer& upbuf) {
  beast::error_code ec;
  while (!p.is_done() && upbuf.size() > 0 && p.get().body().size > 0) {
    std::size_t used = p.put(upbuf.data(), ec);
    upbuf.consume(used);
    if (ec == http::error::need_more || ec == http::error::need_buffer) return {};
    if (ec || used == 0) break;
  }
  return ec;
}

/// The SSE bytes of one relay step, and where in them each event that carries output ends.
struct Batch {
  std::string bytes;
  std::vector<std::size_t> output_ends;
  void clear() {
    bytes.clear();
    output_ends.clear();
  }
};

/// Decides, per SSE event, what billing learns from it and what the client gets: the event as it
/// came, the upstream's error event in OpenAI's envelope, or nothing (the usage chunk the client
/// did not ask for). Appends it to `batch`, marking where it ends when it carries output.
void relay_event(std::string_view ev, const RequestCtx& ctx, std::string_view upstream_key, Outcome& out,
                 Batch& batch) {
  std::string data = wire::event_data(ev);
  if (data.empty() || data == "[DONE]") {  // comments (": OPENROUTER PROCESSING"), end
    batch.bytes.append(ev);
    return;
  }
  bool maybe_usage = data.find("\"usage\"") != std::string::npos && data.find("\"usage\":null") == std::string::npos;
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

/// Sends `head` (our response head, or nothing) and then `batch` as one HTTP chunk, unless the
/// client has already left. Counts in out.delivered_chunks each output event whose bytes all
/// reached the client's socket, so a partial write counts only the events before the break.
/// Returns false when the client is gone: then out.client_aborted is set, and
/// out.undelivered_output when an event with output did not get through.
awaitable<bool> send_batch(beast::tcp_stream& client, std::string_view head, const Batch& batch, Outcome& out) {
  char size_line[20];
  std::size_t size_len = 0;
  if (!batch.bytes.empty())
    size_len = static_cast<std::size_t>(
        fmt::format_to_n(size_line, sizeof size_line, "{:x}\r\n", batch.bytes.size()).out - size_line);
  std::array<net::const_buffer, 4> message{net::buffer(head), net::buffer(size_line, size_len),
                                           net::buffer(batch.bytes),
                                           net::buffer("\r\n", batch.bytes.empty() ? 0 : 2)};
  beast::error_code ec = net::error::eof;
  std::size_t written = 0;
  if (!client_gone(client)) {
    client.expires_after(client_write_timeout);
    std::tie(ec, written) = co_await write_now(client, message);
  }
  std::size_t offset = head.size() + size_len;  // where batch.bytes starts in what was written
  std::size_t delivered = 0;
  for (std::size_t end : batch.output_ends)
    if (offset + end <= written) ++delivered;
  out.delivered_chunks += static_cast<std::int64_t>(delivered);
  if (!ec) co_return true;
  out.client_aborted = true;  // the upstream connection is dropped: generation stops
  if (delivered < batch.output_ends.size()) out.undelivered_output = true;
  co_return false;
}

/// Why a stream ended before the upstream finished it.
enum class StreamCut { none, lost, idle, event_too_large, shutdown };

/// The error event's data for a cut stream (OpenAI's envelope, as OpenRouter's mid-stream
/// errors are relayed).
std::string cut_error_body(StreamCut cut) {
  switch (cut) {
    case StreamCut::idle:
      return wire::error_body("The upstream sent nothing for too long; the stream was cut.", "upstream_error",
                              "upstream_timeout");
    case StreamCut::event_too_large:
      return wire::error_body("The upstream sent an event larger than this gateway accepts; the stream was cut.",
                              "upstream_error", "upstream_event_too_large");
    case StreamCut::shutdown:
      return wire::error_body("The gateway is restarting; the stream was cut. What was delivered is billed.",
                              "service_unavailable", "server_shutting_down");
    default:
      return wire::error_body("The upstream connection was lost mid-stream.", "upstream_error",
                              "upstream_disconnected");
  }
}

template <class Stream>
awaitable<beast::error_code> exchange(Stream& up, beast::flat_buffer& upbuf, beast::tcp_stream& client,
                                      const std::string& fixed_fields, App& app, RequestCtx& ctx, Outcome& out,
                                      bool& upstream_reusable) {
  const Config& cfg = app.cfg;
  upstream_reusable = false;
  std::string body = wire::upstream_body(ctx.body, ctx.endpoint, ctx.req, ctx.default_cap);
  std::string head;
  head.reserve(128 + fixed_fields.size());
  http_head::request_line(head, "POST", cfg.upstream.base_path, ctx.upstream_path);
  head += fixed_fields;  // Host, Authorization, Content-Type, User-Agent
  http_head::field(head, "Accept", ctx.client_accept.empty() ? "application/json" : ctx.client_accept);
  http_head::finish(head, body.size(), true);

  beast::get_lowest_layer(up).expires_after(cfg.upstream_response_timeout);
  // Exactly once across crashes: marked sent before the first byte goes upstream (the intent
  // was journaled at admission, and is ended once the usage record is journaled).
  app.intents.sent(ctx.request_id);
  std::array<net::const_buffer, 2> request{net::buffer(head), net::buffer(body)};
  auto [send_ec, sent] = co_await net::async_write(up, request, tuple_awaitable);
  if (send_ec) co_return send_ec;
  out.reached_upstream = true;

  http::response_parser<http::empty_body> hp;
  hp.header_limit(64 * 1024);
  auto [head_ec, head_n] = co_await http::async_read_header(up, upbuf, hp, tuple_awaitable);
  if (head_ec) co_return head_ec;
  out.status = hp.get().result_int();
  std::string content_type(hp.get()[http::field::content_type]);
  std::string generation_id(hp.get()["x-generation-id"]);
  if (!generation_id.empty()) out.generation_id = generation_id;

  bool error_status = out.status < 200 || out.status > 299;
  if (error_status || content_type.rfind("text/event-stream", 0) != 0) {
    // A complete body: a non-streaming response, or an upstream error (whatever its type).
    http::response_parser<http::string_body> sp{std::move(hp)};
    sp.body_limit(cfg.upstream_max_response_bytes);
    auto [body_ec, body_n] = co_await http::async_read(up, upbuf, sp, tuple_awaitable);
    if (body_ec) co_return body_ec;
    auto& res = sp.get();
    int client_status = out.status;
    if (!error_status) {
      if (auto info = wire::inspect_json(res.body())) {
        out.usage = info->usage;
        out.finish_reason = info->finish_reason;
        if (!out.generation_id) out.generation_id = info->generation_id;
      }
    } else {
      // The upstream's status (a 1xx or 3xx means nothing to the client: 502), its Retry-After,
      // and its error in OpenAI's envelope without the operator's key or the upstream's cost.
      ++app.metrics.upstream_errors;
      if (out.status < 400 || out.status > 599) client_status = 502;
      res.body() = wire::upstream_error_body(out.status, res.body(), content_type, cfg.upstream_key);
      content_type = "application/json";
    }
    upstream_reusable = res.keep_alive();
    std::string to_client =
        response_head(client_status, content_type.empty() ? "application/json" : content_type, ctx,
                      res.body().size(), ctx.client_keep_alive, out.generation_id, res[http::field::retry_after]);
    count_status(app, client_status);
    client.expires_after(client_write_timeout);
    out.client_started = true;
    std::array<net::const_buffer, 2> reply{net::buffer(to_client), net::buffer(res.body())};
    auto [reply_ec, reply_n] = co_await net::async_write(client, reply, tuple_awaitable);
    if (reply_ec) out.client_aborted = true;
    else if (!error_status) out.delivered_bytes = static_cast<std::int64_t>(res.body().size());
    co_return beast::error_code{};
  }

  // Server-sent events: each event goes to the client as soon as it is complete. Our headers
  // go out at once, unless events came in with the upstream's headers: then they go together,
  // in one write (the client sees its first token one wake-up sooner).
  ++app.metrics.streams;
  http::response_parser<http::buffer_body> bp{std::move(hp)};
  std::string head_bytes = response_head(out.status, content_type, ctx, std::nullopt, ctx.client_keep_alive,
                                         out.generation_id);
  count_status(app, out.status);
  client.expires_after(client_write_timeout);
  out.client_started = true;
  bool head_sent = false;
  Batch batch;
  if (upbuf.size() == 0) {
    if (!co_await send_batch(client, head_bytes, batch, out)) co_return beast::error_code{};
    head_sent = true;
  }
  // A stream has no total size limit (a 100,000-token answer is ~14 MiB of SSE); one event is
  // limited to upstream_max_event_bytes.
  bp.body_limit(boost::none);
  wire::SseSplitter splitter;
  StreamCut cut = StreamCut::none;
  char buf[UpstreamConnection::read_size];
  auto journaled_at = std::chrono::steady_clock::now();
  std::int64_t journaled_delivered = 0;
  while (!bp.is_done()) {
    // The crash journal learns what was delivered at least once a second (recovery bills it).
    if (out.delivered_chunks != journaled_delivered) {
      if (auto now = std::chrono::steady_clock::now(); now - journaled_at >= std::chrono::seconds(1)) {
        app.intents.progress(ctx.request_id, out.delivered_chunks, out.usage ? out.usage->prompt_tokens : -1);
        journaled_at = now;
        journaled_delivered = out.delivered_chunks;
      }
    }
    bp.get().body().data = buf;
    bp.get().body().size = sizeof buf;
    beast::get_lowest_layer(up).expires_after(cfg.upstream_idle_timeout);
    auto [ec, n] = co_await http::async_read_some(up, upbuf, bp, tuple_awaitable);
    if (ec == http::error::need_buffer) ec = {};
    if (!ec) ec = parse_buffered(bp, upbuf);
    if (ec) {
      cut = app.stopping ? StreamCut::shutdown : ec == beast::error::timeout ? StreamCut::idle : StreamCut::lost;
      spdlog::warn("{}: upstream stream ended early: {}", ctx.request_id, ec.message());
      break;
    }
    std::size_t got = sizeof buf - bp.get().body().size;
    if (ctx.admission) ctx.admission->keep_alive();  // a live stream's hold does not expire
    batch.clear();
    splitter.feed(std::string_view(buf, got),
                  [&](std::string_view ev) { relay_event(ev, ctx, cfg.upstream_key, out, batch); });
    if (splitter.pending().size() > cfg.upstream_max_event_bytes) {
      cut = StreamCut::event_too_large;
      spdlog::warn("{}: upstream SSE event over {} bytes: stream cut", ctx.request_id, cfg.upstream_max_event_bytes);
    }
    if (!batch.bytes.empty() || !head_sent) {
      if (!co_await send_batch(client, head_sent ? std::string_view{} : head_bytes, batch, out))
        co_return beast::error_code{};
      head_sent = true;
    }
    if (cut != StreamCut::none) break;
  }
  batch.clear();
  if (cut == StreamCut::none) {
    // An unterminated last event is ended here, so it is relayed (and billed) as a whole event.
    if (!splitter.pending().empty())
      splitter.feed("\n\n", [&](std::string_view ev) { relay_event(ev, ctx, cfg.upstream_key, out, batch); });
  } else {
    // A cut stream ends with a well-formed error event; a half-received event is dropped, never
    // glued to it.
    out.upstream_aborted = true;
    batch.bytes += "data: ";
    batch.bytes += cut_error_body(cut);
    batch.bytes += "\n\n";
  }
  if ((!batch.bytes.empty() || !head_sent) &&
      !co_await send_batch(client, head_sent ? std::string_view{} : head_bytes, batch, out))
    co_return beast::error_code{};
  if (!out.client_aborted) {
    auto [wec, wn] = co_await net::async_write(client, http::make_chunk_last(), tuple_awaitable);
    if (wec) out.client_aborted = true;
  }
  upstream_reusable = !out.upstream_aborted && bp.is_done() && bp.get().keep_alive();
  co_return beast::error_code{};
}

}  // namespace

/// Phase 5 with connection management. A POST is never sent twice: a billing proxy must not
/// pay for a generation twice, so a failure after the request was written is a 502, not a
/// retry (the pool discards idle connections the upstream has already closed).
awaitable<bool> forward(beast::tcp_stream& client, App& app, UpstreamPool& pool, RequestCtx& ctx, Outcome& out) {
  std::unique_ptr<UpstreamConnection> conn;
  beast::error_code ec;
  try {
    conn = co_await pool.acquire();
  } catch (const boost::system::system_error& e) {
    ec = e.code();
  }
  bool reusable = false;
  if (conn) {
    auto registered = pool.in_use(*conn);  // a graceful stop's deadline can cut it
    // Streams only: a stream may run for minutes, and watching costs a wait and a cancel on the
    // client socket per request (~10 µs per request in bench/run.sh --quick at max throughput).
    std::optional<ClientWatch> watch;
    if (ctx.req.stream) watch.emplace(client, conn->lowest());
    ec = co_await std::visit(
        [&](auto& s) { return exchange(s, conn->buffer, client, pool.fixed_fields(), app, ctx, out, reusable); },
        conn->stream);
    if (watch && watch->client_left()) {
      out.client_aborted = true;
      reusable = false;
    }
  }
  if (!ec) {
    if (reusable) pool.release(std::move(conn));
    co_return !out.client_aborted && ctx.client_keep_alive;
  }
  out.upstream_aborted = out.reached_upstream;
  if (out.client_started || out.client_aborted) co_return false;  // half written, or nobody to answer
  if (!out.reached_upstream && out_of_descriptors(ec)) {
    // Our own limit (the open-file limit), not the upstream's fault: an honest 503.
    ++app.metrics.shed_overloaded;
    ctx.headers.emplace_back("retry-after", "1");
    co_return co_await reply_error(client, app, ctx, http::status::service_unavailable,
                                   "tollgate is out of connections; retry shortly.", "service_unavailable",
                                   "overloaded", ctx.client_keep_alive);
  }
  ++app.metrics.upstream_connect_failures;
  bool timeout = ec == beast::error::timeout;
  const char* what = timeout ? "The upstream did not answer in time."
                     : out.status ? "The upstream connection broke before the response was complete."
                                  : "The upstream could not be reached.";
  spdlog::warn("{}: upstream {}: {}", ctx.request_id, timeout ? "timed out" : "failed", ec.message());
  co_return co_await reply_error(client, app, ctx, timeout ? http::status::gateway_timeout : http::status::bad_gateway,
                                 what, "upstream_error", timeout ? "upstream_timeout" : "bad_gateway",
                                 ctx.client_keep_alive);
}

}  // namespace tollgate
