#pragma once
// Crash recovery of requests in flight (sql/intent_journal.hpp): at start, each intent an
// earlier process began and never ended becomes one usage record with status `interrupted`,
// charged for what its journal shows was delivered, never more than its hold.
#include "pricing/pricing.hpp"
#include "ratelimit/admission.hpp"
#include "sql/intent_journal.hpp"
#include "sql/usage_writer.hpp"

#include <vector>

namespace tollgate {

/// Appends an `interrupted` usage record for every sent intent in journal.recovered() to `usage`
/// (its journal, then Postgres), then forgets the recovered files. Charge: nothing delivered →
/// nothing charged; otherwise one completion token per delivered output event and the prompt
/// as the upstream reported it (else the intent's estimate), priced with `prices`, capped at the
/// hold. Returns the settlements that release the recovered requests' Redis holds (those that
/// had one, sent or not: an intent never sent gets no row, its hold is released at no charge). A replayed or doubly recovered request keeps one row (request_id is unique).
std::vector<ratelimit::Settlement> record_interrupted(sql::IntentJournal& journal, sql::UsageWriter& usage,
                                                      const pricing::PricingSnapshot& prices);

}  // namespace tollgate
