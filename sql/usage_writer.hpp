#pragma once
// Phase 8, record: usage records reach Postgres exactly once, off the request path.
//
//   request path ── append() ──▶ journal segment (O_APPEND write, survives a process crash)
//                               + in-memory queue
//   writer thread ── batches of up to `batch_rows` ──▶ SELECT record_usage($1::jsonb)
//                    (usage row + ledger row + balance debit per new request_id, one transaction)
//   committed segments are truncated/deleted; at start, leftover segments are replayed.
// Replays are harmless: record_usage() skips request_ids already in usage_logs. While Postgres
// is down the writer retries with backoff; nothing is dropped (the journal keeps it all).
// The journal folder is locked (flock): one tollgate instance per folder.
#include "pricing/money.hpp"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <vector>
#include <filesystem>
#include <map>
#include <mutex>
#include <string>
#include <thread>

namespace tollgate::sql {

/// One usage record (one row of usage_logs + its ledger row), as the journal stores it.
struct UsageRecord {
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

  /// One-line JSON object in the shape record_usage() reads.
  std::string to_json() const;
};

/// An account touched by a committed batch: its balance after the batch (credit units), the
/// balance version, and the batch's request_ids of that account that carried a charge.
struct CommittedAccount {
  std::string account;
  pricing::Micros credits = 0;
  std::int64_t version = 0;
  std::vector<std::string> charged_request_ids;
};

/// Called on the writer thread after each committed batch, to bring caches (Redis) in line.
/// Returns false if that failed; it is called again for the same batch until it succeeds, and
/// the batch's journal records are kept until then (a restart replays and calls it again).
using OnCommitted = std::function<bool(const std::vector<CommittedAccount>&)>;

struct UsageWriterStats {
  std::uint64_t appended = 0, committed = 0, batches = 0, failures = 0, replayed = 0;
  std::uint64_t queued = 0;
};

class UsageWriter {
 public:
  /// Opens (and locks) the journal folder and loads leftover segments for replay.
  /// Throws std::runtime_error if the folder cannot be used or is locked by another instance.
  UsageWriter(std::filesystem::path journal_dir, std::string database_url,
              std::size_t batch_rows = 2000,
              std::chrono::milliseconds max_delay = std::chrono::milliseconds(20));
  ~UsageWriter();
  UsageWriter(const UsageWriter&) = delete;
  UsageWriter& operator=(const UsageWriter&) = delete;

  /// Sets the post-commit hook (before start()).
  void on_committed(OnCommitted fn) { on_committed_ = std::move(fn); }
  void start();
  /// Appends a record to the journal and queues it. Thread-safe; one write(2), no fsync.
  void append(const UsageRecord& rec);
  /// Stops after trying to commit what is queued for at most `drain_timeout`.
  void stop(std::chrono::milliseconds drain_timeout = std::chrono::seconds(5));
  /// Blocks until everything appended so far is committed, or the timeout passes.
  bool flush(std::chrono::milliseconds timeout);
  UsageWriterStats stats() const;

 private:
  struct Pending {
    std::string json;
    std::uint64_t segment;
    std::string account, request_id;
    pricing::Micros charge = 0;
  };
  struct Unsynced {
    std::vector<CommittedAccount> accounts;
    std::vector<std::uint64_t> segments;  ///< one entry per record
  };
  bool sync(const Unsynced& u);
  void mark_committed_locked(const std::vector<std::uint64_t>& segments);
  struct Segment {
    std::filesystem::path path;
    int fd = -1;
    std::uint64_t appended = 0, committed = 0;
    std::uint64_t bytes = 0;
  };
  void run();
  void open_segment_locked();
  void retire_segments_locked();
  void replay_existing();

  std::filesystem::path dir_;
  std::string database_url_;
  std::size_t batch_rows_;
  std::chrono::milliseconds max_delay_;
  int lock_fd_ = -1;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::condition_variable drained_cv_;
  std::deque<Pending> queue_;
  std::size_t in_flight_ = 0;
  std::map<std::uint64_t, Segment> segments_;
  std::uint64_t current_segment_ = 0;
  UsageWriterStats stats_;
  bool stopping_ = false;
  std::chrono::steady_clock::time_point stop_deadline_{};
  OnCommitted on_committed_;
  std::deque<Unsynced> unsynced_;  ///< writer thread only
  std::thread thread_;
};

}  // namespace tollgate::sql
