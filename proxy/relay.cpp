#include "proxy/relay.hpp"

#include <boost/asio/write.hpp>
#include <boost/beast/core/buffers_suffix.hpp>
#include <boost/beast/http.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <array>
#include <chrono>
#include <tuple>

namespace tollgate {
namespace http = beast::http;
using net::awaitable;

/// (The check, as relay.hpp says.) Whether the client has closed its end (its FIN or RST arrived): a non-blocking one-byte
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

/// Sends `head` (our response head, or nothing) and then `batch` as one HTTP chunk (as is for an
/// HTTP/1.0 client, whose body ends with the connection), unless the
/// client has already left. Counts in out.delivered_chunks each output event whose bytes all
/// reached the client's socket, so a partial write counts only the events before the break.
/// Returns false when the client is gone: then out.client_aborted is set, and
/// out.undelivered_output when an event with output did not get through.
awaitable<bool> send_batch(beast::tcp_stream& client, std::string_view head, const SseBatch& batch, Outcome& out,
                           bool chunked) {
  char size_line[20];
  std::size_t size_len = 0;
  if (!batch.bytes.empty() && chunked)
    size_len = static_cast<std::size_t>(
        fmt::format_to_n(size_line, sizeof size_line, "{:x}\r\n", batch.bytes.size()).out - size_line);
  std::array<net::const_buffer, 4> message{net::buffer(head), net::buffer(size_line, size_len),
                                           net::buffer(batch.bytes),
                                           net::buffer("\r\n", batch.bytes.empty() || !chunked ? 0 : 2)};
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

/// The error event that ends a cut stream, in the request's dialect (OpenAI's envelope, as
/// OpenRouter's mid-stream errors are relayed; the Responses and Messages APIs' error events).
std::string cut_error_event(const Dialect& d, StreamCut cut) {
  switch (cut) {
    case StreamCut::idle:
      return d.stream_error_event(502, "The upstream sent nothing for too long; the stream was cut.", "upstream_error",
                              "upstream_timeout");
    case StreamCut::event_too_large:
      return d.stream_error_event(502, "The upstream sent an event larger than this gateway accepts; the stream was cut.",
                              "upstream_error", "upstream_event_too_large");
    case StreamCut::shutdown:
      return d.stream_error_event(503, "The gateway is restarting; the stream was cut. What was delivered is billed.",
                              "service_unavailable", "server_shutting_down");
    default:
      return d.stream_error_event(502, "The upstream connection was lost mid-stream.", "upstream_error",
                              "upstream_disconnected");
  }
}

}  // namespace

template <class Stream>
awaitable<void> relay_stream(Stream& up, beast::flat_buffer& upbuf, http::response_parser<http::empty_body>& hp,
                             Pipe& p, RequestCtx& ctx, const routing::Upstream& u, std::string_view content_type,
                             bool& upstream_reusable) {
  App& app = p.app;
  const Config& cfg = app.cfg;
  Outcome& out = ctx.out;
  beast::tcp_stream& client = p.client;
  upstream_reusable = false;
  const std::string_view upstream_key = u.api_key ? std::string_view(u.api_key->reveal()) : std::string_view{};
  // Server-sent events: each event goes to the client as soon as it is complete. Our headers
  // go out at once, unless events came in with the upstream's headers: then they go together,
  // in one write (the client sees its first token one wake-up sooner).
  ++app.metrics.streams;
  http::response_parser<http::buffer_body> bp{std::move(hp)};
  // HTTP/1.0 has no chunked coding (RFC 9112 §6.1): its stream is delimited by the close.
  const bool chunked = !ctx.client_http10;
  if (!chunked) ctx.client_keep_alive = false;
  std::string head_bytes = response_head(out.status, content_type, ctx, std::nullopt, ctx.client_keep_alive,
                                         out.generation_id, {}, chunked);
  count_status(app, out.status);
  client.expires_after(client_write_timeout);
  out.client_started = true;
  bool head_sent = false;
  SseBatch batch;
  StreamState stream_state;
  if (upbuf.size() == 0) {
    if (!co_await send_batch(client, head_bytes, batch, out, chunked)) co_return;
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
        app.intents.progress(ctx.request_id, out.delivered_chunks,
                              out.usage ? out.usage->prompt_tokens : out.prompt_reported.value_or(-1));
        journaled_at = now;
        journaled_delivered = out.delivered_chunks;
      }
    }
    bp.get().body().data = buf;
    bp.get().body().size = sizeof buf;
    beast::get_lowest_layer(up).expires_after(u.idle_timeout);
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
                  [&](std::string_view ev) { ctx.dialect->relay_event(ev, ctx, upstream_key, stream_state, batch); });
    if (splitter.pending().size() > cfg.upstream_max_event_bytes) {
      cut = StreamCut::event_too_large;
      spdlog::warn("{}: upstream SSE event over {} bytes: stream cut", ctx.request_id, cfg.upstream_max_event_bytes);
    }
    if (!batch.bytes.empty() || !head_sent) {
      if (!co_await send_batch(client, head_sent ? std::string_view{} : head_bytes, batch, out, chunked))
        co_return;
      head_sent = true;
    }
    if (cut != StreamCut::none) break;
  }
  batch.clear();
  if (cut == StreamCut::none) {
    // An unterminated last event is ended here, so it is relayed (and billed) as a whole event.
    if (!splitter.pending().empty())
      splitter.feed("\n\n",
                    [&](std::string_view ev) { ctx.dialect->relay_event(ev, ctx, upstream_key, stream_state, batch); });
    ctx.dialect->end_stream(ctx, stream_state, batch);
  } else {
    // A cut stream ends with a well-formed error event; a half-received event is dropped, never
    // glued to it.
    out.upstream_aborted = true;
    ctx.dialect->end_stream(ctx, stream_state, batch);
    batch.bytes += cut_error_event(*ctx.dialect, cut);
  }
  if ((!batch.bytes.empty() || !head_sent) &&
      !co_await send_batch(client, head_sent ? std::string_view{} : head_bytes, batch, out, chunked))
    co_return;
  if (!out.client_aborted && chunked) {
    auto [wec, wn] = co_await net::async_write(client, http::make_chunk_last(), tuple_awaitable);
    if (wec) out.client_aborted = true;
  }
  out.response_complete = !out.client_aborted;
  upstream_reusable = !out.upstream_aborted && bp.is_done() && bp.get().keep_alive();
}

template net::awaitable<void> relay_stream(UpstreamConnection::Plain&, beast::flat_buffer&,
                                      http::response_parser<http::empty_body>&, Pipe&, RequestCtx&,
                                      const routing::Upstream&, std::string_view, bool&);
template net::awaitable<void> relay_stream(UpstreamConnection::Tls&, beast::flat_buffer&,
                                      http::response_parser<http::empty_body>&, Pipe&, RequestCtx&,
                                      const routing::Upstream&, std::string_view, bool&);

}  // namespace tollgate
