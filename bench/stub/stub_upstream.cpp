// tollgate-stub: a fast, deterministic OpenRouter-style upstream for tests, the quickstart and
// benchmarks. See README.md for endpoints, flags and failure controls.
//
// Threading model: N io_contexts, each run by exactly one thread (concurrency hint 1). A single
// acceptor on context 0 hands accepted sockets round-robin to the contexts, so every connection
// lives on one thread for its whole life: no strands, no locking on the I/O path, and an even
// spread even with few connections (SO_REUSEPORT hashing can be lopsided for e.g. 16 benchmark
// connections, and port 0 would need extra care). Shared state is a few atomics plus one mutex
// for the "last request" record.
//
// Responses are serialised by hand into per-connection fmt buffers and written with gathered
// writes; Beast is used for request parsing and the timeout-aware tcp_stream.
#include "stub_api.hpp"

#include <array>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/string.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <CLI/CLI.hpp>

namespace tollgate::stub {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using namespace std::chrono_literals;

constexpr auto kNoThrow = asio::as_tuple(asio::use_awaitable);
constexpr std::uint64_t kBodyLimit = 16u << 20;
constexpr std::uint32_t kHeaderLimit = 64u << 10;
constexpr auto kIdleTimeout = 60s;   // waiting for / reading a request
constexpr auto kWriteTimeout = 30s;  // each response write

inline void put(Buffer& out, std::string_view s) { out.append(s.data(), s.data() + s.size()); }
inline std::string_view view(const Buffer& b) { return {b.data(), b.size()}; }
inline asio::const_buffer cbuf(std::string_view s) { return {s.data(), s.size()}; }

/// State shared by all connections on all threads.
struct Shared {
    Defaults defaults;
    Failure global_fail;
    std::uint64_t fail_every = 0;  ///< apply global_fail to every k-th generation request; 0 = never
    std::string require_key;
    std::string models_body;

    std::atomic<std::uint64_t> gen{0};           ///< generation ids ("gen-<n>")
    std::atomic<std::uint64_t> fail_counter{0};  ///< generation requests seen by --fail-rate

    std::mutex mu;  ///< guards the fields below
    std::uint64_t requests = 0;
    std::string last_method, last_target, last_auth, last_body;
    RecordedHeader last_headers[kRecordedHeaderCount];

    template <class Fields>
    void record(std::string_view method, std::string_view target, const Fields& fields,
                std::string_view body) {
        std::lock_guard lock(mu);
        ++requests;
        last_method.assign(method);
        last_target.assign(target);
        last_auth.assign(fields[http::field::authorization]);
        last_body.assign(body);
        for (std::size_t i = 0; i < kRecordedHeaderCount; ++i) {
            auto it = fields.find(kRecordedHeaders[i]);
            last_headers[i].present = it != fields.end();
            if (last_headers[i].present)
                last_headers[i].value.assign(it->value());
            else
                last_headers[i].value.clear();
        }
    }

    void reset() {
        std::lock_guard lock(mu);
        requests = 0;
        last_method.clear();
        last_target.clear();
        last_auth.clear();
        last_body.clear();
        for (auto& h : last_headers) h = {};
        gen = 0;
        fail_counter = 0;
    }
};

/// One HTTP/1.1 keep-alive connection; owns its stream, input buffer and output buffers.
class Session {
public:
    Session(tcp::socket socket, Shared& shared)
        : stream_(std::move(socket)), timer_(stream_.get_executor()), shared_(shared) {}

    asio::awaitable<void> run();

private:
    using Request = http::request<http::string_body>;

    asio::awaitable<bool> handle(Request& req);
    asio::awaitable<bool> handle_generation(Request& req, Endpoint endpoint);
    asio::awaitable<bool> stream_generation(const Failure& fail);
    asio::awaitable<bool> stream_typed(const Failure& fail);
    asio::awaitable<void> reject(beast::error_code ec);

    /// Starts a response head (status line + common headers) in head_.
    void begin_head(int status, std::string_view content_type);
    /// Completes head_ with Content-Length for body_ and sends both.
    asio::awaitable<bool> send_fixed(int status, std::string_view content_type,
                                     std::string_view extra_headers = {});
    asio::awaitable<bool> send_error(int status, std::string_view message,
                                     Endpoint endpoint = Endpoint::not_found);
    /// Sends body_ as one chunk (and the terminating chunk when `last`).
    asio::awaitable<bool> send_event(bool last = false);
    asio::awaitable<bool> sleep_ms(std::int64_t ms);

