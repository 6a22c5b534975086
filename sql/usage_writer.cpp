#include "sql/usage_writer.hpp"

#include "sql/pg.hpp"

#include <boost/json/parse.hpp>
#include <boost/json/serialize.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <memory>
#include <vector>

namespace tollgate::sql {
namespace fs = std::filesystem;

namespace {
constexpr std::uint64_t segment_max_bytes = 64ull << 20;

std::string json_string(std::string_view s) { return boost::json::serialize(boost::json::string_view(s.data(), s.size())); }

bool write_all(int fd, const char* p, std::size_t n) {
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}
}  // namespace

std::string UsageRecord::to_json() const {
  return fmt::format(
      R"({{"request_id":{},"user_id":{},"api_key_id":{},"model":{},"prompt_tokens":{},)"
      R"("completion_tokens":{},"cost_usd":"{}","credits_deducted":"{}","status":{},)"
      R"("request_metadata":{},"response_metadata":{},"created_at_us":{}}})",
      json_string(request_id), json_string(user_id),
      api_key_id.empty() ? std::string("null") : json_string(api_key_id), json_string(model),
      prompt_tokens, completion_tokens, pricing::format_micros(cost), pricing::format_micros(charge),
      json_string(status), request_metadata_json, response_metadata_json, created_at_us);
}

UsageWriter::UsageWriter(fs::path journal_dir, std::string database_url, std::size_t batch_rows,
                         std::chrono::milliseconds max_delay)
    : dir_(std::move(journal_dir)), database_url_(std::move(database_url)),
      batch_rows_(batch_rows), max_delay_(max_delay) {
  fs::create_directories(dir_);
  lock_fd_ = ::open((dir_ / "LOCK").c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0600);
  if (lock_fd_ < 0 || ::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0)
    throw std::runtime_error("usage journal " + dir_.string() + " is locked by another tollgate instance");
  replay_existing();
  std::lock_guard lock(mu_);
  open_segment_locked();
}

UsageWriter::~UsageWriter() {
  stop(std::chrono::milliseconds(0));
  for (auto& [id, s] : segments_)
    if (s.fd >= 0) ::close(s.fd);
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

void UsageWriter::replay_existing() {
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir_))
    if (e.path().extension() == ".jsonl") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  for (const auto& f : files) {
    std::uint64_t id = std::stoull(f.stem().string());
    current_segment_ = std::max(current_segment_, id);
    Segment seg{f};
    std::ifstream in(f);
    std::string line;
    while (std::getline(in, line)) {
      // A line cut short by a crash mid-write is not a record (and was never acknowledged).
      if (line.size() < 2 || line.front() != '{' || line.back() != '}') continue;
      Pending p{std::move(line), id};
      try {
        auto v = boost::json::parse(p.json).as_object();
        p.account = std::string(v.at("user_id").as_string());
        p.request_id = std::string(v.at("request_id").as_string());
        p.charge = pricing::parse_decimal(std::string(v.at("credits_deducted").as_string()), 6).value_or(0);
      } catch (const std::exception&) {
        continue;  // not a record of ours
      }
      queue_.push_back(std::move(p));
      ++seg.appended;
      ++stats_.replayed;
    }
    if (seg.appended == 0) {
      fs::remove(f);
      continue;
    }
    spdlog::info("usage journal: replaying {} record(s) from {}", seg.appended, f.string());
    segments_.emplace(id, std::move(seg));
  }
}

void UsageWriter::open_segment_locked() {
  ++current_segment_;
  Segment seg{dir_ / fmt::format("{:020}.jsonl", current_segment_)};
  seg.fd = ::open(seg.path.c_str(), O_CREAT | O_WRONLY | O_APPEND | O_CLOEXEC, 0600);
  if (seg.fd < 0) throw std::runtime_error("cannot open usage journal segment " + seg.path.string());
  segments_.emplace(current_segment_, std::move(seg));
}

void UsageWriter::start() { thread_ = std::thread([this] { run(); }); }

void UsageWriter::append(const UsageRecord& rec) {
  std::string json = rec.to_json();
  std::lock_guard lock(mu_);
  Segment& seg = segments_.at(current_segment_);
  json.push_back('\n');
  if (!write_all(seg.fd, json.data(), json.size()))
    spdlog::error("usage journal write failed ({}); record {} is queued in memory only",
                  std::strerror(errno), rec.request_id);
  json.pop_back();
  seg.bytes += json.size() + 1;
  ++seg.appended;
  ++stats_.appended;
  queue_.push_back(Pending{std::move(json), current_segment_, rec.user_id, rec.request_id, rec.charge});
  if (queue_.size() >= batch_rows_) cv_.notify_one();
  if (seg.bytes >= segment_max_bytes) {
    try {
      open_segment_locked();
    } catch (const std::exception& e) {
      spdlog::error("{}", e.what());  // keep appending to the full segment
    }
  }
}

void UsageWriter::retire_segments_locked() {
  for (auto it = segments_.begin(); it != segments_.end();) {
    Segment& s = it->second;
    if (s.committed < s.appended) {
      ++it;
      continue;
    }
    if (it->first == current_segment_) {
      // Everything in the live segment is committed: empty it in place (appends hold mu_).
      if (s.bytes > 0 && ::ftruncate(s.fd, 0) == 0) s.bytes = 0;
      ++it;
      continue;
    }
    if (s.fd >= 0) ::close(s.fd);
    std::error_code ec;
    fs::remove(s.path, ec);
    it = segments_.erase(it);
  }
}

