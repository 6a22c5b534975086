#pragma once
// Phase 8, record: usage records reach Postgres exactly once, off the request path.
//
//   request path ── append() ──▶ journal segment (O_APPEND write, survives a process crash)
//                               + in-memory queue
//   writer threads (`connections`, each with its own Postgres connection) ── batches of up to
//   `batch_rows`, one transaction each:
//     COPY path: FOR KEY SHARE on the batch's api_keys; COPY usage_logs (the journal's
//                fdatasync runs meanwhile); then the balances, locked FOR UPDATE in uuid order;
//                COPY credit_transactions (balance_after computed here, in credit units); one
//                UPDATE of balances and of api_keys.last_used_at; COMMIT. Locking the balances
//                after the usage COPY lets two batches of one account overlap.
//     SQL path:  SELECT record_usage($1::jsonb), which skips request_ids already recorded —
//                taken when the batch holds a duplicate request_id, holds records replayed from
//                the journal at start, or the COPY hits a unique violation (SQLSTATE 23505: a
//                record committed before a crash). Both paths give the same rows and results.
//   committed (and hook-synced) segments are truncated/deleted; at start, leftover segments are
//   replayed.
// Replays are harmless (request_id is unique; the slow path skips known ones). While Postgres
// is down the writer retries with backoff; nothing is dropped (the journal keeps it all).
// The journal folder is locked (flock): one tollgate instance per folder.
#include "pricing/money.hpp"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

namespace tollgate::sql {

class PgConn;
struct PgError;

/// One usage record (one row of usage_logs + its ledger row), as the journal stores it.
struct UsageRecord {
  std::string id;  ///< usage_logs.id (uuid); UsageWriter::append() sets a UUIDv7 when empty
  std::string request_id;
  std::string user_id;
  std::string api_key_id;
  std::string model;
  std::int64_t prompt_tokens = 0;
  std::int64_t completion_tokens = 0;
  pricing::Micros cost = 0;    ///< upstream cost, credit units
  pricing::Micros charge = 0;  ///< credits deducted, credit units
  std::string status;          ///< success | upstream_error | client_aborted | upstream_aborted
  std::string request_metadata_json = "{}";   ///< a JSON object
  std::string response_metadata_json = "{}";  ///< a JSON object
  std::int64_t created_at_us = 0;             ///< µs since the Unix epoch
  /// Tokens priced apart: parts of prompt_tokens (cached reads, cache writes) and of
  /// completion_tokens (reasoning), never added to them (usage_logs columns of the same names).
  std::int64_t cached_tokens = 0, cache_write_tokens = 0, reasoning_tokens = 0;
  /// Completion tokens that are image output, a part of completion_tokens like reasoning_tokens
  /// (usage_logs.image_tokens), and the images an Images API request generated
  /// (usage_logs.images_generated). Journal lines written before these existed read as 0.
  std::int64_t image_tokens = 0, images_generated = 0;
  std::string upstream;  ///< the name of the upstream that served the request (usage_logs.upstream); empty → NULL
  /// What the upstream reported the request cost (`usage.cost`), Picos (1e-12 USD), stored as
  /// usage_logs.upstream_cost_usd (USD, 12 decimals); nullopt → NULL (none reported).
  std::optional<pricing::Picos> upstream_cost;

