#include "ratelimit/admission.hpp"
#include "ratelimit/admission_detail.hpp"
#include "ratelimit/spend_period.hpp"

#include <fmt/format.h>
#include <openssl/sha.h>
#include <spdlog/spdlog.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/error.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>

namespace tollgate::ratelimit {

using detail::now_ms;

// Defined in the generated scripts_embedded.cpp (ratelimit/scripts/*.lua).
extern const char* const embedded_admit_lua;
extern const char* const embedded_settle_lua;
extern const char* const embedded_sync_lua;
extern const char* const embedded_epoch_lua;
extern const char* const embedded_restore_lua;
extern const char* const embedded_sweep_lua;
extern const char* const embedded_extend_lua;
extern const char* const embedded_spend_seed_lua;

namespace {

struct Script {
  std::string source, sha;
  explicit Script(const char* src) : source(src) {
    unsigned char md[SHA_DIGEST_LENGTH];
    SHA1(reinterpret_cast<const unsigned char*>(source.data()), source.size(), md);
    sha = fmt::format("{:02x}", fmt::join(md, md + SHA_DIGEST_LENGTH, ""));
  }
};

const Script& script(int id) {
  static const Script scripts[] = {Script(embedded_admit_lua),   Script(embedded_settle_lua),
                                   Script(embedded_sync_lua),    Script(embedded_epoch_lua),
                                   Script(embedded_restore_lua), Script(embedded_sweep_lua),
                                   Script(embedded_extend_lua),  Script(embedded_spend_seed_lua)};
  return scripts[id];
}

}  // namespace

namespace {
std::atomic<std::int64_t> clock_offset_ms{0};
}

std::int64_t detail::now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch()).count() +
         clock_offset_ms.load(std::memory_order_relaxed);
}

void detail::set_clock_offset_for_tests(std::int64_t offset_ms) { clock_offset_ms = offset_ms; }

std::int64_t detail::as_int(const RedisReply& r) { return r.type == RedisReply::Type::integer ? r.integer : 0; }

const std::string& script_source(int id) { return script(id).source; }
const std::string& script_sha(int id) { return script(id).sha; }

AccountKeys::AccountKeys(const std::string& a)
    : balance("tg:{" + a + "}:bal"), holds("tg:{" + a + "}:holds"), hold_amounts("tg:{" + a + "}:hamt"),
      pending("tg:{" + a + "}:pend"), committed("tg:{" + a + "}:done"), released("tg:{" + a + "}:rel") {}