void UsageWriter::run() {
  std::unique_ptr<PgConn> db;
  auto backoff = std::chrono::milliseconds(100);
  std::vector<Pending> batch;
  int sync_fd = -1;
  for (;;) {
    // Batches committed to Postgres whose cache sync failed are retried first, in order.
    while (!unsynced_.empty() && sync(unsynced_.front())) {
      std::lock_guard lock(mu_);
      mark_committed_locked(unsynced_.front().segments);
      unsynced_.pop_front();
      if (queue_.empty() && unsynced_.empty()) drained_cv_.notify_all();
    }
    {
      std::unique_lock lock(mu_);
      cv_.wait_for(lock, max_delay_, [&] { return stopping_ || queue_.size() >= batch_rows_; });
      if (queue_.empty()) {
        retire_segments_locked();
        if (stopping_) return;
        continue;
      }
      if (stopping_ && std::chrono::steady_clock::now() >= stop_deadline_) return;
      std::size_t n = std::min(queue_.size(), batch_rows_);
      batch.assign(std::make_move_iterator(queue_.begin()), std::make_move_iterator(queue_.begin() + n));
      queue_.erase(queue_.begin(), queue_.begin() + n);
      in_flight_ = n;
      sync_fd = segments_.at(current_segment_).fd;
    }
    // The live segment reaches the disk before its records are sent: a power loss then loses
    // at most the records of the last few milliseconds, a process crash none. Outside the lock
    // so the request path never waits on the disk; only this thread closes segment fds.
    ::fdatasync(sync_fd);
    std::string payload;
    payload.reserve(batch.size() * 400);
    payload.push_back('[');
    for (std::size_t i = 0; i < batch.size(); ++i) {
      if (i) payload.push_back(',');
      payload += batch[i].json;
    }
    payload.push_back(']');
    bool ok = false;
    Unsynced done;
    try {
      if (!db || !db->healthy()) db = std::make_unique<PgConn>(database_url_, std::chrono::seconds(60));
      auto r = db->exec("SELECT account, credits_micros, balance_version FROM record_usage($1::jsonb)", {payload});
      std::map<std::string, std::size_t> index;
      for (int i = 0; i < r.rows(); ++i) {
        index[r.str(i, 0)] = done.accounts.size();
        done.accounts.push_back(CommittedAccount{r.str(i, 0), r.i64(i, 1), r.i64(i, 2), {}});
      }
      for (const auto& p : batch) {
        done.segments.push_back(p.segment);
        auto it = index.find(p.account);
        if (p.charge > 0 && it != index.end()) done.accounts[it->second].charged_request_ids.push_back(p.request_id);
      }
      ok = true;
      backoff = std::chrono::milliseconds(100);
    } catch (const std::exception& e) {
      db.reset();
      spdlog::warn("usage writer: batch of {} not recorded yet ({}); retrying in {} ms",
                   batch.size(), e.what(), backoff.count());
    }
    std::unique_lock lock(mu_);
    in_flight_ = 0;
    if (ok) {
      stats_.committed += batch.size();
      ++stats_.batches;
      lock.unlock();
      bool synced = unsynced_.empty() && sync(done);
      lock.lock();
      if (synced) mark_committed_locked(done.segments);
      else unsynced_.push_back(std::move(done));
      if (queue_.empty() && unsynced_.empty()) drained_cv_.notify_all();
    } else {
      ++stats_.failures;
      // Back to the front, in order, for the next attempt.
      queue_.insert(queue_.begin(), std::make_move_iterator(batch.begin()), std::make_move_iterator(batch.end()));
      if (stopping_ && std::chrono::steady_clock::now() >= stop_deadline_) return;
      cv_.wait_for(lock, backoff, [&] { return stopping_; });
      backoff = std::min(backoff * 2, std::chrono::milliseconds(5000));
    }
    batch.clear();
  }
}

bool UsageWriter::sync(const Unsynced& u) {
  if (!on_committed_) return true;
  try {
    return on_committed_(u.accounts);
  } catch (const std::exception& e) {
    spdlog::warn("usage writer: post-commit sync failed: {}", e.what());
    return false;
  }
}

void UsageWriter::mark_committed_locked(const std::vector<std::uint64_t>& segments) {
  for (auto id : segments) ++segments_.at(id).committed;
  retire_segments_locked();
}

void UsageWriter::stop(std::chrono::milliseconds drain_timeout) {
  {
    std::lock_guard lock(mu_);
    if (stopping_ && !thread_.joinable()) return;
    stopping_ = true;
    stop_deadline_ = std::chrono::steady_clock::now() + drain_timeout;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

bool UsageWriter::flush(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  cv_.notify_one();
  return drained_cv_.wait_for(lock, timeout, [&] { return queue_.empty() && in_flight_ == 0 && unsynced_.empty(); });
}

UsageWriterStats UsageWriter::stats() const {
  std::lock_guard lock(mu_);
  UsageWriterStats s = stats_;
  s.queued = queue_.size() + in_flight_;
  return s;
}

}  // namespace tollgate::sql
