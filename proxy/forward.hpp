#pragma once
// Phase 5: forward the request upstream and relay the response to the client — a complete
// JSON body, or server-sent events one by one as they complete (no buffering).
#include "proxy/request.hpp"
#include "proxy/upstream.hpp"

namespace tollgate {

/// Sends the request upstream (the operator's key, usage reporting asked for) and relays the
/// answer. Fills `out` for phases 6-8. A POST is never sent twice. Answers 502/504 itself when
/// nothing reached the client yet. Returns whether the client connection can go on.
net::awaitable<bool> forward(beast::tcp_stream& client, App& app, UpstreamPool& pool, RequestCtx& ctx,
                             Outcome& out);

}  // namespace tollgate