  /// One-line JSON object in the shape record_usage() reads ("id" only when set).
  std::string to_json() const;
  /// Appends to_json() to `out` (no allocation beyond `out` growing).
  void append_json(std::string& out) const;
};

/// A new RFC 9562 UUIDv7 in canonical text form: 48-bit Unix time in ms, version 7, 12 bits of
/// sub-millisecond time (method 3 of RFC 9562 §6.2), variant 10, 62 random bits from a
/// per-thread generator seeded from the OS CSPRNG. Ids of one process sort by creation time
/// (to the ~0.25 µs), which keeps usage_logs' primary-key index append-mostly.
std::string new_uuid_v7();

/// An account touched by a committed batch: its balance after the batch (credit units), the
/// balance version, and the batch's request_ids of that account that carried a charge.
struct CommittedAccount {
  std::string account;
  pricing::Micros credits = 0;
  std::int64_t version = 0;
  std::vector<std::string> charged_request_ids;
};

/// Called on a writer thread after each committed batch, to bring caches (Redis) in line; never
/// by two threads at once, but batches of one account may arrive out of version order (the
/// versions say which is newer). Returns false if that failed; it is called again for the same
/// batch until it succeeds, and the batch's journal records are kept until then (a restart
/// replays and calls it again).
using OnCommitted = std::function<bool(const std::vector<CommittedAccount>&)>;

struct UsageWriterStats {
  std::uint64_t appended = 0, committed = 0, batches = 0, failures = 0, replayed = 0;
  std::uint64_t queued = 0;
  std::uint64_t copy_batches = 0;      ///< committed batches that took the COPY path
  std::uint64_t fallback_batches = 0;  ///< committed batches recorded by record_usage()
  std::uint64_t dead_lettered = 0;     ///< records Postgres refused for their data (dead-letter.jsonl)
  std::uint64_t in_memory = 0;         ///< records queued or in flight in memory (≤ max_queued + a batch per thread)
  std::uint64_t spilled = 0;           ///< records waiting in the journal only (counted in `queued` too)
};

/// Where the request path sends usage records (the usage writer; fakes in the request-path
/// tests). append() never blocks on Postgres and never drops a record.
class UsageSink {
 public:
  virtual ~UsageSink() = default;
  virtual void append(UsageRecord&& rec) = 0;
  /// Queue and commit counts (GET /metrics).
  virtual UsageWriterStats stats() const = 0;
};

class UsageWriter final : public UsageSink {
 public:
  /// Opens (and locks) the journal folder and loads leftover segments for replay.
  /// Throws std::runtime_error if the folder cannot be used or is locked by another instance.
  /// `batch_rows`: records per transaction; `max_delay`: the longest a record waits for its
  /// batch to fill (a batch starts when `batch_rows` are queued or the oldest queued record has
  /// waited `max_delay`, whichever comes first, so at low rates there is one transaction per
  /// `max_delay` whatever the number of threads); `connections`: writer threads, each with its
  /// own Postgres connection and one batch in flight (two overlap one batch's COPY with the
  /// other's ledger and commit); `max_queued`: records kept in memory (~1.7 KB each) — beyond
  /// it (Postgres slow or down, or a large journal replayed at start) records wait in the
  /// journal only and are read back in order as the queue drains (usage_spill.cpp).
  UsageWriter(std::filesystem::path journal_dir, std::string database_url,
              std::size_t batch_rows = 5000,
              std::chrono::milliseconds max_delay = std::chrono::milliseconds(100),
              std::size_t connections = 2, std::size_t max_queued = 100'000);
  ~UsageWriter();
  UsageWriter(const UsageWriter&) = delete;
  UsageWriter& operator=(const UsageWriter&) = delete;

  /// Sets the post-commit hook (before start()).
  void on_committed(OnCommitted fn) { on_committed_ = std::move(fn); }
  void start();
  /// Appends a record to the journal and queues it. Thread-safe; one write(2), no fsync.
  /// Sets a UUIDv7 id first if `rec.id` is empty (the journal line carries it).
  void append(const UsageRecord& rec) { append(UsageRecord(rec)); }
  void append(UsageRecord&& rec) override;
  /// Stops after trying to commit what is queued for at most `drain_timeout`.
  void stop(std::chrono::milliseconds drain_timeout = std::chrono::seconds(5));
  /// Blocks until everything appended so far is committed, or the timeout passes.
  bool flush(std::chrono::milliseconds timeout);
  UsageWriterStats stats() const override;

 private:
  struct Pending {
    UsageRecord rec;           ///< as journaled (request_id, user_id, charge only when replayed)
    std::uint64_t segment = 0;
    std::string journal_json;  ///< replayed records only: the journal line, for record_usage()
    std::chrono::steady_clock::time_point queued_at = std::chrono::steady_clock::now();
  };
  struct Scratch;  ///< the writer thread's reusable buffers (usage_writer.cpp)
  /// Records `batch` by COPY in one transaction and fills `out`; false (rolled back, nothing
  /// recorded) if the batch must go through record_usage() instead. Throws PgError.
  static bool record_by_copy(PgConn& db, std::span<const Pending> batch, Scratch& s,
                             std::vector<CommittedAccount>& out);
  /// Records `batch` with SELECT record_usage(). Throws PgError.
  static std::vector<CommittedAccount> record_by_sql(PgConn& db, std::span<const Pending> batch, Scratch& s);
  struct Unsynced {
    std::vector<CommittedAccount> accounts;
    std::vector<std::uint64_t> segments;  ///< one entry per record
  };
  /// Records `batch` (COPY path, else record_usage()), adding the accounts it touched to `done`;
  /// true if all of it went the COPY path. A batch Postgres refuses for its data (an integrity
  /// or data error: a record of a deleted account, a value out of range) is split in halves
  /// until each refused record stands alone; those go to the dead-letter file and the rest is
  /// recorded, so one bad record never holds back the others. Throws PgError for anything else
  /// (connection lost, server down: the whole batch is retried).
  /// (`quiet`: a half of a refused batch, already logged.)
  bool record_isolating(PgConn& db, std::span<const Pending> batch, Scratch& s, Unsynced& done, bool quiet = false);
  /// Appends `p` with the reason Postgres gave to `<journal_dir>/dead-letter.jsonl` (fdatasync'ed)
  /// and counts it; its charge leaves Redis' pending spend through `done` (Postgres never got it).
  void dead_letter(const Pending& p, const PgError& why, Unsynced& done);
  bool sync(const Unsynced& u);
  /// Retries unsynced_ in order; true once it is empty. The caller holds sync_mu_.
  bool retry_unsynced_synclocked();
  void sync_pending();                 ///< retries unsynced_ in order (takes sync_mu_)
  void sync_committed(Unsynced done);  ///< calls the hook for a committed batch (takes sync_mu_)
  static void make_durable(Scratch& s);  ///< fdatasync of the batch's journal segments
  void mark_committed_locked(const std::vector<std::uint64_t>& segments);
  struct Segment {
    std::filesystem::path path;
    int fd = -1;
    std::uint64_t appended = 0, committed = 0;
    std::uint64_t bytes = 0;
  };
  void run();
  /// Parses a journal line into a replayable Pending (journal_json set); false if it is not a
  /// complete record of ours (a line cut short by a crash mid-write).
  static bool pending_from_line(std::string& line, std::uint64_t segment, Pending& out);
  /// Reads records waiting in the journal only back into the queue, in journal order, while it
  /// has room below max_queued_ / 2 (one thread at a time; the file is read without mu_).
  void refill();
  /// Nothing queued, spilled, in flight or waiting for its cache sync. The caller holds mu_.
  bool drained_locked() const { return queue_.empty() && !spilling_ && in_flight_ == 0 && unsynced_.empty(); }
  /// Waits (mu_ held through `lock`) until a batch is due: `batch_rows` queued, the oldest
  /// queued record `max_delay` old, flush() waiting, or stopping with records left. False when
  /// the queue is still empty after an idle `max_delay` (the caller's turn to retire segments).
  bool wait_for_batch_locked(std::unique_lock<std::mutex>& lock);
  void open_segment_locked();
  void retire_segments_locked();
  void replay_existing();

  std::filesystem::path dir_;
  std::string database_url_;
  std::size_t batch_rows_;
  std::chrono::milliseconds max_delay_;
  std::size_t connections_;
  int lock_fd_ = -1;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::condition_variable drained_cv_;
  std::deque<Pending> queue_;
  std::size_t max_queued_;
  bool spilling_ = false;  ///< records from (spill_segment_, spill_offset_) on are in the journal only
  std::uint64_t spill_segment_ = 0, spill_offset_ = 0;
  std::uint64_t spilled_ = 0;
  std::mutex refill_mu_;
  std::size_t in_flight_ = 0;  ///< records taken by writer threads, not yet committed + synced
  std::map<std::uint64_t, Segment> segments_;
  std::uint64_t current_segment_ = 0;
  UsageWriterStats stats_;
  bool stopping_ = false;
  std::size_t flushing_ = 0;  ///< flush() calls waiting: batches start without waiting to fill
  std::chrono::steady_clock::time_point stop_deadline_{};
  OnCommitted on_committed_;
  std::mutex sync_mu_;             ///< serializes on_committed_ calls; taken before mu_
  std::mutex dead_letter_mu_;      ///< serializes dead-letter appends (never with mu_ held)
  std::deque<Unsynced> unsynced_;  ///< changed under sync_mu_ and mu_
  std::vector<std::thread> threads_;
};

}  // namespace tollgate::sql
