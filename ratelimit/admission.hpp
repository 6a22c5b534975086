#pragma once
// Phase 4 (admit) and phase 7 (settle): one Redis round trip each, Lua scripts in
// ratelimit/scripts/ run with EVALSHA.
//
// Sliding windows. A window of length W with limit N is kept as B = 60 buckets of width
// g = W / B in one Redis hash (bucket index → count, plus the running total and the oldest live
// bucket). A request arriving at time t is counted against every admission in buckets
// floor(t/g) − B … floor(t/g), i.e. in an interval that contains (t − W, t] and lies inside
// (t − W − g, t]. Hence:
//   * never over-admits: any interval of length W holds at most N admitted requests (tokens),
//     across any number of instances, because the check and the increment are one script;
//   * under-admits only by one bucket: a request is refused only if N were admitted in the last
//     W + g; at saturation at least N·B/(B+1) ≥ 98.3 % of N are admitted per W.
//   * memory per key and window: at most B + 3 hash fields, expiring after W + 2g idle.
// Tokens per minute are counted at admission from the worst case (prompt bytes + max_tokens)
// and corrected to the real usage at settle (in the bucket they were added to).
//
// Balance holds. Per account (all keys in one hash slot, `tg:{account}:…`): the cached balance
// {credits, version, held, pending}, the holds (request → amount, expiry) and the pending
// charges (settled in Redis, not yet committed to Postgres). A request is admitted only if
// credits − held − pending + overdraft ≥ its worst-case cost, which is then held. Settle
// releases the hold and adds the real charge to pending; when the usage writer commits the
// batch to Postgres, sync.lua installs the new credits (if its version is newer — updates from
// several instances may arrive out of order) and drops those requests from pending. A hold left
// by a crashed instance expires after `hold_ttl` (the maximum request duration); a live stream's
// hold is extended while it runs (Admission::keep_alive). Expired holds are swept at rest: the
// holds-due zset (`tg:holds-due`, account → earliest expiry of its holds) tells every instance's
// sweep which accounts to visit, so the sweep costs Redis nothing for accounts without due holds.
//
// Redis state loss. The Redis epoch (`tg:epoch`, epoch.lua: a random token, its creation time
// and Redis' run_id) changes when Redis lost its state: it is missing after a restart without
// persistence or a flush, and made anew when Redis' run_id changed (a restart, a failover).
// admit.lua admits only for a caller that names the current epoch. An Admitter that sees a new
// epoch (at an admission, or at its periodic poll) re-registers the holds of its requests in
// flight and this process' charges not yet committed to Postgres (restore.lua), and nobody is
// admitted until `epoch_fence` after the epoch was made, so every instance has re-registered
// before any admission (admissions wait meanwhile). The balance is then loaded from Postgres as for any
// account not cached. Redis keys of one account share a hash slot, but the epoch and the
// holds-due zset are global: one Redis (with replicas), not Redis Cluster.
#include "keys/key_cache.hpp"
#include "pricing/money.hpp"
#include "ratelimit/pending_charges.hpp"
#include "ratelimit/redis_client.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/steady_timer.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace tollgate::ratelimit {

/// What to do when Redis does not answer within the admission timeout.
enum class FailureMode {
  fail_closed,  ///< 503 (default): nothing is admitted that could not be checked
  fail_open,    ///< skip rate limits; the balance is checked in Postgres instead
};

