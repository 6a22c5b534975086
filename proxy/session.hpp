#pragma once
// One client connection: reads requests and runs each through the phases of DESIGN.md
// (parse & limit → authenticate → read body → admit → forward → price → settle → record).
#include "proxy/app.hpp"
#include "proxy/upstream.hpp"
#include "ratelimit/admission.hpp"

#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core/tcp_stream.hpp>

#include <memory>
#include <string>
#include <unordered_map>

namespace tollgate {

/// A Postgres key lookup in flight on one event loop; requests missing the same key hash wait
/// for it (its timer is cancelled when it finished) instead of making their own.
struct KeyLookup {
  explicit KeyLookup(const boost::asio::any_io_executor& ex)
      : done(ex, boost::asio::steady_timer::time_point::max()) {}
  boost::asio::steady_timer done;
  keys::KeyCache::Record rec;  ///< null: no such key
  bool failed = false;         ///< Postgres did not answer
};

/// What one event-loop thread owns: its upstream pool and its admission client (null when
/// admission is off).
struct ThreadContext {
  UpstreamPool& upstream;
  ratelimit::Admitter* admitter;
  std::size_t queued = 0;  ///< requests read but not yet forwarded or answered (max_queued_requests)
  std::unordered_map<std::string, std::shared_ptr<KeyLookup>> key_lookups;  ///< by key hash
};

/// Serves HTTP/1.1 requests on `client` until it closes, an error, a non-keep-alive reply, a
/// refused request or a timeout. `slot` is the connection's place under the caps, held till
/// the end.
boost::asio::awaitable<void> run_session(boost::beast::tcp_stream client, App& app, ThreadContext& tc,
                                         ConnectionLimiter::Slot slot);

}  // namespace tollgate