    template <std::size_t N>
    asio::awaitable<bool> write(const std::array<asio::const_buffer, N>& buffers) {
        stream_.expires_after(kWriteTimeout);
        auto [ec, n] = co_await asio::async_write(stream_, buffers, kNoThrow);
        co_return !ec;
    }

    void close_abruptly() {
        beast::error_code ec;
        stream_.socket().close(ec);
    }

    beast::tcp_stream stream_;
    beast::flat_buffer in_;
    asio::steady_timer timer_;
    Shared& shared_;
    Buffer head_;
    Buffer body_;
    RequestDecoder decoder_;
    Plan plan_;
    bool keep_alive_ = true;
    bool http11_ = true;
};

asio::awaitable<void> Session::run() {
    beast::error_code ec;
    stream_.socket().set_option(tcp::no_delay(true), ec);
    std::string storage;  // request body storage, recycled across requests
    for (;;) {
        storage.clear();
        http::request_parser<http::string_body> parser(std::piecewise_construct,
                                                       std::make_tuple(std::move(storage)));
        parser.body_limit(kBodyLimit);
        parser.header_limit(kHeaderLimit);

        stream_.expires_after(kIdleTimeout);
        if (auto [err, n] = co_await http::async_read_header(stream_, in_, parser, kNoThrow); err) {
            co_await reject(err);
            co_return;
        }
        if (!parser.is_done()) {
            if (beast::iequals(parser.get()[http::field::expect], "100-continue")) {
                constexpr std::string_view cont = "HTTP/1.1 100 Continue\r\n\r\n";
                if (!co_await write(std::array{cbuf(cont)})) co_return;
            }
            stream_.expires_after(kIdleTimeout);
            if (auto [err, n] = co_await http::async_read(stream_, in_, parser, kNoThrow); err) {
                co_await reject(err);
                co_return;
            }
        }

        Request& req = parser.get();
        keep_alive_ = req.keep_alive();
        http11_ = req.version() >= 11;
        if (!co_await handle(req)) break;
        storage = std::move(req.body());
    }
    stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
}

asio::awaitable<void> Session::reject(beast::error_code ec) {
    // Only malformed or oversized requests get an answer; EOF, timeouts and resets do not.
    if (ec.category() != http::make_error_code(http::error::bad_target).category() ||
        ec == http::error::end_of_stream || ec == http::error::partial_message)
        co_return;
    keep_alive_ = false;
    http11_ = true;
    if (ec == http::error::body_limit)
        co_await send_error(413, "request body exceeds 16 MiB");
    else if (ec == http::error::header_limit)
        co_await send_error(431, "request headers too large");
    else
        co_await send_error(400, "malformed HTTP request");
}

asio::awaitable<bool> Session::handle(Request& req) {
    const Endpoint endpoint = route(req.method_string(), req.target());
    switch (endpoint) {
        case Endpoint::not_found:
            co_return co_await send_error(404, "not found");
        case Endpoint::stub_last: {
            body_.clear();
            {
                std::lock_guard lock(shared_.mu);
                render_last(body_, shared_.last_method, shared_.last_target, shared_.last_auth,
                            shared_.last_headers, shared_.last_body, shared_.requests);
            }
            co_return co_await send_fixed(200, "application/json");
        }
        case Endpoint::stub_reset:
            shared_.reset();
            body_.clear();
            put(body_, "{\"ok\":true}");
            co_return co_await send_fixed(200, "application/json");
        default:
            break;
    }

    shared_.record(req.method_string(), req.target(), req.base(), req.body());
    if (endpoint == Endpoint::models) {  // public, like OpenRouter's GET /models
        body_.clear();
        put(body_, shared_.models_body);
        co_return co_await send_fixed(200, "application/json");
    }
    co_return co_await handle_generation(req, endpoint);
}

/// The token of `Authorization: Bearer <token>`, trimmed; empty if absent or another scheme.
std::string_view bearer_token(std::string_view auth) {
    std::string_view token;
    if (auth.size() > 7 && beast::iequals(auth.substr(0, 7), "Bearer ")) {
        token = auth.substr(7);
        while (!token.empty() && token.front() == ' ') token.remove_prefix(1);
        while (!token.empty() && token.back() == ' ') token.remove_suffix(1);
    }
    return token;
}

asio::awaitable<bool> Session::handle_generation(Request& req, Endpoint endpoint) {
    // Authorization: Bearer <non-empty token> (must equal --require-key when set). The Anthropic
    // Messages endpoint also takes `x-api-key` (then `anthropic-version` is required, as at
    // Anthropic); with both, either may match.
    const std::string_view bearer = bearer_token(req[http::field::authorization]);
    const std::string_view api_key = endpoint == Endpoint::messages ? std::string_view(req["x-api-key"]) : std::string_view();
    auto accepted = [&](std::string_view token) {
        return !token.empty() && (shared_.require_key.empty() || token == shared_.require_key);
    };
    if (!accepted(bearer) && !accepted(api_key))
        co_return co_await send_error(401, endpoint == Endpoint::messages ? "invalid x-api-key" : "No auth credentials found",
                                      endpoint);
    if (endpoint == Endpoint::messages && !accepted(bearer) && req["anthropic-version"].empty())
        co_return co_await send_error(400, "anthropic-version: header is required", endpoint);

    if (auto err = decoder_.decode(endpoint, req.body(), shared_.defaults, plan_); !err.empty())
        co_return co_await send_error(400, err, endpoint);

    Failure fail = plan_.fail;
    if (fail.mode == FailMode::none && shared_.fail_every != 0 &&
        (shared_.fail_counter.fetch_add(1, std::memory_order_relaxed) + 1) % shared_.fail_every == 0)
        fail = shared_.global_fail;
    plan_.gen = shared_.gen.fetch_add(1, std::memory_order_relaxed) + 1;
    plan_.created = static_cast<std::int64_t>(std::time(nullptr));

    if (plan_.latency_ms > 0 && !co_await sleep_ms(plan_.latency_ms)) co_return false;

    switch (fail.mode) {
        case FailMode::drop:
            close_abruptly();
            co_return false;
        case FailMode::status: {
            body_.clear();
            const std::string_view type = render_status_failure(body_, plan_, fail.status);
            const std::string extra =
                plan_.retry_after.empty() ? std::string() : fmt::format("Retry-After: {}\r\n", plan_.retry_after);
            co_return co_await send_fixed(fail.status, type, extra);
        }
        default:
            break;
    }
    // (No `co_await (c ? a() : b())`: GCC 12 mishandles awaitable temporaries in a conditional.)
    if (plan_.stream && (endpoint == Endpoint::responses || endpoint == Endpoint::messages))
        co_return co_await stream_typed(fail);
    if (plan_.stream) co_return co_await stream_generation(fail);

    body_.clear();
    switch (endpoint) {
        case Endpoint::embeddings: render_embeddings(body_, plan_); break;
        case Endpoint::responses: render_response(body_, plan_); break;
        case Endpoint::messages: render_message(body_, plan_); break;
        case Endpoint::images: render_images(body_, plan_); break;
        default: render_completion(body_, plan_); break;
    }

    char gen_header[64];
    const auto gen_end = fmt::format_to_n(gen_header, sizeof gen_header, "X-Generation-Id: gen-{}\r\n",
                                          plan_.gen).out;
    const std::string_view extra(gen_header, static_cast<std::size_t>(gen_end - gen_header));
    if (fail.mode != FailMode::drop_midstream) co_return co_await send_fixed(200, "application/json", extra);

    // Non-streaming drop_midstream: announce the full length, send half the body, hang up.
    begin_head(200, "application/json");
    put(head_, extra);
    fmt::format_to(fmt::appender(head_), "Content-Length: {}\r\n\r\n", body_.size());
    co_await write(std::array{cbuf(view(head_)), cbuf(view(body_).substr(0, body_.size() / 2))});
    close_abruptly();
    co_return false;
}

asio::awaitable<bool> Session::stream_generation(const Failure& fail) {
    if (!http11_) keep_alive_ = false;  // no chunked encoding: the body ends when we close
    begin_head(200, "text/event-stream");
    fmt::format_to(fmt::appender(head_), "Cache-Control: no-cache\r\nX-Generation-Id: gen-{}\r\n{}\r\n",
                   plan_.gen, http11_ ? "Transfer-Encoding: chunked\r\n" : "");
    constexpr std::string_view comment = ": OPENROUTER PROCESSING\n\n";
    if (http11_)
        fmt::format_to(fmt::appender(head_), "{:x}\r\n{}\r\n", comment.size(), comment);
    else
        put(head_, comment);
    if (!co_await write(std::array{cbuf(view(head_))})) co_return false;

    const bool cut = fail.mode == FailMode::midstream || fail.mode == FailMode::drop_midstream;
    const std::uint64_t total = plan_.completion_tokens;
    const std::uint64_t sent = cut ? total / 2 : total;
    for (std::uint64_t i = 0; i < sent; ++i) {
        if (i > 0 && plan_.chunk_interval_ms > 0 && !co_await sleep_ms(plan_.chunk_interval_ms))
            co_return false;
        body_.clear();
        render_stream_content(body_, plan_, i);
        if (!co_await send_event()) co_return false;
    }

    if (fail.mode == FailMode::drop_midstream) {  // no terminating chunk
        close_abruptly();
        co_return false;
    }
    body_.clear();
    if (fail.mode == FailMode::midstream) {  // error event, clean end of body, then close
        render_stream_error(body_, plan_);
        co_await send_event(true);
        co_return false;
    }
    render_stream_finish(body_, plan_);
    if (!co_await send_event()) co_return false;
    body_.clear();
    render_stream_usage(body_, plan_);
    if (!co_await send_event()) co_return false;
    body_.clear();
    put(body_, "data: [DONE]\n\n");
    if (!co_await send_event(true)) co_return false;
    co_return keep_alive_;
}

/// Responses API and Anthropic Messages streams: typed events (`event:` + `data:`), no [DONE].
asio::awaitable<bool> Session::stream_typed(const Failure& fail) {
    if (!http11_) keep_alive_ = false;
    begin_head(200, "text/event-stream");
    fmt::format_to(fmt::appender(head_), "Cache-Control: no-cache\r\nX-Generation-Id: gen-{}\r\n{}\r\n",
                   plan_.gen, http11_ ? "Transfer-Encoding: chunked\r\n" : "");
    constexpr std::string_view comment = ": OPENROUTER PROCESSING\n\n";  // as OpenRouter sends it
    if (http11_)
        fmt::format_to(fmt::appender(head_), "{:x}\r\n{}\r\n", comment.size(), comment);
    else
        put(head_, comment);
    if (!co_await write(std::array{cbuf(view(head_))})) co_return false;

    for (std::size_t i = 0, n = typed_prologue_events(plan_); i < n; ++i) {
        body_.clear();
        render_typed_prologue(body_, plan_, i);
        if (!co_await send_event()) co_return false;
    }
    const bool cut = fail.mode == FailMode::midstream || fail.mode == FailMode::drop_midstream;
    const std::uint64_t total = plan_.completion_tokens;
    const std::uint64_t sent = cut ? total / 2 : total;
    for (std::uint64_t i = 0; i < sent; ++i) {
        if (i > 0 && plan_.chunk_interval_ms > 0 && !co_await sleep_ms(plan_.chunk_interval_ms))
            co_return false;
        body_.clear();
        render_typed_content(body_, plan_, i);
        if (!co_await send_event()) co_return false;
    }
    if (fail.mode == FailMode::drop_midstream) {
        close_abruptly();
        co_return false;
    }
    if (fail.mode == FailMode::midstream) {
        body_.clear();
        render_typed_error(body_, plan_, sent);
        co_await send_event(true);
        co_return false;
    }
    for (std::size_t i = 0, n = typed_epilogue_events(plan_); i < n; ++i) {
        body_.clear();
        render_typed_epilogue(body_, plan_, i);
        if (!co_await send_event(i + 1 == n)) co_return false;
    }
    co_return keep_alive_;
}

void Session::begin_head(int status, std::string_view content_type) {
    std::string_view reason = http::obsolete_reason(static_cast<http::status>(status));
    if (reason.starts_with('<')) reason = "Unknown";
    head_.clear();
    fmt::format_to(fmt::appender(head_), "HTTP/1.1 {} {}\r\nServer: tollgate-stub\r\nContent-Type: {}\r\n",
                   status, reason, content_type);
    if (!keep_alive_)
        put(head_, "Connection: close\r\n");
    else if (!http11_)
        put(head_, "Connection: keep-alive\r\n");
}

asio::awaitable<bool> Session::send_fixed(int status, std::string_view content_type,
                                          std::string_view extra_headers) {
    begin_head(status, content_type);
    put(head_, extra_headers);
    fmt::format_to(fmt::appender(head_), "Content-Length: {}\r\n\r\n", body_.size());
    co_return co_await write(std::array{cbuf(view(head_)), cbuf(view(body_))}) && keep_alive_;
}

asio::awaitable<bool> Session::send_error(int status, std::string_view message, Endpoint endpoint) {
    body_.clear();
    render_error_for(body_, endpoint, status, message);
    co_return co_await send_fixed(status, "application/json");
}

asio::awaitable<bool> Session::send_event(bool last) {
    if (!http11_) co_return co_await write(std::array{cbuf(view(body_))});
    char size_line[24];
    const auto end = fmt::format_to_n(size_line, sizeof size_line, "{:x}\r\n", body_.size()).out;
    const std::string_view size(size_line, static_cast<std::size_t>(end - size_line));
    co_return co_await write(
        std::array{cbuf(size), cbuf(view(body_)), cbuf(last ? "\r\n0\r\n\r\n" : "\r\n")});
}

asio::awaitable<bool> Session::sleep_ms(std::int64_t ms) {
    timer_.expires_after(std::chrono::milliseconds(ms));
    auto [ec] = co_await timer_.async_wait(kNoThrow);
    co_return !ec;
}

asio::awaitable<void> serve(tcp::socket socket, Shared& shared) {
    Session session(std::move(socket), shared);
    co_await session.run();
}

/// Accepts on context 0 and hands each socket to the next context round-robin.
asio::awaitable<void> accept_loop(tcp::acceptor& acceptor,
                                  std::vector<std::unique_ptr<asio::io_context>>& contexts,
                                  Shared& shared) {
    asio::steady_timer backoff(acceptor.get_executor());
    for (std::size_t next = 0;; next = (next + 1) % contexts.size()) {
        tcp::socket socket(*contexts[next]);
        auto [ec] = co_await acceptor.async_accept(socket, kNoThrow);
        if (ec == asio::error::operation_aborted || !acceptor.is_open()) co_return;
        if (ec) {  // e.g. EMFILE: back off briefly instead of spinning
            backoff.expires_after(10ms);
            co_await backoff.async_wait(kNoThrow);
            continue;
        }
        asio::co_spawn(*contexts[next], serve(std::move(socket), shared), asio::detached);
    }
}

/// Parses "ip:port"; "[v6]:port", "localhost:port" and ":port" (127.0.0.1) are accepted.
tcp::endpoint parse_listen(const std::string& listen) {
    const auto colon = listen.rfind(':');
    if (colon == std::string::npos) throw std::runtime_error("--listen must be HOST:PORT");
    std::string host = listen.substr(0, colon);
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
    if (host.empty() || host == "localhost") host = "127.0.0.1";
    const int port = std::stoi(listen.substr(colon + 1));
    if (port < 0 || port > 65535) throw std::runtime_error("--listen port out of range");
    return {asio::ip::make_address(host), static_cast<unsigned short>(port)};
}

/// Writes the port via a temp file + rename so pollers never see a partial file.
void write_port_file(const std::string& path, unsigned short port) {
    const std::string tmp = path + ".tmp";
    {
        std::ofstream out(tmp, std::ios::trunc);
        out << port << '\n';
        if (!out) throw std::runtime_error("cannot write --port-file " + path);
    }
    std::filesystem::rename(tmp, path);
}

struct Options {
    std::string listen = "127.0.0.1:9090";
    unsigned threads = 1;
    std::int64_t chunks = 8;
    std::int64_t chunk_interval_ms = 0;
    std::int64_t latency_ms = 0;
    std::string fail;
    double fail_rate = 0;
    std::string require_key;
    std::string port_file;
};

int run(const Options& opt) {
    Shared shared;
    shared.defaults = {opt.chunks, opt.chunk_interval_ms, opt.latency_ms};
    if (!parse_failure(opt.fail, shared.global_fail))
        throw std::runtime_error("--fail must be status:NNN, midstream, drop or drop_midstream");
    if (shared.global_fail.mode != FailMode::none)
        shared.fail_every = (opt.fail_rate <= 0 || opt.fail_rate >= 1)
                                ? 1
                                : std::max<std::uint64_t>(1, std::llround(1.0 / opt.fail_rate));
    shared.require_key = opt.require_key;
    shared.models_body = render_models();

    std::vector<std::unique_ptr<asio::io_context>> contexts;
    for (unsigned i = 0; i < opt.threads; ++i) contexts.push_back(std::make_unique<asio::io_context>(1));
    asio::io_context& main_ctx = *contexts.front();

    {
        tcp::acceptor acceptor(main_ctx);
        const tcp::endpoint endpoint = parse_listen(opt.listen);
        acceptor.open(endpoint.protocol());
        acceptor.set_option(asio::socket_base::reuse_address(true));
        acceptor.bind(endpoint);
        acceptor.listen(asio::socket_base::max_listen_connections);
        const auto bound = acceptor.local_endpoint();
        if (!opt.port_file.empty()) write_port_file(opt.port_file, bound.port());
        const auto host = bound.address().to_string();
        const bool v6 = bound.address().is_v6();
        fmt::print("tollgate-stub listening on {}{}{}:{}\n", v6 ? "[" : "", host, v6 ? "]" : "",
                   bound.port());
        std::fflush(stdout);

        asio::signal_set signals(main_ctx, SIGINT, SIGTERM);
        signals.async_wait([&](beast::error_code, int) {
            for (auto& ctx : contexts) ctx->stop();
        });
        asio::co_spawn(main_ctx, accept_loop(acceptor, contexts, shared), asio::detached);

        std::vector<asio::executor_work_guard<asio::io_context::executor_type>> guards;
        for (auto& ctx : contexts) guards.push_back(asio::make_work_guard(*ctx));
        std::vector<std::thread> workers;
        for (std::size_t i = 1; i < contexts.size(); ++i)
            workers.emplace_back([ctx = contexts[i].get()] { ctx->run(); });
        main_ctx.run();
        for (auto& ctx : contexts) ctx->stop();
        for (auto& t : workers) t.join();
    }
    // Pending coroutines (and the sockets they own) are destroyed with their contexts; the
    // accept loop on context 0 may own a socket of any context, so destroy 0 first.
    for (auto& ctx : contexts) ctx.reset();
    return 0;
}

}  // namespace
}  // namespace tollgate::stub