struct AdmissionConfig {
  bool enabled = true;
  std::chrono::milliseconds timeout{50};          ///< per Redis round trip
  FailureMode failure_mode = FailureMode::fail_closed;
  std::chrono::milliseconds hold_ttl{600'000};    ///< maximum request duration
  int buckets = 60;                               ///< per window (see the bound above)
};

/// One window that applies to a request: a sliding window of requests or tokens, or a spend
/// limit's calendar period (spend: limit and cost in credit units, 1e-6 USD).
struct Window {
  std::string key;         ///< Redis hash key
  std::string name;        ///< e.g. "key_requests_per_minute", "key_spend_limit"
  bool tokens = false;     ///< a token window (else requests)
  bool spend = false;      ///< a spend limit (keys::SpendLimit): counted in credit units
  std::int64_t limit = 0;
  std::int64_t window_ms = 0;  ///< sliding windows; a spend window: 0
  std::int64_t cost = 0;   ///< 1 request, the token estimate, or the hold (spend)
  /// A spend window's period, Unix ms (end INT64_MAX: it never resets); what Postgres is asked
  /// for when Redis has no window for it yet.
  std::int64_t period_start_ms = 0, period_end_ms = 0;
  std::string spend_scope;  ///< "key" | "account"
  std::string spend_owner;  ///< the api_keys.id or users.id it limits
  // Filled from the script's answer:
  std::int64_t remaining = 0;
  std::int64_t reset_ms = 0;
  std::int64_t bucket = 0;
};

enum class Verdict { admitted, rate_limited, insufficient_balance, unavailable };

class Admitter;

struct Admission {
  Verdict verdict = Verdict::unavailable;
  std::vector<Window> windows;
  int limited = -1;                  ///< index into windows when rate_limited
  std::int64_t retry_after_ms = 0;
  pricing::Micros available = 0;     ///< balance left after the hold (or short of it)
  std::int64_t token_estimate = 0;

  /// For a stream, called as events arrive (cheap: a clock read): keeps the request's hold from
  /// expiring while the stream is alive, by asking Redis to move its expiry to now + hold_ttl at
  /// most every hold_ttl / 3. Does nothing for a request not admitted by an Admitter. Call it on
  /// the Admitter's event loop, while the Admitter lives.
  void keep_alive();
  // Set by the Admitter when admitted:
  Admitter* admitter = nullptr;
  std::string request_id;
  std::int64_t extend_at_ms = 0;  ///< Unix ms from when keep_alive extends the hold
};

/// Loads (credits in credit units, version) of an account from Postgres; nullopt if unknown.
using BalanceLoader =
    std::function<boost::asio::awaitable<std::optional<std::pair<pricing::Micros, std::int64_t>>>(std::string)>;

/// What Postgres says a key ("key", api_keys.id) or an account ("account", users.id) was charged
/// (credit units) in usage rows created at or after `since_ms` (Unix ms). Throws when Postgres
/// fails (the admission is then unavailable).
using SpendLoader =
    std::function<boost::asio::awaitable<pricing::Micros>(std::string scope, std::string owner, std::int64_t since_ms)>;

/// One request to settle (phase 7): what settle.lua needs.
struct Settlement {
  std::string account, request_id;
  pricing::Micros charge = 0;       ///< what the request costs, credit units (0: nothing)
  std::vector<Window> windows;      ///< from its Admission; token windows are corrected
  std::int64_t actual_tokens = 0;   ///< prompt + completion tokens the upstream reported
  std::int64_t token_estimate = 0;  ///< what admission counted
  /// Queued by admit() itself for an admission Redis did not answer in time (not counted by
  /// SettledFn): releases the hold in case the script did run, and keeps admit.lua from placing
  /// it if the script has not run yet (still in a stalled Redis' socket).
  bool release_only = false;
  std::uint64_t generation = 0;  ///< set by settle(): the Admitter's epoch generation then
  bool resent = false;           ///< sent again after failing (not counted by SettledFn again)
};

/// Called on the event loop after `n` queued settles got their answer (or failed twice: they are
/// then sent again later, and not counted again).
using SettledFn = std::function<void(std::size_t n)>;

/// Redis key names (one hash slot per account).
struct AccountKeys {
  explicit AccountKeys(const std::string& account);
  std::string balance, holds, hold_amounts, pending, committed, released;
};

/// Global keys: the Redis epoch (epoch.lua) and the holds-due zset (sweep.lua).
inline constexpr const char* epoch_key = "tg:epoch";
inline constexpr const char* holds_due_key = "tg:holds-due";

/// The windows that apply to a key: its own overrides and its account's limits
/// (0 = unlimited, no window), then its spend limits (key, account) for the period containing
/// `now_ms`, each costing `hold` credit units.
std::vector<Window> windows_for(const keys::KeyRecord& key, std::int64_t token_estimate, pricing::Micros hold = 0,
                                std::int64_t now_ms = 0);

/// Admission and settle over one per-thread Redis connection. Not thread-safe.
class Admitter {
 public:
  /// `ex`: the event loop `redis` runs on (settle batches are spawned there).
  /// Starts a periodic task on `ex` (every epoch_poll_interval): it checks the Redis epoch,
  /// sweeps due holds and sends settles Redis did not take again. `pending`: where settled,
  /// uncommitted charges are remembered (null: PendingCharges::process()).
  /// `load_spend`: seeds a spend limit's window the first time Redis has none for its period
  /// (none given: such windows start at 0 — tests only).
  Admitter(boost::asio::any_io_executor ex, RedisConnection& redis, const AdmissionConfig& cfg,
           BalanceLoader load_balance, SettledFn on_settled = {}, PendingCharges* pending = nullptr,
           SpendLoader load_spend = {});
  ~Admitter();
  Admitter(const Admitter&) = delete;
  Admitter& operator=(const Admitter&) = delete;