std::vector<Window> windows_for(const keys::KeyRecord& k, std::int64_t token_estimate, pricing::Micros hold,
                                std::int64_t now) {
  std::vector<Window> out;
  auto add = [&](const keys::Limits& l, const std::string& scope, const std::string& prefix) {
    struct Spec {
      std::int64_t limit;
      const char* name;
      std::int64_t ms;
      bool tokens;
    };
    const Spec specs[] = {{l.requests_per_minute, "requests_per_minute", 60'000, false},
                          {l.requests_per_hour, "requests_per_hour", 3'600'000, false},
                          {l.requests_per_day, "requests_per_day", 86'400'000, false},
                          {l.tokens_per_minute, "tokens_per_minute", 60'000, true}};
    for (const auto& s : specs) {
      if (s.limit <= 0) continue;
      Window w;
      w.key = prefix + s.name;
      w.name = scope + "_" + s.name;
      w.tokens = s.tokens;
      w.limit = s.limit;
      w.window_ms = s.ms;
      w.cost = s.tokens ? token_estimate : 1;
      out.push_back(std::move(w));
    }
  };
  add(k.key_limits, "key", "tg:{" + k.user_id + "}:k:" + k.key_id + ":");
  add(k.account_limits, "account", "tg:{" + k.user_id + "}:a:");
  // Spend limits: one window per calendar period, named by its start, so a request counts in
  // the period it was admitted in (settle corrects that window, whenever it runs).
  auto spend = [&](const keys::SpendLimit& l, const std::string& scope, const std::string& owner,
                   const std::string& prefix) {
    if (!l.set()) return;
    const SpendPeriod p = spend_period(l.reset, now);
    Window w;
    w.key = fmt::format("{}spend:{}:{}", prefix, to_string(l.reset), p.start_ms);
    w.name = scope + "_spend_limit";
    w.spend = true;
    w.limit = l.limit;
    w.cost = hold;
    w.period_start_ms = p.start_ms;
    w.period_end_ms = p.end_ms;
    w.spend_scope = scope;
    w.spend_owner = owner;
    out.push_back(std::move(w));
  };
  spend(k.key_spend, "key", k.key_id, "tg:{" + k.user_id + "}:k:" + k.key_id + ":");
  spend(k.account_spend, "account", k.user_id, "tg:{" + k.user_id + "}:a:");
  return out;
}

Admitter::Admitter(boost::asio::any_io_executor ex, RedisConnection& redis, const AdmissionConfig& cfg,
                   BalanceLoader load_balance, SettledFn on_settled, PendingCharges* pending, SpendLoader load_spend)
    : ex_(std::move(ex)), settle_timer_(ex_), tick_timer_(ex_), redis_(redis), cfg_(cfg),
      load_balance_(std::move(load_balance)), on_settled_(std::move(on_settled)), load_spend_(std::move(load_spend)),
      pending_(pending ? *pending : PendingCharges::process()) {
  boost::asio::co_spawn(ex_, tick(alive_), boost::asio::detached);
}

Admitter::~Admitter() { *alive_ = false; }

boost::asio::awaitable<std::pair<boost::system::error_code, RedisReply>> Admitter::eval(
    int id, const std::vector<std::string>& keys, const std::vector<std::string>& args) {
  std::vector<std::string> argv;
  argv.reserve(3 + keys.size() + args.size());
  argv.push_back("EVALSHA");
  argv.push_back(script(id).sha);
  argv.push_back(std::to_string(keys.size()));
  argv.insert(argv.end(), keys.begin(), keys.end());
  argv.insert(argv.end(), args.begin(), args.end());
  auto res = co_await redis_.command(argv, cfg_.timeout);
  if (!res.first && res.second.is_error() && res.second.str.rfind("NOSCRIPT", 0) == 0) {
    // First use on this Redis (or after a restart/flush): EVAL loads the script.
    argv[0] = "EVAL";
    argv[1] = script(id).source;
    res = co_await redis_.command(std::move(argv), cfg_.timeout);
  }
  if (res.first) verify_epoch_ = true;  // no answer: Redis may have restarted or failed over
  co_return res;
}

void Admitter::release_unanswered(const std::string& account, const std::string& request_id,
                                  std::int64_t sent_ms, const Admission& a) {
  Settlement s;
  s.account = account;
  s.request_id = request_id;
  s.windows = a.windows;
  for (auto& w : s.windows)  // as admit.lua: a spend window's one bucket is 0
    w.bucket = w.spend ? 0 : sent_ms / std::max<std::int64_t>(1, w.window_ms / cfg_.buckets);
  s.token_estimate = a.token_estimate;  // a hold that exists gets its token windows back
  s.release_only = true;
  settle(std::move(s));
}

void Admitter::settle(Settlement s) {
  if (!s.resent) {
    if (!s.release_only) {
      live_holds_.erase(s.request_id);
      pending_.add(s.account, s.request_id, s.charge);  // until Postgres committed it
    }
    s.generation = generation_;
  }
  queued_.push_back(std::move(s));
  if (batches_in_flight_ > 0) return;  // the batch's completion sends what queued meanwhile
  if (queued_.size() >= settle_batch_max) {
    settle_timer_.cancel();
    flush_settles();
  } else if (!timer_armed_) {
    arm_settle_timer();
  }
}

void Admitter::arm_settle_timer() {
  timer_armed_ = true;
  settle_timer_.expires_after(settle_delay);
  settle_timer_.async_wait([this](boost::system::error_code) {
    timer_armed_ = false;
    if (batches_in_flight_ == 0) flush_settles();
  });
}

void Admitter::flush_settles() {
  if (queued_.empty()) return;
  // One batch per account (all of an account's keys are in one hash slot), in queue order.
  std::stable_sort(queued_.begin(), queued_.end(),
                   [](const Settlement& a, const Settlement& b) { return a.account < b.account; });
  std::vector<Settlement> all = std::move(queued_);
  queued_.clear();
  for (std::size_t i = 0; i < all.size();) {
    std::size_t j = i + 1;
    while (j < all.size() && j - i < settle_batch_max && all[j].account == all[i].account) ++j;
    std::vector<Settlement> batch(std::make_move_iterator(all.begin() + static_cast<std::ptrdiff_t>(i)),
                                  std::make_move_iterator(all.begin() + static_cast<std::ptrdiff_t>(j)));
    settling_ += batch.size();
    ++batches_in_flight_;
    boost::asio::co_spawn(ex_, settle_batch(std::move(batch)), boost::asio::detached);
    i = j;
  }
}

boost::asio::awaitable<void> Admitter::settle_batch(std::vector<Settlement> batch) {
  const std::size_t n = batch.size();
  const auto counted = static_cast<std::size_t>(
      std::count_if(batch.begin(), batch.end(), [](const Settlement& s) { return !s.release_only && !s.resent; }));
  try {
    AccountKeys ak(batch.front().account);
    std::vector<std::string> keys{ak.balance, ak.holds, ak.hold_amounts, ak.pending, ak.committed, ak.released};
    std::vector<std::string> args{std::to_string(now_ms()), std::to_string(cfg_.hold_ttl.count())};
    args.reserve(2 + 3 * n);
    for (const auto& s : batch) {
      args.push_back(s.request_id);
      // A settle queued before Redis lost its state: restore.lua re-registered its charge if it
      // is not committed yet; if it is, Postgres' balance has it and Redis' marker is gone.
      const bool stale = s.generation != generation_ && !pending_.contains(s.request_id);
      args.push_back(s.release_only ? "-1" : std::to_string(stale ? 0 : s.charge));
      const std::size_t count_at = args.size();
      args.emplace_back();
      int windows = 0;
      for (const auto& w : s.windows) {
        if (!w.tokens && !w.spend) continue;
        auto k = std::find(keys.begin() + 6, keys.end(), w.key);
        if (k == keys.end()) k = keys.insert(keys.end(), w.key);
        args.push_back(std::to_string(k - keys.begin() - 5));  // 1-based after the 6 account keys
        args.push_back(std::to_string(w.bucket));
        // Token windows: from the estimate to the usage. Spend windows: from the hold to the
        // charge (a release: the hold goes).
        args.push_back(std::to_string(w.spend ? (s.release_only ? 0 : s.charge) - w.cost
                                              : s.actual_tokens - s.token_estimate));
        ++windows;
      }
      args[count_at] = std::to_string(windows);
    }
    auto [ec, reply] = co_await eval(script_settle, keys, args);
    if (ec) {
      // No answer (Redis stalled past the deadline, or the connection dropped): send the batch
      // once more, on a fresh connection if need be. settle.lua is idempotent, so a first
      // attempt that did run in Redis is not counted twice.
      spdlog::info("settle of {} request(s): no answer from Redis ({}); retrying", n, ec.message());
      auto again = co_await eval(script_settle, keys, args);
      ec = again.first;
      reply = std::move(again.second);
    }
    if (ec || reply.is_error()) {
      // No answer: sent again later. An error reply would be the same next time: not kept.
      const bool keep = ec && retry_settles_.size() + n <= retry_settles_max;
      spdlog::warn("settle of {} request(s) in Redis failed ({}), first {}; {}", n, ec ? ec.message() : reply.str,
                   batch.front().request_id,
                   keep ? "sent again when Redis answers" : "their holds expire by themselves");
      if (keep) {
        for (auto& s : batch) {
          s.resent = true;
          retry_settles_.push_back(std::move(s));
        }
      }
    }
  } catch (const std::exception& e) {
    spdlog::error("settle of {} request(s) failed: {}", n, e.what());
  }
  settling_ -= n;
  --batches_in_flight_;
  if (on_settled_ && counted > 0) on_settled_(counted);
  if (batches_in_flight_ == 0 && !queued_.empty() && !timer_armed_) {
    if (queued_.size() >= settle_batch_max)
      flush_settles();
    else
      arm_settle_timer();
  }
}

bool sync_balance(RedisSyncClient& redis, const std::string& account, pricing::Micros credits,
                  std::int64_t version, const std::vector<std::string>& committed_request_ids) {
  PendingCharges::process().committed(committed_request_ids);  // in Postgres' balance now
  AccountKeys ak(account);
  std::vector<std::string> argv{"EVALSHA", script(script_sync).sha, "3", ak.balance, ak.pending, ak.committed,
                                std::to_string(credits), std::to_string(version), std::to_string(now_ms())};
  argv.insert(argv.end(), committed_request_ids.begin(), committed_request_ids.end());
  auto r = redis.command(argv);
  if (r && r->is_error() && r->str.rfind("NOSCRIPT", 0) == 0) {
    argv[0] = "EVAL";
    argv[1] = script(script_sync).source;
    r = redis.command(argv);
  }
  if (!r || r->is_error()) {
    if (r) spdlog::warn("balance sync for {}: {}", account, r->str);
    return false;
  }
  return true;
}

std::string format_reset(std::int64_t ms) {
  if (ms < 0) ms = 0;
  if (ms < 1000) return fmt::format("{}ms", ms);
  std::int64_t h = ms / 3'600'000, m = ms / 60'000 % 60, s = ms / 1000 % 60, frac = ms % 1000;
  std::string sec = frac == 0 ? fmt::format("{}s", s) : fmt::format("{}.{:03}", s, frac);
  if (frac != 0) {
    while (sec.back() == '0') sec.pop_back();
    sec += "s";
  }
  if (h > 0) return fmt::format("{}h{}m{}", h, m, sec);
  if (m > 0) return fmt::format("{}m{}", m, sec);
  return sec;
}

}  // namespace tollgate::ratelimit
