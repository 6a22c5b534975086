// The Admitter's periodic task: the Redis epoch (state loss: re-registering holds and pending
// charges), the sweep of expired holds at rest and settles sent again; and the extension of live
// streams' holds. See admission.hpp.
#include "ratelimit/admission.hpp"
#include "ratelimit/admission_detail.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>

#include <algorithm>
#include <map>
#include <random>

namespace tollgate::ratelimit {

using detail::now_ms;

namespace {
/// "<token>:<created ms>:<run_id>" → created ms (0 if malformed).
std::int64_t epoch_created_ms(const std::string& epoch) {
  auto a = epoch.find(':'), b = epoch.rfind(':');
  if (a == std::string::npos || b == a) return 0;
  try {
    return std::stoll(epoch.substr(a + 1, b - a - 1));
  } catch (const std::exception&) {
    return 0;
  }
}
std::string epoch_run_id(const std::string& epoch) {
  auto b = epoch.rfind(':');
  return b == std::string::npos ? std::string() : epoch.substr(b + 1);
}
/// run_id from INFO server's text; empty if absent.
std::string info_run_id(const std::string& info) {
  auto at = info.find("run_id:");
  if (at == std::string::npos) return {};
  auto end = info.find_first_of("\r\n", at);
  return info.substr(at + 7, end == std::string::npos ? std::string::npos : end - at - 7);
}
}  // namespace

// ------------------------------------------------------------------ live streams' holds

void Admission::keep_alive() {
  if (admitter && detail::now_ms() >= extend_at_ms) admitter->extend_hold(*this);
}

void Admitter::extend_hold(Admission& a) {
  const std::int64_t now = now_ms(), ttl = cfg_.hold_ttl.count();
  a.extend_at_ms = now + std::max<std::int64_t>(1, ttl / 3);
  auto it = live_holds_.find(a.request_id);
  if (it == live_holds_.end()) return;  // settled already
  it->second.expiry_ms = now + ttl;
  extensions_.push_back(Extension{it->second.account, a.request_id, it->second.expiry_ms});
  if (extensions_posted_) return;
  extensions_posted_ = true;  // one flush at the end of this event-loop turn
  boost::asio::post(ex_, [this, alive = alive_] {
    if (*alive) flush_extensions();
  });
}

void Admitter::flush_extensions() {
  extensions_posted_ = false;
  std::vector<Extension> all = std::move(extensions_);
  extensions_.clear();
  std::stable_sort(all.begin(), all.end(), [](const Extension& a, const Extension& b) { return a.account < b.account; });
  for (std::size_t i = 0; i < all.size();) {
    std::vector<std::string> args;
    std::size_t j = i;
    for (; j < all.size() && all[j].account == all[i].account; ++j) {
      args.push_back(all[j].request_id);
      args.push_back(std::to_string(all[j].expiry_ms));
    }
    boost::asio::co_spawn(ex_, send_extensions(all[i].account, std::move(args)), boost::asio::detached);
    i = j;
  }
}

boost::asio::awaitable<void> Admitter::send_extensions(std::string account, std::vector<std::string> args) {
  auto alive = alive_;
  AccountKeys ak(account);
  std::vector<std::string> keys{ak.holds, ak.hold_amounts};
  auto [ec, reply] = co_await eval(script_extend, keys, args);
  if (!*alive) co_return;
  // A failure is tried again at the next keep_alive (hold_ttl / 3 later, twice before expiry).
  if (ec || reply.is_error())
    spdlog::warn("extending {} hold(s) of {} failed: {}", args.size() / 2, account, ec ? ec.message() : reply.str);
}

// ------------------------------------------------------------------ the periodic task

boost::asio::awaitable<void> Admitter::tick(std::shared_ptr<bool> alive) {
  for (;;) {
    try {
      co_await poll_epoch();
      if (!*alive) co_return;
      const std::int64_t now = now_ms();
      if (now >= next_sweep_ms_) {
        next_sweep_ms_ = now + sweep_interval.count();
        co_await sweep();
        if (!*alive) co_return;
        // Holds never settled (cannot happen while every admitted request settles): forgotten
        // once expired, so this map stays bounded by the requests in flight.
        std::erase_if(live_holds_, [now](const auto& kv) { return kv.second.expiry_ms < now; });
      }
      if (!retry_settles_.empty() && batches_in_flight_ == 0) {
        spdlog::info("sending {} settle(s) Redis did not take again", retry_settles_.size());
        for (auto& s : std::exchange(retry_settles_, {})) settle(std::move(s));
      }
    } catch (const std::exception& e) {
      spdlog::error("admission's periodic task: {}", e.what());
    }
    if (!*alive) co_return;
    tick_timer_.expires_after(epoch_poll_interval);
    co_await tick_timer_.async_wait(boost::asio::as_tuple(boost::asio::use_awaitable));
    if (!*alive) co_return;
  }
}

boost::asio::awaitable<void> Admitter::poll_epoch() {
  auto alive = alive_;
  std::vector<std::string> get{"GET", epoch_key};
  const bool check_run_id = verify_epoch_ || ++polls_ % 5 == 0;
  auto [ec, value] = co_await redis_.command(get, cfg_.timeout);
  if (ec || !*alive || recovery_) co_return;
  bool changed = value.type != RedisReply::Type::string || value.str != epoch_;
  if (!changed && check_run_id) {
    std::vector<std::string> info{"INFO", "server"};
    auto [iec, server] = co_await redis_.command(info, cfg_.timeout);
    if (iec || !*alive || server.type != RedisReply::Type::string) co_return;
    const std::string run_id = info_run_id(server.str);
    changed = !run_id.empty() && run_id != epoch_run_id(value.str);  // restarted, or failed over
    verify_epoch_ = false;
  }
  if (!changed) co_return;
  std::string epoch = co_await current_epoch();
  if (!*alive || epoch.empty() || epoch == epoch_) co_return;
  co_await recover(epoch);
}

boost::asio::awaitable<std::string> Admitter::current_epoch() {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  std::vector<std::string> keys{epoch_key};
  std::vector<std::string> args{fmt::format("{:016x}", rng())};
  auto [ec, reply] = co_await eval(script_epoch, keys, args);
  if (ec || reply.type != RedisReply::Type::string) {
    spdlog::warn("reading the Redis epoch failed: {}", ec ? ec.message() : reply.str);
    co_return std::string();
  }
  co_return reply.str;
}

/// The restore.lua calls of one recovery in flight: how many are left, whether all succeeded,
/// and a timer that never expires by itself, cancelled when the last one is answered.
struct Admitter::RestoreJoin {
  explicit RestoreJoin(const boost::asio::any_io_executor& ex) : done(ex) {
    done.expires_at(boost::asio::steady_timer::time_point::max());
  }
  boost::asio::steady_timer done;
  std::size_t left = 0;
  bool ok = true;
};

boost::asio::awaitable<bool> Admitter::recover(std::string epoch) {
  if (epoch == epoch_) co_return true;  // done meanwhile (by the periodic task)
  auto alive = alive_;
  if (recovery_) {
    // One at a time. Another batch of this Admitter is re-registering (a burst of more than
    // admit_batch_max on first contact): wait for it rather than answer unavailable.
    auto running = recovery_;
    co_await running->async_wait(boost::asio::as_tuple(boost::asio::use_awaitable));
    co_return *alive && epoch == epoch_;
  }
  recovery_ = std::make_shared<boost::asio::steady_timer>(ex_, boost::asio::steady_timer::time_point::max());
  struct Ended {  // however the recovery ends: the waiters wake, the next recovery may start
    std::shared_ptr<bool> alive;
    Admitter& a;
    ~Ended() {
      if (!*alive || !a.recovery_) return;
      a.recovery_->cancel();
      a.recovery_.reset();
    }
  } ended{alive, *this};
  // What to re-register, per account (copied now: settles may change it while we wait).
  struct Group {
    std::vector<std::string> holds, charges;
  };
  std::map<std::string, Group> groups;
  const std::int64_t now = now_ms();
  std::size_t holds = 0, charges = 0;
  for (const auto& [rid, h] : live_holds_) {
    if (h.expiry_ms <= now) continue;
    auto& g = groups[h.account].holds;
    g.push_back(rid);
    g.push_back(std::to_string(h.amount));
    g.push_back(std::to_string(h.expiry_ms));
    ++holds;
  }
  for (auto& c : pending_.snapshot()) {
    auto& g = groups[c.account].charges;
    g.push_back(std::move(c.request_id));
    g.push_back(std::to_string(c.charge));
    ++charges;
  }
  // One restore.lua per account, all pipelined on the connection.
  auto join = std::make_shared<RestoreJoin>(ex_);
  join->left = groups.size();
  for (auto& [account, g] : groups)
    boost::asio::co_spawn(ex_, restore_account(join, epoch, account, std::move(g.holds), std::move(g.charges)),
                          boost::asio::detached);
  if (join->left > 0) co_await join->done.async_wait(boost::asio::as_tuple(boost::asio::use_awaitable));
  if (!*alive) co_return false;
  const bool ok = join->ok;
  if (ok) {
    if (epoch_.empty())
      spdlog::info("Redis epoch {}: registered {} hold(s) and {} pending charge(s)", epoch, holds, charges);
    else
      spdlog::warn("Redis epoch {} (was {}): Redis lost its state or failed over; re-registered {} hold(s) and {} "
                   "pending charge(s) of {} account(s)", epoch, epoch_, holds, charges,
                   groups.size());
    epoch_ = epoch;
    fence_until_ms_ = epoch_created_ms(epoch) + epoch_fence.count();
    ++generation_;
  }
  co_return ok;
}

boost::asio::awaitable<void> Admitter::restore_account(std::shared_ptr<RestoreJoin> join, std::string epoch,
                                                       std::string account, std::vector<std::string> holds,
                                                       std::vector<std::string> charges) {
  auto alive = alive_;
  AccountKeys ak(account);
  std::vector<std::string> keys{ak.balance, ak.holds, ak.hold_amounts, ak.pending, ak.committed, holds_due_key, epoch_key};
  std::vector<std::string> args{epoch, account, std::to_string(now_ms()), std::to_string(holds.size() / 3)};
  args.insert(args.end(), std::make_move_iterator(holds.begin()), std::make_move_iterator(holds.end()));
  args.insert(args.end(), std::make_move_iterator(charges.begin()), std::make_move_iterator(charges.end()));
  bool ok = false;
  try {
    auto [ec, reply] = co_await eval(script_restore, keys, args);
    ok = !ec && !reply.is_error();
    if (!ok && *alive)
      spdlog::warn("re-registering the holds of {} in Redis failed: {}", account, ec ? ec.message() : reply.str);
  } catch (const std::exception& e) {
    spdlog::error("re-registering the holds of {}: {}", account, e.what());
  }
  if (!*alive) co_return;
  join->ok = join->ok && ok;
  if (--join->left == 0) join->done.cancel();
}

boost::asio::awaitable<void> Admitter::wait_fence() {
  const std::int64_t wait = fence_until_ms_ - now_ms();
  if (wait <= 0) co_return;
  boost::asio::steady_timer t(ex_);
  t.expires_after(std::chrono::milliseconds(std::min<std::int64_t>(wait, epoch_fence.count())));
  co_await t.async_wait(boost::asio::as_tuple(boost::asio::use_awaitable));
}

boost::asio::awaitable<void> Admitter::sweep() {
  auto alive = alive_;
  const std::int64_t now = now_ms();
  std::vector<std::string> due{"ZRANGEBYSCORE", holds_due_key, "-inf", std::to_string(now), "LIMIT", "0",
                               std::to_string(sweep_accounts_max)};
  auto [ec, accounts] = co_await redis_.command(due, cfg_.timeout);
  if (ec || !*alive || accounts.type != RedisReply::Type::array) co_return;
  for (const auto& a : accounts.elements) {
    AccountKeys ak(a.str);
    std::vector<std::string> keys{ak.balance, ak.holds, ak.hold_amounts, holds_due_key};
    std::vector<std::string> args{a.str, std::to_string(now)};
    auto [sec, released] = co_await eval(script_sweep, keys, args);
    if (!*alive || sec) co_return;
    if (released.type == RedisReply::Type::integer && released.integer > 0)
      spdlog::info("sweep: released {} expired hold(s) of {}", released.integer, a.str);
  }
}

}  // namespace tollgate::ratelimit
