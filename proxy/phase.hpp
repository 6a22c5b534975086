#pragma once
// The request path's one shape, as Pingora's ProxyHttp phases and Envoy's filter chain have
// theirs (../shared/CONVENTIONS.md). Every phase is
//
//     net::awaitable<Step> phase(Pipe& p, RequestCtx& ctx);
//
// over the one per-request context, and answers either "go on" (Step::next()) or "answered with
// this local reply" (Step::answer(...), usually through fail()). Phases never write to the
// client themselves, except forward, which relays the upstream's response; session.cpp runs
// them, writes every local reply (write_reply) and decides keep-alive in one place.
#include "proxy/dialect.hpp"
#include "proxy/request.hpp"
#include "proxy/request_parser.hpp"
#include "proxy/seams.hpp"
#include "proxy/upstream.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>

#include <optional>
#include <random>
#include <string_view>
#include <unordered_map>
#include <unordered_set>

namespace tollgate {

/// A Postgres key lookup in flight on one event loop; requests missing the same key hash wait
/// for it (its timer is cancelled when it finished) instead of making their own.
struct KeyLookup {
  explicit KeyLookup(const boost::asio::any_io_executor& ex)
      : done(ex, boost::asio::steady_timer::time_point::max()) {}
  boost::asio::steady_timer done;
  keys::KeyCache::Record rec;  ///< null: no such key
  bool failed = false;         ///< the key source did not answer
};

/// What one event-loop thread owns: its upstream connections and its admission client (null
/// when admission is off), wired by server.cpp (fakes in tests).
struct ThreadContext {
  UpstreamConnector& upstreams;
  AdmissionPort* admission = nullptr;
  std::size_t queued = 0;  ///< requests read but not yet forwarded or answered (max_queued_requests)
  std::unordered_map<std::string, std::shared_ptr<KeyLookup>> key_lookups;  ///< by key hash
  /// Upstream connections carrying a request now, so that a graceful stop's deadline can cut
  /// them (cut_upstreams()).
  std::unordered_set<UpstreamConnection*> in_flight;
  std::mt19937_64 rng{std::random_device{}()};  ///< weighted route selection
};

/// Closes every upstream connection carrying a request on this thread: their pending reads fail
/// at once, so each request ends as an upstream cut (its stream gets an error event; it is
/// recorded and settled). Call on the thread's event loop.
void cut_upstreams(ThreadContext& tc);

/// The connection-level things every phase may use besides the context.
struct Pipe {
  App& app;
  ThreadContext& tc;
  beast::tcp_stream& client;
  beast::flat_buffer& buf;
  RequestParser& parser;
  /// This event loop's queue count of the request (ThreadContext::queued), while it is counted.
  std::size_t* queued = nullptr;
  /// The request leaves the event loop's queue (it is being forwarded, or answered).
  void leave_queue() {
    if (queued) --*std::exchange(queued, nullptr);
  }
};

/// A phase's answer: go on, or the local reply that ends the request.
class Step {
 public:
  static Step next() { return Step{}; }
  static Step answer(LocalReply r) {
    Step s;
    s.reply_ = std::move(r);
    return s;
  }
  /// Ends the connection without a reply (the client is gone).
  static Step hang_up() {
    Step s;
    s.hang_up_ = true;
    return s;
  }
  /// The request is over: a reply to write, or a hang-up.
  bool answered() const { return reply_.has_value() || hang_up_; }
  bool hung_up() const { return hang_up_; }
  const LocalReply& reply() const { return *reply_; }

 private:
  std::optional<LocalReply> reply_;
  bool hang_up_ = false;
};

using Phase = net::awaitable<Step> (*)(Pipe&, RequestCtx&);

/// Step::answer with an error in the request's dialect (OpenAI: {"error":{message,type,code}}).
/// `drain`: the body was not read (see LocalReply::drain).
Step fail(const RequestCtx& ctx, int status, std::string_view message, std::string_view type, std::string_view code,
          bool drain = false);

// The phases (DESIGN.md), in order. Each answers or goes on.
/// Phase 2: the API key (Authorization: Bearer) — cache, filter, key source; 401 or 503.
net::awaitable<Step> authenticate(Pipe& p, RequestCtx& ctx);
/// Phase 3: reads the body (100-continue when asked); 400/408/413 (drained and closed).
net::awaitable<Step> read_body(Pipe& p, RequestCtx& ctx);
/// Phase 3b: parses it in the request's dialect and finds the model's price; 400.
net::awaitable<Step> parse_request(Pipe& p, RequestCtx& ctx);
/// Phase 3c: the upstreams that serve the model, in the order to try them (route table:
/// priority, then weight); 404 when none does. Before admission, so an unroutable request holds
/// nothing.
net::awaitable<Step> route_model(Pipe& p, RequestCtx& ctx);
/// Phase 4: holds the worst case on the balance and counts the windows; 400/402/429/503.
net::awaitable<Step> admit(Pipe& p, RequestCtx& ctx);
/// Phase 5: the route's upstreams in order, with fallback, relaying the serving one's response;
/// 502/503/504 when nothing reached the client (proxy/forward.cpp).
net::awaitable<Step> forward(Pipe& p, RequestCtx& ctx);
/// Phases 6-8 after forward, whatever happened: record the usage (once the upstream was
/// reached) and settle the hold (once admitted). Never throws.
void record_and_settle(Pipe& p, RequestCtx& ctx) noexcept;

}  // namespace tollgate
