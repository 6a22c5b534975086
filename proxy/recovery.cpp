#include "proxy/recovery.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>

namespace tollgate {

std::vector<ratelimit::Settlement> record_interrupted(sql::IntentJournal& journal, sql::UsageWriter& usage,
                                                      const pricing::PricingSnapshot& prices) {
  std::vector<ratelimit::Settlement> settles;
  pricing::Micros charged = 0;
  std::size_t rows = 0;
  for (const auto& oi : journal.recovered()) {
    const sql::Intent& i = oi.intent;
    if (!oi.sent) {  // admitted, never sent upstream: no usage, only its hold to release
      if (i.held_in_redis) {
        ratelimit::Settlement s;
        s.account = i.user_id;
        s.request_id = i.request_id;
        settles.push_back(std::move(s));
      }
      continue;
    }
    ++rows;
    sql::UsageRecord r;
    r.request_id = i.request_id;
    r.user_id = i.user_id;
    r.api_key_id = i.api_key_id;
    r.model = i.model;
    r.created_at_us = i.created_at_us;
    r.status = "interrupted";
    r.request_metadata_json = i.request_metadata_json;
    const pricing::ModelPrice* price = prices.price(i.model);
    if (oi.delivered > 0 && price) {
      r.prompt_tokens = oi.prompt_tokens >= 0 ? oi.prompt_tokens : i.prompt_estimate;
      r.completion_tokens = oi.delivered;
      // Priced as bill() prices a request without usage details: plain prompt and completion
      // tokens, plus the request fee.
      pricing::Metered m;
      m.prompt = r.prompt_tokens;
      m.completion = r.completion_tokens;
      m.requests = 1;
      auto c = prices.charge(i.model, pricing::PricingSnapshot::cost(*price, m));
      r.cost = c.cost;
      r.charge = std::min(c.charge, i.hold);
    }
    r.response_metadata_json = fmt::format(R"({{"interrupted":true,"delivered_chunks":{},"hold_micros":{}}})",
                                           oi.delivered, i.hold);
    charged += r.charge;
    if (i.held_in_redis) {
      ratelimit::Settlement s;
      s.account = i.user_id;
      s.request_id = i.request_id;
      s.charge = r.charge;
      s.actual_tokens = r.prompt_tokens + r.completion_tokens;
      settles.push_back(std::move(s));
    }
    usage.append(std::move(r));
  }
  if (!journal.recovered().empty())
    spdlog::warn("recovery: {} interrupted request(s) recorded, charged {} credit units in all; {} hold(s) released",
                 rows, charged, settles.size());
  journal.forget_recovered();
  return settles;
}

}  // namespace tollgate