  /// One round trip (two plus a Postgres read when the account's balance is not cached yet).
  /// `hold` in credit units; `token_estimate` in tokens. Never throws for Redis trouble:
  /// returns Verdict::unavailable when Redis did not answer a round trip within the configured
  /// timeout (counted from when the command was written, see RedisConnection::command).
  /// The admissions of one account that are ready in the same event-loop turn go to Redis as one
  /// admit.lua call (up to `admit_batch_max`), which decides them in the order they were made
  /// exactly as one call each would: under a burst Redis runs one script per account and turn,
  /// not one per request. (The first of a turn yields once to let the others queue.) Requests
  /// that find the account's balance uncached share one Postgres read and one sync.lua call per
  /// Admitter, then run admit.lua again.
  /// A request window (not a token window) Redis reported full is refused here, without Redis,
  /// until the time Redis gave for its oldest bucket to leave (the Retry-After), unless its limit
  /// changed meanwhile: until then a request window only grows, so Redis would refuse too. Such
  /// a refusal carries the remaining counts and resets Redis last reported for the request's
  /// windows (a request with a window Redis did not report goes to Redis). So a flood on a key
  /// that is over its limit costs Redis one script call per event loop and Retry-After.
  /// An admission whose script was sent but not answered in time (Redis slow, or this event
  /// loop too late to read the answer) may still have placed its hold: a release by request id
  /// follows it on the same connection (a settle with no charge that also marks the request id
  /// released, so an admit.lua Redis runs later places no hold), sent again until Redis answers.
  /// While the Redis epoch is new (`epoch_fence` after it was made) admissions wait for the
  /// fence to pass; one that finds the epoch changed re-registers this Admitter's holds first.
  boost::asio::awaitable<Admission> admit(const keys::KeyRecord& key, const std::string& request_id,
                                          pricing::Micros hold, std::int64_t token_estimate);

  /// Queues a settle and returns at once (off the request path): releases the hold, counts the
  /// charge as pending and corrects token windows to the real tokens. Queued settles go to
  /// Redis in batches, one EVALSHA per account with up to `settle_batch_max` requests, sent
  /// `settle_delay` after the first was queued (at once when `settle_batch_max` are queued);
  /// while batches are in flight new settles wait for the next one. So admissions, which a
  /// client is waiting for, are not queued in Redis behind settles, and under load one script
  /// call settles many requests. Holds are released at most ~settle_delay + a round trip late.
  /// A batch Redis did not answer (deadline passed, connection dropped) is sent once more
  /// (settle.lua is idempotent). A batch that got no answer twice is sent again by the periodic
  /// task until Redis takes it (up to `retry_settles_max` settles; beyond that, and after an
  /// error reply, it is logged and its holds expire by themselves after `hold_ttl`); on_settled
  /// is called once either way. The settle also moves the request from the holds in flight to
  /// the pending charges (PendingCharges) until Postgres commits it.
  void settle(Settlement s);
  /// Moves the expiry of a live request's hold to now + hold_ttl (see Admission::keep_alive);
  /// extensions of one event-loop turn go to Redis as one extend.lua call per account.
  void extend_hold(Admission& a);
  /// Holds of admitted requests not settled yet (what is re-registered after a state loss).
  std::size_t holds_in_flight() const { return live_holds_.size(); }
  /// The Redis epoch this Admitter's holds are registered under (empty before the first contact).
  const std::string& epoch() const { return epoch_; }
  /// Settles queued or in flight.
  std::size_t settles_pending() const { return queued_.size() + settling_; }

