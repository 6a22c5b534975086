// Phase 4, the admit path of Admitter (see admission.hpp): admissions batched per account and
// event-loop turn, the account's balance loaded into Redis once when it is not cached, and
// request windows Redis reported full refused here until their oldest bucket leaves.
#include "ratelimit/admission.hpp"
#include "ratelimit/admission_detail.hpp"

#include <spdlog/spdlog.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/error.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <unordered_map>

namespace tollgate::ratelimit {

using detail::as_int;
using detail::now_ms;

/// One admit() call, from its request to its verdict.
struct Admitter::AdmitCall {
  explicit AdmitCall(const boost::asio::any_io_executor& ex) : wake(ex) {
    wake.expires_at(boost::asio::steady_timer::time_point::max());
  }
  std::string request_id;
  pricing::Micros hold = 0, overdraft = 0;
  Admission result;  ///< windows and token estimate from admit(); the rest from its batch
  bool done = false;
  boost::asio::steady_timer wake;  ///< never expires by itself: cancelled when `result` is final
};

boost::asio::awaitable<Admission> Admitter::admit(const keys::KeyRecord& key, const std::string& request_id,
                                                  pricing::Micros hold, std::int64_t token_estimate) {
  auto call = std::make_shared<AdmitCall>(ex_);
  call->request_id = request_id;
  call->hold = hold;
  call->overdraft = key.overdraft_micros;
  call->result.token_estimate = token_estimate;
  call->result.windows = windows_for(key, token_estimate, hold, now_ms());
  if (refused_locally(call->result)) co_return std::move(call->result);
  const std::string account = key.user_id;
  auto& queue = admit_queues_[account];
  queue.push_back(call);
  if (queue.size() == 1) {
    // The first of this event-loop turn for the account: the others that are ready now queue
    // behind it while it yields once, then it sends them all in one script call.
    co_await boost::asio::post(ex_, boost::asio::use_awaitable);
    co_await run_batch(account);
  } else {
    co_await call->wake.async_wait(boost::asio::as_tuple(boost::asio::use_awaitable));
    if (!call->done) call->result.verdict = Verdict::unavailable;  // the caller was cancelled
  }
  co_return std::move(call->result);
}

namespace {
/// Reads a request's answer from admit.lua into its Admission; false if malformed.
bool read_verdict(const RedisReply& r, Admission& a, bool& uncached, int& unseeded) {
  if (r.type != RedisReply::Type::array || r.elements.size() != 3 + 3 * a.windows.size()) return false;
  const auto& e = r.elements;
  for (std::size_t i = 0; i < a.windows.size(); ++i) {
    a.windows[i].remaining = as_int(e[3 + 3 * i]);
    a.windows[i].reset_ms = as_int(e[4 + 3 * i]);
    a.windows[i].bucket = as_int(e[5 + 3 * i]);
  }
  uncached = false;
  unseeded = -1;
  switch (as_int(e[0])) {
    case 0:
      a.verdict = Verdict::admitted;
      a.available = as_int(e[1]);
      return true;
    case 1:
      a.verdict = Verdict::rate_limited;
      a.limited = static_cast<int>(as_int(e[1])) - 1;
      a.retry_after_ms = as_int(e[2]);
      return a.limited >= 0 && static_cast<std::size_t>(a.limited) < a.windows.size();
    case 2:
      a.verdict = Verdict::insufficient_balance;
      a.available = as_int(e[1]);
      return true;
    case 3:
      uncached = true;
      return true;
    case 4:  // released already (answered 503 before Redis ran it)
      a.verdict = Verdict::unavailable;
      return true;
    case 5:  // a spend window Redis has no count for yet: seeded from Postgres, then again
      unseeded = static_cast<int>(as_int(e[1])) - 1;
      return unseeded >= 0 && static_cast<std::size_t>(unseeded) < a.windows.size() && a.windows[unseeded].spend;
    default:
      return false;
  }
}
}  // namespace

std::vector<std::shared_ptr<Admitter::AdmitCall>> Admitter::take_batch(const std::string& account) {
  auto it = admit_queues_.find(account);
  std::vector<std::shared_ptr<AdmitCall>> batch;
  if (it == admit_queues_.end()) return batch;
  if (it->second.size() <= admit_batch_max) {
    batch = std::move(it->second);
    admit_queues_.erase(it);
    return batch;
  }
  auto cut = it->second.begin() + static_cast<std::ptrdiff_t>(admit_batch_max);
  batch.assign(std::make_move_iterator(it->second.begin()), std::make_move_iterator(cut));
  it->second.erase(it->second.begin(), cut);
  // The rest goes as the next batch (whose first call is waiting, not leading).
  boost::asio::co_spawn(ex_, run_batch(account), boost::asio::detached);
  return batch;
}

boost::asio::awaitable<void> Admitter::run_batch(std::string account) {
  std::vector<std::shared_ptr<AdmitCall>> batch = take_batch(account);
  std::vector<AdmitCall*> todo;
  for (auto& c : batch) todo.push_back(c.get());
  try {
    AccountKeys ak(account);
    bool balance_loaded = false, recovered = false;
    int seed_rounds = 0;  // a request has at most two spend windows (key, account)
    while (!todo.empty()) {
      if (verify_epoch_ && !epoch_.empty()) co_await poll_epoch();  // after a connection problem
      co_await wait_fence();
      // The distinct windows of the batch (window_ms, buckets), then each request.
      std::vector<std::string> keys{ak.balance, ak.holds, ak.hold_amounts, ak.released, epoch_key, holds_due_key};
      const std::int64_t sent_at = now_ms();
      std::vector<std::string> args{std::to_string(sent_at), std::to_string(cfg_.hold_ttl.count()), epoch_, account, ""};
      std::vector<std::string> requests;
      std::unordered_map<std::string, std::size_t> window_index;
      for (AdmitCall* c : todo) {
        const auto& ws = c->result.windows;
        requests.push_back(c->request_id);
        requests.push_back(std::to_string(c->hold));
        requests.push_back(std::to_string(c->overdraft));
        requests.push_back(std::to_string(ws.size()));
        for (const auto& w : ws) {
          auto [at, fresh] = window_index.try_emplace(w.key, window_index.size() + 1);
          if (fresh) {
            keys.push_back(w.key);
            if (w.spend) {  // a calendar period: its end (0: never), and no buckets
              args.push_back(std::to_string(w.period_end_ms == INT64_MAX ? 0 : w.period_end_ms));
              args.push_back("0");
            } else {
              args.push_back(std::to_string(w.window_ms));
              args.push_back(std::to_string(cfg_.buckets));
            }
          }
          requests.push_back(std::to_string(at->second));
          requests.push_back(std::to_string(w.limit));
          requests.push_back(std::to_string(w.cost));
        }
      }
      args[4] = std::to_string(window_index.size());
      args.insert(args.end(), std::make_move_iterator(requests.begin()), std::make_move_iterator(requests.end()));
      auto [ec, reply] = co_await eval(script_admit, keys, args);
      if (!ec && reply.is_error() && reply.str.rfind("TGEPOCH", 0) == 0) {
        // Redis lost its state, or this Admitter has not registered its holds under its epoch
        // yet (first contact): re-register, then try again (unless fenced meanwhile).
        if (recovered) break;
        recovered = true;
        std::string epoch;
        if (reply.str.size() > 8)
          epoch = reply.str.substr(8);
        else
          epoch = co_await current_epoch();  // none: make one
        if (epoch.empty()) break;
        const bool restored = co_await recover(epoch);
        if (!restored) break;
        continue;
      }
      if (ec || reply.type != RedisReply::Type::array || reply.elements.size() != todo.size()) {
        if (!ec) spdlog::error("admission script: unexpected reply {}", reply.str);
        // Refused connections never ran it; anything else (a timeout, a dropped link) may have.
        if (ec && ec != boost::asio::error::connection_refused)
          for (AdmitCall* c : todo) release_unanswered(account, c->request_id, sent_at, c->result);
        break;
      }
      std::vector<AdmitCall*> uncached, unseeded;
      std::vector<Window> to_seed;
      for (std::size_t i = 0; i < todo.size(); ++i) {
        bool not_cached = false;
        int unseeded_window = -1;
        Admission& a = todo[i]->result;
        if (!read_verdict(reply.elements[i], a, not_cached, unseeded_window)) {
          spdlog::error("admission script: unexpected reply for {}", todo[i]->request_id);
          a.verdict = Verdict::unavailable;
        } else if (unseeded_window >= 0) {
          unseeded.push_back(todo[i]);
          const Window& w = a.windows[static_cast<std::size_t>(unseeded_window)];
          if (std::none_of(to_seed.begin(), to_seed.end(), [&](const Window& x) { return x.key == w.key; }))
            to_seed.push_back(w);
        } else if (not_cached) {
          uncached.push_back(todo[i]);
        } else if (a.verdict == Verdict::rate_limited) {
          remember_full(a, sent_at);
        } else if (a.verdict == Verdict::admitted) {
          // Known until settled: re-registered if Redis loses its state, extended while alive.
          live_holds_[todo[i]->request_id] = LiveHold{account, todo[i]->hold, sent_at + cfg_.hold_ttl.count()};
          a.admitter = this;
          a.request_id = todo[i]->request_id;
          a.extend_at_ms = sent_at + cfg_.hold_ttl.count() / 3;
        }
      }
      if (!unseeded.empty()) {
        // Seeded once per window, then decided again with the others still waiting; a request
        // whose spend window could not be seeded gets no verdict (unavailable).
        if (++seed_rounds > 2 || !co_await seed_spend(std::move(to_seed))) {
          for (AdmitCall* c : unseeded) c->result.verdict = Verdict::unavailable;
          unseeded.clear();
        }
        if (!uncached.empty() && !balance_loaded) {
          balance_loaded = true;
          const BalanceLoad loaded = co_await cache_balance(account);
          if (loaded == BalanceLoad::unknown_account)
            for (AdmitCall* c : uncached) c->result.verdict = Verdict::insufficient_balance;
          if (loaded != BalanceLoad::cached) uncached.clear();
        }
        uncached.insert(uncached.end(), unseeded.begin(), unseeded.end());
        todo = std::move(uncached);
        continue;
      }
      todo = std::move(uncached);
      if (todo.empty() || balance_loaded) break;
      balance_loaded = true;
      const BalanceLoad loaded = co_await cache_balance(account);
      if (loaded == BalanceLoad::unknown_account) {
        for (AdmitCall* c : todo) c->result.verdict = Verdict::insufficient_balance;
        todo.clear();
      }
      if (loaded == BalanceLoad::failed) break;
    }
  } catch (const std::exception& e) {
    spdlog::error("admission of {} request(s) failed: {}", todo.size(), e.what());
  }
  for (AdmitCall* c : todo) c->result.verdict = Verdict::unavailable;  // no verdict from Redis
  for (auto& c : batch) {
    c->done = true;
    c->wake.cancel();  // wakes the calls waiting for this batch
  }
}

/// One balance load in flight: its outcome, and a timer that never expires by itself, cancelled
/// when the outcome is known (that wakes every request waiting for it).
struct Admitter::BalanceLoadInFlight {
  explicit BalanceLoadInFlight(const boost::asio::any_io_executor& ex) : done(ex) {
    done.expires_at(boost::asio::steady_timer::time_point::max());
  }
  boost::asio::steady_timer done;
  bool finished = false;
  BalanceLoad outcome = BalanceLoad::failed;
};

boost::asio::awaitable<Admitter::BalanceLoad> Admitter::cache_balance(std::string account) {
  if (auto it = balance_loads_.find(account); it != balance_loads_.end()) {
    std::shared_ptr<BalanceLoadInFlight> load = it->second;
    co_await load->done.async_wait(boost::asio::as_tuple(boost::asio::use_awaitable));
    co_return load->finished ? load->outcome : BalanceLoad::failed;  // not finished: we were cancelled
  }
  auto load = std::make_shared<BalanceLoadInFlight>(ex_);
  balance_loads_.emplace(account, load);
  BalanceLoad outcome = BalanceLoad::failed;
  try {
    outcome = co_await load_balance_into_redis(account);
  } catch (const std::exception& ex) {
    spdlog::error("admission: loading the balance failed: {}", ex.what());
  }
  balance_loads_.erase(account);
  load->outcome = outcome;
  load->finished = true;
  load->done.cancel();  // wakes the waiters
  co_return outcome;
}

boost::asio::awaitable<Admitter::BalanceLoad> Admitter::load_balance_into_redis(std::string account) {
  auto bal = co_await load_balance_(account);
  if (!bal) co_return BalanceLoad::unknown_account;
  // Named vectors: GCC 12 mishandles braced temporaries inside co_await expressions.
  AccountKeys ak(account);
  std::vector<std::string> sync_keys{ak.balance, ak.pending, ak.committed};
  std::vector<std::string> sync_args{std::to_string(bal->first), std::to_string(bal->second),
                                     std::to_string(now_ms())};
  auto [ec, reply] = co_await eval(script_sync, sync_keys, sync_args);
  co_return ec || reply.is_error() ? BalanceLoad::failed : BalanceLoad::cached;
}


boost::asio::awaitable<bool> Admitter::seed_spend(std::vector<Window> windows) {
  for (const Window& w : windows) {
    pricing::Micros charged = 0;
    try {
      if (load_spend_) charged = co_await load_spend_(w.spend_scope, w.spend_owner, w.period_start_ms);
    } catch (const std::exception& e) {
      spdlog::error("admission: reading what the {} spent this period failed: {}", w.spend_scope, e.what());
      co_return false;
    }
    std::vector<std::string> seed_keys{w.key};
    std::vector<std::string> seed_args{std::to_string(charged),
                                       std::to_string(w.period_end_ms == INT64_MAX ? 0 : w.period_end_ms)};
    auto [ec, reply] = co_await eval(script_spend_seed, seed_keys, seed_args);
    if (ec || reply.is_error()) co_return false;
  }
  co_return true;
}

// ------------------------------------------------------------------ windows Redis reported full

bool Admitter::refused_locally(Admission& a) {
  if (full_windows_.empty()) return false;
  const std::int64_t now = now_ms();
  for (std::size_t i = 0; i < a.windows.size(); ++i) {
    const Window& w = a.windows[i];
    if (w.tokens || w.spend) continue;
    auto it = full_windows_.find(w.key);
    if (it == full_windows_.end()) continue;
    const FullWindow& full = it->second;
    if (now >= full.until_ms || full.limit != w.limit) {  // room again, or the limit changed
      full_windows_.erase(it);
      continue;
    }
    // The headers report what Redis last said of each window; a window it said nothing about
    // (another key of the account) sends the request to Redis.
    std::vector<Window> windows = a.windows;
    for (Window& x : windows) {
      auto seen = std::find_if(full.seen.begin(), full.seen.end(), [&](const SeenWindow& s) { return s.key == x.key; });
      if (seen == full.seen.end()) return false;
      x.remaining = seen->remaining;
      x.reset_ms = std::max<std::int64_t>(0, seen->reset_at_ms - now);
    }
    windows[i].remaining = 0;
    a.windows = std::move(windows);
    a.verdict = Verdict::rate_limited;
    a.limited = static_cast<int>(i);
    a.retry_after_ms = full.until_ms - now;
    return true;
  }
  return false;
}

void Admitter::remember_full(const Admission& a, std::int64_t sent_at) {
  const Window& w = a.windows.at(static_cast<std::size_t>(a.limited));
  if (w.tokens || w.spend || w.cost != 1 || a.retry_after_ms <= 0) return;  // they shrink at settle
  if (full_windows_.size() >= full_windows_max) {
    const std::int64_t now = now_ms();
    std::erase_if(full_windows_, [now](const auto& kv) { return kv.second.until_ms <= now; });
    if (full_windows_.size() >= full_windows_max) full_windows_.clear();
  }
  FullWindow& full = full_windows_[w.key];
  full.until_ms = sent_at + a.retry_after_ms;
  full.limit = w.limit;
  full.seen.clear();
  for (const Window& x : a.windows) full.seen.push_back({x.key, x.remaining, sent_at + x.reset_ms});
}

}  // namespace tollgate::ratelimit
