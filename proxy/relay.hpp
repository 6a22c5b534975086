#pragma once
// Phase 5's relay to the client: writing without an event-loop round trip when the socket takes
// the bytes, noticing a client that left, and relaying a 2xx server-sent-event stream event by
// event (no buffering), counting the output events that reached the client for billing.
#include "proxy/phase.hpp"

#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/parser.hpp>

#include <memory>
#include <string>
#include <string_view>
#include <utility>

namespace tollgate {

/// Whether the client has closed its end (its FIN or RST arrived): a non-blocking one-byte
/// MSG_PEEK. Waiting bytes (a pipelined next request) mean the client is still there.
bool client_gone(beast::tcp_stream& client);

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

/// Relays a 2xx `text/event-stream` response whose head `hp` was read from `up`: our head
/// (status and `content_type` as the upstream's) first, then each SSE event as soon as it is complete, through the request's
/// dialect (usage and errors read, the usage event stripped when not asked for, u's key never
/// relayed), with no total
/// size limit and one event at most upstream_max_event_bytes. A stream the upstream cuts, stalls
/// (u.idle_timeout between reads) or overfills, or a graceful stop's deadline, ends with one well-formed error
/// event. Fills ctx.out (delivered output events, usage, client/upstream aborts,
/// response_complete) and `upstream_reusable`. Never throws for I/O errors.
template <class Stream>
net::awaitable<void> relay_stream(Stream& up, beast::flat_buffer& upbuf,
                                  beast::http::response_parser<beast::http::empty_body>& hp, Pipe& p,
                                  RequestCtx& ctx, const routing::Upstream& u, std::string_view content_type,
                                  bool& upstream_reusable);

}  // namespace tollgate
