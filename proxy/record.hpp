#pragma once
// Phases 6-8 of DESIGN.md: price the usage a request reported (or what was delivered) and append
// its usage record to the journal; the usage writer batches it into Postgres.
#include "proxy/request.hpp"

#include <cstdint>
#include <optional>

namespace tollgate {

/// What settle (phase 7) needs of a recorded request.
struct Recorded {
  pricing::Micros charge = 0;  ///< credit units (1e-6 USD)
  std::int64_t tokens = 0;     ///< prompt + completion
};

/// Records a request that reached the upstream (nullopt, nothing recorded, otherwise), whatever
/// happened after: client abort, upstream error mid-stream. Usage comes from the upstream's
/// `usage`, else from the chunks delivered to the client (one token each, the prompt at ~4 bytes
/// per token); priced with the model's prices (or usage.cost with billing.cost_source =
/// "upstream") and the matching pricing rule.
std::optional<Recorded> record(App& app, const RequestCtx& ctx, const Outcome& out);

/// The usage row's request_metadata: {"endpoint","stream","max_tokens","body_bytes"}.
std::string request_metadata(const RequestCtx& ctx);
/// The crash journal's intent of an admitted request (sql/intent_journal.hpp), journaled just
/// before its first byte goes upstream.
sql::Intent intent_of(const RequestCtx& ctx);

}  // namespace tollgate