int main(int argc, char** argv) {
    using tollgate::stub::Options;
    Options opt;
    CLI::App app{"tollgate-stub: deterministic OpenRouter-style upstream for tests and benchmarks"};
    app.add_option("--listen", opt.listen, "HOST:PORT to listen on (port 0 = any free port)")
        ->capture_default_str();
    app.add_option("--threads", opt.threads, "I/O threads (one io_context each)")
        ->check(CLI::Range(1u, 1024u))
        ->capture_default_str();
    app.add_option("--chunks", opt.chunks, "completion chunks/tokens per response (stub_chunks)")
        ->check(CLI::Range(std::int64_t{0}, std::int64_t{1'000'000}))
        ->capture_default_str();
    app.add_option("--chunk-interval-ms", opt.chunk_interval_ms,
                   "delay between streamed chunks (stub_interval_ms)")
        ->check(CLI::Range(std::int64_t{0}, std::int64_t{600'000}))
        ->capture_default_str();
    app.add_option("--latency-ms", opt.latency_ms, "delay before response headers (stub_latency_ms)")
        ->check(CLI::Range(std::int64_t{0}, std::int64_t{600'000}))
        ->capture_default_str();
    app.add_option("--fail", opt.fail, "global failure: status:NNN | midstream | drop | drop_midstream");
    app.add_option("--fail-rate", opt.fail_rate,
                   "fraction of generation requests that get --fail (every round(1/R)-th; 0 or 1 = all)")
        ->check(CLI::Range(0.0, 1.0))
        ->capture_default_str();
    app.add_option("--require-key", opt.require_key, "bearer token that must be presented");
    app.add_option("--port-file", opt.port_file, "write the bound port to this file once listening");
    CLI11_PARSE(app, argc, argv);

    try {
        return tollgate::stub::run(opt);
    } catch (const std::exception& e) {
        fmt::print(stderr, "tollgate-stub: {}\n", e.what());
        return 1;
    }
}
