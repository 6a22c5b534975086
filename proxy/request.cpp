#include "proxy/request.hpp"

#include "proxy/http_head.hpp"

#include <boost/asio/write.hpp>
#include <boost/beast/http.hpp>
#include <fmt/format.h>
#include <openssl/rand.h>

#include <array>
#include <random>

namespace tollgate {
namespace http = beast::http;
using net::awaitable;

std::int64_t unix_now_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string new_request_id() {
  thread_local std::mt19937_64 rng = [] {
    std::uint64_t seed[2];
    if (RAND_bytes(reinterpret_cast<unsigned char*>(seed), sizeof seed) != 1)
      seed[0] = std::random_device{}(), seed[1] = std::random_device{}();
    std::seed_seq seq{seed[0], seed[1]};
    return std::mt19937_64(seq);
  }();
  // 48 bits of Unix time in ms, then 80 random bits: ids sort by time, so usage_logs' unique
  // index on request_id grows at its right edge instead of taking random inserts.
  auto ms = static_cast<std::uint64_t>(unix_now_us() / 1000) & 0xFFFF'FFFF'FFFFull;
  return fmt::format("req_{:012x}{:04x}{:016x}", ms, rng() & 0xFFFF, rng());
}

void count_status(App& app, int status) {
  auto& m = app.metrics;
  (status < 400 ? m.responses_2xx : status < 500 ? m.responses_4xx : m.responses_5xx)++;
}

std::string response_head(int status, std::string_view content_type, const RequestCtx& ctx,
                          std::optional<std::size_t> content_length, bool keep_alive,
                          const std::optional<std::string>& generation_id,
                          std::string_view retry_after, bool chunked) {
  std::string h;
  h.reserve(320);
  http_head::status_line(h, static_cast<unsigned>(status));
  http_head::field(h, "Content-Type", content_type);
  if (!content_length) http_head::field(h, "Cache-Control", "no-cache");
  http_head::field(h, "x-request-id", ctx.request_id);
  for (const auto& [k, v] : ctx.headers) http_head::field(h, k, v);
  if (generation_id) http_head::field(h, "x-generation-id", *generation_id);
  if (!retry_after.empty()) http_head::field(h, "Retry-After", retry_after);
  http_head::finish(h, content_length, keep_alive, chunked);
  return h;
}

awaitable<bool> write_reply(beast::tcp_stream& client, App& app, const RequestCtx& ctx, const LocalReply& r,
                            bool keep_alive) {
  std::string head = response_head(r.status, "application/json", ctx, r.body.size(), keep_alive);
  count_status(app, r.status);
  client.expires_after(client_write_timeout);
  std::array<net::const_buffer, 2> message{net::buffer(head), net::buffer(r.body)};
  auto [ec, n] = co_await net::async_write(client, message, tuple_awaitable);
  if (r.drain) co_await drain_and_close(client);
  co_return !ec;
}

awaitable<void> drain_and_close(beast::tcp_stream& client) {
  beast::error_code ec;
  client.socket().shutdown(net::ip::tcp::socket::shutdown_send, ec);  // already closed is fine
  std::vector<char> sink(64 * 1024);
  std::size_t total = 0;
  client.expires_after(std::chrono::seconds(5));
  while (total < (64u << 20)) {
    auto [rec, n] = co_await client.async_read_some(net::buffer(sink), tuple_awaitable);
    if (rec) break;  // EOF, reset or the 5 s bound: done either way
    total += n;
  }
}

}  // namespace tollgate