  static constexpr std::size_t settle_batch_max = 256;
  static constexpr std::size_t admit_batch_max = 256;
  /// Full windows remembered per Admitter (expired ones are dropped when it is reached).
  static constexpr std::size_t full_windows_max = 10'000;
  static constexpr std::chrono::microseconds settle_delay{1000};
  static constexpr std::chrono::milliseconds epoch_poll_interval{200};
  /// No admission until this long after a new epoch was made: every instance's poll has seen it
  /// and re-registered its holds by then.
  static constexpr std::chrono::milliseconds epoch_fence{1000};
  static constexpr std::chrono::milliseconds sweep_interval{1000};
  static constexpr std::size_t sweep_accounts_max = 64;  ///< per sweep
  static constexpr std::size_t retry_settles_max = 100'000;

 private:
  void flush_settles();
  void release_unanswered(const std::string& account, const std::string& request_id, std::int64_t sent_ms,
                          const Admission& a);
  void arm_settle_timer();
  boost::asio::awaitable<void> settle_batch(std::vector<Settlement> batch);

  boost::asio::awaitable<std::pair<boost::system::error_code, RedisReply>> eval(
      int script, const std::vector<std::string>& keys, const std::vector<std::string>& args);

  struct AdmitCall;
  /// Takes the next batch (up to admit_batch_max) of the account's queued admissions.
  std::vector<std::shared_ptr<AdmitCall>> take_batch(const std::string& account);
  /// Sends the account's next batch of admissions, sets each one's verdict and wakes them.
  boost::asio::awaitable<void> run_batch(std::string account);

  /// A request window Redis reported full, and what it said of the windows of that request.
  struct SeenWindow {
    std::string key;
    std::int64_t remaining = 0;
    std::int64_t reset_at_ms = 0;  ///< Unix ms
  };
  struct FullWindow {
    std::int64_t until_ms = 0;  ///< Unix ms when its oldest bucket leaves
    std::int64_t limit = 0;     ///< the limit it was full at
    std::vector<SeenWindow> seen;
  };
  /// Sets a rate_limited verdict if one of the request's windows is known full; else false.
  bool refused_locally(Admission& a);
  /// Remembers the window Redis refused `a` for (admit.lua ran at `sent_at`, Unix ms).
  void remember_full(const Admission& a, std::int64_t sent_at);

  /// How installing an account's balance in Redis went.
  enum class BalanceLoad { cached, unknown_account, failed };
  struct BalanceLoadInFlight;
  /// Loads the account's balance from Postgres and installs it in Redis (sync.lua), or waits for
  /// the load already in flight for that account on this Admitter.
  boost::asio::awaitable<BalanceLoad> cache_balance(std::string account);
  /// The load itself (may throw what load_balance throws).
  boost::asio::awaitable<BalanceLoad> load_balance_into_redis(std::string account);

