#pragma once
// Phases 6-8 of DESIGN.md: price the usage a request reported (or what was delivered) and append
// its usage record to the journal; the usage writer batches it into Postgres.
#include "proxy/phase.hpp"

#include <cstdint>
#include <optional>
#include <string>

namespace tollgate {

/// What settle (phase 7) needs of a recorded request.
struct Recorded {
  pricing::Micros charge = 0;  ///< credit units (1e-6 USD)
  std::int64_t tokens = 0;     ///< prompt + completion
};

/// What a request is billed (phase 6), as a pure function of what happened.
struct Bill {
  std::int64_t prompt_tokens = 0, completion_tokens = 0;  ///< ≥ 0
  /// Tokens priced apart, parts of prompt_tokens (cached, cache_write) and completion_tokens
  /// (reasoning): from believable usage only, else 0.
  std::int64_t cached_tokens = 0, cache_write_tokens = 0, reasoning_tokens = 0;
  /// Completion tokens that are image output (a part of completion_tokens) and images generated
  /// (Images API): from believable usage only, else 0.
  std::int64_t image_tokens = 0, images = 0;
  pricing::Micros cost = 0;     ///< the upstream cost, credit units
  pricing::Micros charge = 0;   ///< in [0, hold]
  pricing::Micros overrun = 0;  ///< what the computed charge exceeded the hold by
  /// What the upstream reported the request cost (`usage.cost`, USD) in Picos (1e-12 USD),
  /// exact to 12 decimals (finer digits round up); nullopt when it reported none it believes.
  std::optional<pricing::Picos> upstream_cost;
  /// The cost computed from the model's prices differs from upstream_cost by more than 1 %
  /// (believable usage only): tollgate_cost_drift_total.
  bool cost_drift = false;
  std::string status;           ///< success | usage_missing | client_aborted | upstream_aborted | upstream_error
};

/// Bills an outcome: the upstream's usage when believable, else what was delivered (one token
/// per output event, or ~4 bytes per token of a JSON body; the prompt as reported when
/// plausible, else ~4 bytes per token of `body_bytes`); priced with `prices`, every component
/// at its own price plus the model's request fee (pricing::PricingSnapshot::cost), or at the
/// reported cost when `cost_from_upstream` or when the usage holds image output the model has
/// no price for (reported_cost_to_charge in record.cpp); the charge never above `hold` (credit
/// units). A model without a model_prices row is billed nothing.
Bill bill(const Outcome& out, std::size_t body_bytes, pricing::Micros hold, const pricing::PricingSnapshot& prices,
          const std::string& model, bool cost_from_upstream);

/// What the request is charged if what ctx.out says now is all there is (credit units): bill()
/// of it. The dialects write it into the usage the client gets (`usage.cost`, USD) as the usage
/// passes, so it equals the usage record's charge whenever that usage is billed.
pricing::Micros quote(const RequestCtx& ctx);

/// Records a request that reached the upstream (nullopt, nothing recorded, otherwise), whatever
/// happened after: client abort, upstream error mid-stream. Usage comes from the upstream's
/// `usage`, else from the chunks delivered to the client (one token each, the prompt at ~4 bytes
/// per token); priced with the model's prices (or usage.cost with billing.cost_source =
/// "upstream") and the matching pricing rule.
/// Also names the serving upstream (usage_logs.upstream) and the failed attempts before it
/// (response_metadata "attempts"), which are never billed.
std::optional<Recorded> record(App& app, const RequestCtx& ctx);

/// The usage row's request_metadata: {"endpoint","stream","max_tokens","body_bytes"}.
std::string request_metadata(const RequestCtx& ctx);
/// The crash journal's intent of an admitted request (sql/intent_journal.hpp), journaled just
/// before its first byte goes upstream.
sql::Intent intent_of(const RequestCtx& ctx);

}  // namespace tollgate