  // Redis state loss, sweep, hold extension (recovery.cpp).
  struct LiveHold {
    std::string account;
    pricing::Micros amount = 0;
    std::int64_t expiry_ms = 0;  ///< Unix ms
  };
  boost::asio::awaitable<void> tick(std::shared_ptr<bool> alive);
  /// Compares the Redis epoch with ours, and Redis' run_id with the epoch's (every 5th poll, and
  /// after any command of ours got no answer: a restart or failover drops connections);
  /// recovers when either changed.
  boost::asio::awaitable<void> poll_epoch();
  /// Calls epoch.lua (makes a new epoch if there is none or Redis' run_id changed); empty on error.
  boost::asio::awaitable<std::string> current_epoch();
  /// Re-registers our holds and the process' pending charges under `epoch`; true when done.
  boost::asio::awaitable<bool> recover(std::string epoch);
  struct RestoreJoin;
  /// restore.lua for one account (the calls of a recovery are pipelined).
  boost::asio::awaitable<void> restore_account(std::shared_ptr<RestoreJoin> join, std::string epoch,
                                               std::string account, std::vector<std::string> holds,
                                               std::vector<std::string> charges);
  boost::asio::awaitable<void> sweep();
  void flush_extensions();
  boost::asio::awaitable<void> send_extensions(std::string account, std::vector<std::string> args);
  /// Waits until the epoch fence has passed (at once when it has).
  boost::asio::awaitable<void> wait_fence();

  boost::asio::any_io_executor ex_;
  boost::asio::steady_timer settle_timer_;
  boost::asio::steady_timer tick_timer_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
  RedisConnection& redis_;
  const AdmissionConfig& cfg_;
  BalanceLoader load_balance_;
  SettledFn on_settled_;
  SpendLoader load_spend_;
  /// Seeds the spend windows `keys` (with their Window) from Postgres; false if that failed.
  boost::asio::awaitable<bool> seed_spend(std::vector<Window> windows);
  PendingCharges& pending_;
  std::string epoch_;                 ///< the epoch our holds are registered under
  std::int64_t fence_until_ms_ = 0;   ///< Unix ms
  std::uint64_t generation_ = 0;      ///< recoveries so far
  /// Set while a recovery runs: a timer that never expires by itself, cancelled when the
  /// recovery ends (that wakes the admission batches waiting for it).
  std::shared_ptr<boost::asio::steady_timer> recovery_;
  bool verify_epoch_ = true;          ///< check run_id before the next admission
  unsigned polls_ = 0;
  std::int64_t next_sweep_ms_ = 0;
  std::unordered_map<std::string, LiveHold> live_holds_;  ///< by request id
  struct Extension {
    std::string account, request_id;
    std::int64_t expiry_ms = 0;
  };
  std::vector<Extension> extensions_;
  bool extensions_posted_ = false;
  std::vector<Settlement> retry_settles_;  ///< failed twice; sent again by tick()
  std::vector<Settlement> queued_;
  std::unordered_map<std::string, std::shared_ptr<BalanceLoadInFlight>> balance_loads_;  ///< by account
  std::unordered_map<std::string, std::vector<std::shared_ptr<AdmitCall>>> admit_queues_;  ///< by account
  std::unordered_map<std::string, FullWindow> full_windows_;  ///< by window key
  std::size_t settling_ = 0;        ///< settles in batches in flight
  std::size_t batches_in_flight_ = 0;
  bool timer_armed_ = false;
};

/// The Lua scripts (embedded from ratelimit/scripts) and their SHA-1s for EVALSHA.
enum ScriptId {
  script_admit = 0,
  script_settle = 1,
  script_sync = 2,
  script_epoch = 3,
  script_restore = 4,
  script_sweep = 5,
  script_extend = 6,
  script_spend_seed = 7
};
const std::string& script_source(int id);
const std::string& script_sha(int id);

/// Installs Postgres' balance of an account in Redis (newer version wins) and drops
/// `committed_request_ids` from its pending charges (in Redis and in PendingCharges::process()).
/// For threads outside the event loop (usage writer, NOTIFY listener). Returns false if Redis
/// did not answer.
bool sync_balance(RedisSyncClient& redis, const std::string& account, pricing::Micros credits,
                  std::int64_t version, const std::vector<std::string>& committed_request_ids);

/// Go-style duration as OpenAI's x-ratelimit-reset-* headers use: "20ms", "1s", "1.5s", "6m0s".
std::string format_reset(std::int64_t ms);

}  // namespace tollgate::ratelimit
