#include "sql/usage_writer.hpp"

#include "sql/pg.hpp"

#include <boost/json/parse.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <fcntl.h>
#include <sys/file.h>
#include <sys/random.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cstring>
#include <fstream>
#include <limits>
#include <memory>
#include <random>
#include <vector>

namespace tollgate::sql {
namespace fs = std::filesystem;
using pricing::append_micros;

namespace {
constexpr std::uint64_t segment_max_bytes = 64ull << 20;
constexpr std::size_t copy_chunk_bytes = 256 << 10;  ///< COPY data is sent in pieces this big

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

// ---- text building: append to a caller's buffer, no other allocation -------------------------

void append_int(std::string& out, std::int64_t v) {
  char buf[24];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  out.append(buf, end);
}

void append_json_string(std::string& out, std::string_view s) {
  out.push_back('"');
  std::size_t run = 0;
  for (std::size_t i = 0; i < s.size(); ++i) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c != '"' && c != '\\') continue;
    out.append(s.data() + run, i - run);
    run = i + 1;
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default: {
        static constexpr char hex[] = "0123456789abcdef";
        char u[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
        out.append(u, 6);
      }
    }
  }
  out.append(s.data() + run, s.size() - run);
  out.push_back('"');
}

/// True if any byte of `v` is one COPY text must escape: backslash, newline, CR or tab.
constexpr bool has_copy_special(std::uint64_t v) {
  constexpr std::uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
  auto zero_byte = [](std::uint64_t x) { return (x - ones) & ~x & highs; };
  return (zero_byte(v ^ (ones * '\\')) | zero_byte(v ^ (ones * '\n')) | zero_byte(v ^ (ones * '\r')) |
          zero_byte(v ^ (ones * '\t'))) != 0;
}

/// A value in COPY text format: backslash, newline, carriage return and tab escaped.
void append_copy_text(std::string& out, std::string_view s) {
  std::size_t i = 0;
  for (; i + 8 <= s.size(); i += 8) {  // the common case: nothing to escape, 8 bytes a step
    std::uint64_t v;
    std::memcpy(&v, s.data() + i, 8);
    if (has_copy_special(v)) break;
  }
  std::size_t run = 0;
  for (; i < s.size(); ++i) {
    char c = s[i];
    if (c != '\\' && c != '\n' && c != '\r' && c != '\t') continue;
    out.append(s.data() + run, i - run);
    run = i + 1;
    out.push_back('\\');
    out.push_back(c == '\\' ? '\\' : c == '\n' ? 'n' : c == '\r' ? 'r' : 't');
  }
  out.append(s.data() + run, s.size() - run);
}

/// A JSON object column: NULL (\N) when empty or JSON null, as record_usage() stores it.
void append_copy_json(std::string& out, std::string_view json) {
  if (json.empty() || json == "null") out += "\\N";
  else append_copy_text(out, json);
}

constexpr std::int64_t floor_div(std::int64_t a, std::int64_t b) { return a / b - (a % b < 0 ? 1 : 0); }

/// µs since the Unix epoch (0 up to the year 9999) as "YYYY-MM-DDTHH:MM:SS.ffffff+00" (what
/// timestamptz reads back to the same µs; to_timestamp(us / 1e6) in record_usage() yields the
/// same instant).
void append_timestamp(std::string& out, std::int64_t us) {
  std::int64_t secs = floor_div(us, 1'000'000), frac = us - secs * 1'000'000;
  std::int64_t days = floor_div(secs, 86'400), sod = secs - days * 86'400;
  // civil_from_days (H. Hinnant), proleptic Gregorian.
  std::int64_t z = days + 719'468, era = floor_div(z, 146'097), doe = z - era * 146'097;
  std::int64_t yoe = (doe - doe / 1460 + doe / 36'524 - doe / 146'096) / 365;
  std::int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100), mp = (5 * doy + 2) / 153;
  std::int64_t d = doy - (153 * mp + 2) / 5 + 1, m = mp < 10 ? mp + 3 : mp - 9;
  std::int64_t y = yoe + era * 400 + (m <= 2 ? 1 : 0);
  char b[29];  // YYYY-MM-DDTHH:MM:SS.ffffff+00
  auto digits = [&b](int at, std::int64_t v, int n) {
    for (int i = n - 1; i >= 0; --i, v /= 10) b[at + i] = static_cast<char>('0' + v % 10);
  };
  digits(0, y, 4);
  b[4] = '-';
  digits(5, m, 2);
  b[7] = '-';
  digits(8, d, 2);
  b[10] = 'T';
  digits(11, sod / 3600, 2);
  b[13] = ':';
  digits(14, sod / 60 % 60, 2);
  b[16] = ':';
  digits(17, sod % 60, 2);
  b[19] = '.';
  digits(20, frac, 6);
  b[26] = '+';
  b[27] = '0';
  b[28] = '0';
  out.append(b, sizeof b);
}

/// The usage record's price parts and upstream as JSON members (",\"cached_tokens\":…").
void append_price_parts(std::string& out, const UsageRecord& r) {
  out += R"(,"cached_tokens":)";
  append_int(out, r.cached_tokens);
  out += R"(,"cache_write_tokens":)";
  append_int(out, r.cache_write_tokens);
  out += R"(,"reasoning_tokens":)";
  append_int(out, r.reasoning_tokens);
  out += R"(,"image_tokens":)";
  append_int(out, r.image_tokens);
  out += R"(,"images_generated":)";
  append_int(out, r.images_generated);
  out += R"(,"upstream":)";
  if (r.upstream.empty()) out += "null";
  else append_json_string(out, r.upstream);
  out += R"(,"upstream_cost_usd":)";
  if (!r.upstream_cost) {
    out += "null";
  } else {
    out.push_back('"');
    out += pricing::format_picos(*r.upstream_cost);
    out.push_back('"');
  }
}

/// The same as COPY text columns, each after a tab (NULL: \N).
void append_copy_price_parts(std::string& out, const UsageRecord& r) {
  for (std::int64_t n : {r.cached_tokens, r.cache_write_tokens, r.reasoning_tokens, r.image_tokens, r.images_generated}) {
    out.push_back('\t');
    append_int(out, n);
  }
  out.push_back('\t');
  if (r.upstream.empty()) out += "\\N";
  else append_copy_text(out, r.upstream);
  out.push_back('\t');
  if (r.upstream_cost) out += pricing::format_picos(*r.upstream_cost);
  else out += "\\N";
}

// ---- uuids ----------------------------------------------------------------------------------

/// 16 bytes; compares like Postgres' uuid type (memcmp).
struct Uuid {
  std::array<std::uint8_t, 16> b{};
  friend auto operator<=>(const Uuid&, const Uuid&) = default;
};

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/// The canonical 8-4-4-4-12 form, any case. Other forms Postgres accepts go the SQL path.
bool parse_uuid(std::string_view s, Uuid& u) {
  if (s.size() != 36) return false;
  std::size_t j = 0;
  for (std::size_t i = 0; i < 36;) {
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (s[i++] != '-') return false;
      continue;
    }
    int hi = hex_value(s[i]), lo = hex_value(s[i + 1]);
    if (hi < 0 || lo < 0) return false;
    u.b[j++] = static_cast<std::uint8_t>(hi << 4 | lo);
    i += 2;
  }
  return true;
}

void append_uuid(std::string& out, const Uuid& u) {
  static constexpr char hex[] = "0123456789abcdef";
  char buf[36];
  std::size_t k = 0;
  for (std::size_t i = 0; i < 16; ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) buf[k++] = '-';
    buf[k++] = hex[u.b[i] >> 4];
    buf[k++] = hex[u.b[i] & 15];
  }
  out.append(buf, 36);
}

/// `{a,b,…}`: a Postgres uuid[] literal.
void uuid_array(std::string& out, const std::vector<Uuid>& v) {
  out.clear();
  out.push_back('{');
  for (const auto& u : v) {
    append_uuid(out, u);
    out.push_back(',');
  }
  if (v.empty()) out.push_back('}');
  else out.back() = '}';
}

/// Journal segments are named by number (00000000000000000001.jsonl); dead-letter.jsonl is not one.
bool is_segment_name(std::string_view stem) {
  return !stem.empty() && std::all_of(stem.begin(), stem.end(), [](char c) { return c >= '0' && c <= '9'; });
}

/// SQLSTATE classes 22 (data exception) and 23 (integrity constraint violation, but not 23505:
/// a request_id recorded meanwhile, which a retry skips) say the batch's data is refused, and
/// will be on every retry.
bool refused_for_its_data(const std::string& sqlstate) {
  return sqlstate.starts_with("22") || (sqlstate.starts_with("23") && sqlstate != "23505");
}

std::string canonical_uuid(std::string_view s) {
  Uuid u;
  if (!parse_uuid(s, u)) return std::string(s);
  std::string out;
  append_uuid(out, u);
  return out;
}

std::mt19937_64 seeded_generator() {
  std::array<std::uint32_t, 8> seed{};
  if (::getrandom(seed.data(), sizeof seed, 0) != static_cast<ssize_t>(sizeof seed)) {
    std::random_device rd;
    for (auto& w : seed) w = rd();
  }
  std::seed_seq seq(seed.begin(), seed.end());
  return std::mt19937_64(seq);
}

/// Sends the COPY text gathered so far once it reaches copy_chunk_bytes.
void send_when_full(PgConn& db, std::string& t) {
  if (t.size() < copy_chunk_bytes) return;
  db.copy_data(t);
  t.clear();
}

void rollback(PgConn& db) noexcept { PQclear(PQexec(db.raw(), "ROLLBACK")); }

/// Thrown inside the COPY transaction when it must give way to record_usage().
struct UseSqlPath {
  const char* why;
};
}  // namespace

/// The writer thread's buffers, reused from batch to batch.
struct UsageWriter::Scratch {
  struct Row {
    Uuid id, user, key;
    bool has_key = false;
    std::uint32_t account = 0;  ///< index into accounts
  };
  std::vector<Row> rows;
  std::vector<std::pair<std::size_t, std::uint32_t>> request_ids;  ///< hash, index
  std::vector<Uuid> accounts, keys, live_keys;
  std::vector<pricing::Micros> credits, totals;
  std::vector<std::int64_t> versions, key_last_used_us;
  std::vector<std::uint32_t> order;
  std::string text, p1, p2;
  std::vector<std::pair<std::uint64_t, int>> sync_fds;  ///< the batch's segments: id, dup'ed fd
};

std::string new_uuid_v7() {
  thread_local std::mt19937_64 rng = seeded_generator();
  auto us = static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::microseconds>(
                                           std::chrono::system_clock::now().time_since_epoch()).count());
  std::uint64_t ms = us / 1000, sub_ms = (us % 1000) * 4096 / 1000;  // 12 bits of the ms
  std::uint64_t hi = (ms & 0xffff'ffff'ffffull) << 16 | 0x7000 | sub_ms;
  std::uint64_t lo = (rng() & 0x3fff'ffff'ffff'ffffull) | 0x8000'0000'0000'0000ull;
  Uuid u;
  for (int i = 0; i < 8; ++i) {
    u.b[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(hi >> (56 - 8 * i));
    u.b[static_cast<std::size_t>(8 + i)] = static_cast<std::uint8_t>(lo >> (56 - 8 * i));
  }
  std::string s;
  s.reserve(36);
  append_uuid(s, u);
  return s;
}

void UsageRecord::append_json(std::string& out) const {
  out.push_back('{');
  if (!id.empty()) {
    out += R"("id":)";
    append_json_string(out, id);
    out.push_back(',');
  }
  out += R"("request_id":)";
  append_json_string(out, request_id);
  out += R"(,"user_id":)";
  append_json_string(out, user_id);
  out += R"(,"api_key_id":)";
  if (api_key_id.empty()) out += "null";
  else append_json_string(out, api_key_id);
  out += R"(,"model":)";
  append_json_string(out, model);
  out += R"(,"prompt_tokens":)";
  append_int(out, prompt_tokens);
  out += R"(,"completion_tokens":)";
  append_int(out, completion_tokens);
  out += R"(,"cost_usd":")";
  append_micros(out, cost);
  out += R"(","credits_deducted":")";
  append_micros(out, charge);
  out += R"(","status":)";
  append_json_string(out, status);
  out += R"(,"request_metadata":)";
  out += request_metadata_json.empty() ? std::string_view("null") : std::string_view(request_metadata_json);
  out += R"(,"response_metadata":)";
  out += response_metadata_json.empty() ? std::string_view("null") : std::string_view(response_metadata_json);
  out += R"(,"created_at_us":)";
  append_int(out, created_at_us);
  append_price_parts(out, *this);
  out.push_back('}');
}

std::string UsageRecord::to_json() const {
  std::string s;
  s.reserve(256 + request_metadata_json.size() + response_metadata_json.size());
  append_json(s);
  return s;
}

UsageWriter::UsageWriter(fs::path journal_dir, std::string database_url, std::size_t batch_rows,
                         std::chrono::milliseconds max_delay, std::size_t connections, std::size_t max_queued)
    : dir_(std::move(journal_dir)), database_url_(std::move(database_url)),
      batch_rows_(std::max<std::size_t>(batch_rows, 1)), max_delay_(max_delay),
      connections_(std::max<std::size_t>(connections, 1)), max_queued_(std::max<std::size_t>(max_queued, 1)) {
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
    if (e.path().extension() == ".jsonl" && is_segment_name(e.path().stem().string())) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  for (const auto& f : files) {
    std::uint64_t id = std::stoull(f.stem().string());
    current_segment_ = std::max(current_segment_, id);
    Segment seg{f};
    std::ifstream in(f, std::ios::binary);
    std::string line;
    std::uint64_t at = 0;  // where the next line starts
    while (std::getline(in, line)) {
      std::uint64_t line_at = at;
      at += line.size() + 1;
      Pending p;
      if (!pending_from_line(line, id, p)) continue;  // cut short by a crash, or not ours
      ++seg.appended;
      ++stats_.replayed;
      // Beyond max_queued_, records wait in the journal only (refill() reads them back).
      if (spilling_ || queue_.size() >= max_queued_) {
        if (!spilling_) spilling_ = true, spill_segment_ = id, spill_offset_ = line_at;
        ++spilled_;
        continue;
      }
      queue_.push_back(std::move(p));
    }
    seg.bytes = at;
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

void UsageWriter::start() {
  for (std::size_t i = 0; i < connections_; ++i) threads_.emplace_back([this] { run(); });
}

void UsageWriter::append(UsageRecord&& rec) {
  if (rec.id.empty()) rec.id = new_uuid_v7();
  thread_local std::string line;  // the journal line, reused: no allocation once warm
  line.clear();
  rec.append_json(line);
  line.push_back('\n');
  std::lock_guard lock(mu_);
  Segment& seg = segments_.at(current_segment_);
  if (!write_all(seg.fd, line.data(), line.size()))
    spdlog::error("usage journal write failed ({}); record {} is queued in memory only",
                  std::strerror(errno), rec.request_id);
  std::uint64_t at = seg.bytes;  // where the line starts (O_APPEND, and only this process writes)
  seg.bytes += line.size();
  ++seg.appended;
  ++stats_.appended;
  if (spilling_ || queue_.size() >= max_queued_) {
    // The queue is full (Postgres slow or down): the record waits in the journal only, read back
    // by refill() in order once the queue drains.
    if (!spilling_) spilling_ = true, spill_segment_ = current_segment_, spill_offset_ = at;
    ++spilled_;
  } else {
    queue_.push_back(Pending{std::move(rec), current_segment_, {}});
  }
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
  auto scratch = std::make_unique<Scratch>();
  for (;;) {
    // Batches committed to Postgres whose cache sync failed are retried first, in order.
    sync_pending();
    refill();  // records waiting in the journal only, once the queue has room
    {
      std::unique_lock lock(mu_);
      if (!wait_for_batch_locked(lock)) {
        retire_segments_locked();
        if (stopping_) return;
        continue;
      }
      if (stopping_ && std::chrono::steady_clock::now() >= stop_deadline_) return;
      std::size_t n = std::min(queue_.size(), batch_rows_);
      batch.assign(std::make_move_iterator(queue_.begin()), std::make_move_iterator(queue_.begin() + n));
      queue_.erase(queue_.begin(), queue_.begin() + n);
      in_flight_ += n;
      // The journal segments of the batch reach the disk before its transaction commits (see
      // make_durable()). Their fds are dup'ed: another writer thread may retire a segment.
      scratch->sync_fds.clear();
      for (const auto& p : batch)
        if (scratch->sync_fds.empty() || scratch->sync_fds.back().first != p.segment)
          scratch->sync_fds.emplace_back(p.segment, -1);
      std::sort(scratch->sync_fds.begin(), scratch->sync_fds.end());
      scratch->sync_fds.erase(std::unique(scratch->sync_fds.begin(), scratch->sync_fds.end()), scratch->sync_fds.end());
      for (auto& [id, fd] : scratch->sync_fds)
        if (auto it = segments_.find(id); it != segments_.end() && it->second.fd >= 0) fd = ::dup(it->second.fd);
    }
    bool ok = false, by_copy = false;
    Unsynced done;
    try {
      if (!db || !db->healthy()) db = std::make_unique<PgConn>(database_url_, std::chrono::seconds(60));
      by_copy = record_isolating(*db, batch, *scratch, done);
      done.segments.reserve(batch.size());
      for (const auto& p : batch) done.segments.push_back(p.segment);
      ok = true;
      backoff = std::chrono::milliseconds(100);
    } catch (const std::exception& e) {
      db.reset();
      spdlog::warn("usage writer: batch of {} not recorded yet ({}); retrying in {} ms",
                   batch.size(), e.what(), backoff.count());
    }
    make_durable(*scratch);  // closes the dup'ed fds (a no-op sync if already done)
    if (ok) {
      {
        std::lock_guard lock(mu_);
        stats_.committed += batch.size();
        ++stats_.batches;
        ++(by_copy ? stats_.copy_batches : stats_.fallback_batches);
      }
      sync_committed(std::move(done));
      std::lock_guard lock(mu_);
      in_flight_ -= batch.size();
      if (drained_locked()) drained_cv_.notify_all();
    } else {
      std::unique_lock lock(mu_);
      in_flight_ -= batch.size();
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

bool UsageWriter::wait_for_batch_locked(std::unique_lock<std::mutex>& lock) {
  auto now_due = [&] { return stopping_ || flushing_ > 0 || queue_.size() >= batch_rows_; };
  for (;;) {
    if (now_due()) return !queue_.empty();
    if (queue_.empty()) {
      cv_.wait_for(lock, max_delay_, now_due);
      if (queue_.empty()) return false;
      continue;
    }
    // Every waiting thread sees the same deadline; the first to wake takes the batch, the
    // others find the queue young again and go back to waiting.
    const auto due = queue_.front().queued_at + max_delay_;
    if (std::chrono::steady_clock::now() >= due) return true;
    cv_.wait_until(lock, due, now_due);
  }
}

void UsageWriter::make_durable(Scratch& s) {
  // A power loss then loses at most the records of the last few milliseconds (those not yet
  // taken by a writer thread), a process crash none. Outside the lock so the request path never
  // waits on the disk.
  for (auto& [id, fd] : s.sync_fds) {
    if (fd < 0) continue;
    ::fdatasync(fd);
    ::close(fd);
    fd = -1;
  }
}

bool UsageWriter::retry_unsynced_synclocked() {
  for (;;) {
    {
      std::lock_guard lock(mu_);
      if (unsynced_.empty()) return true;
    }
    if (!sync(unsynced_.front())) return false;
    std::lock_guard lock(mu_);
    mark_committed_locked(unsynced_.front().segments);
    unsynced_.pop_front();
    if (drained_locked()) drained_cv_.notify_all();
  }
}

void UsageWriter::sync_pending() {
  std::lock_guard sync_lock(sync_mu_);
  retry_unsynced_synclocked();
}

void UsageWriter::sync_committed(Unsynced done) {
  std::lock_guard sync_lock(sync_mu_);  // the hook is called by one thread at a time
  bool synced = retry_unsynced_synclocked() && sync(done);
  std::lock_guard lock(mu_);
  if (synced) mark_committed_locked(done.segments);
  else unsynced_.push_back(std::move(done));
}

// ---- recording a batch ----------------------------------------------------------------------

bool UsageWriter::record_isolating(PgConn& db, std::span<const Pending> batch, Scratch& s, Unsynced& done,
                                   bool quiet) {
  try {
    std::vector<CommittedAccount> accounts;
    bool by_copy = record_by_copy(db, batch, s, accounts);
    if (!by_copy) accounts = record_by_sql(db, batch, s);
    done.accounts.insert(done.accounts.end(), std::make_move_iterator(accounts.begin()),
                         std::make_move_iterator(accounts.end()));
    return by_copy;
  } catch (const PgError& e) {
    if (!refused_for_its_data(e.sqlstate) || !db.healthy()) throw;
    if (batch.size() == 1) {
      dead_letter(batch.front(), e, done);
      return false;
    }
    if (!quiet)
      spdlog::warn("usage writer: PostgreSQL refused a batch of {} (SQLSTATE {}: {}); recording it in halves to "
                   "set the refused records apart", batch.size(), e.sqlstate, e.what());
    const std::size_t half = batch.size() / 2;
    bool first = record_isolating(db, batch.first(half), s, done, true);
    bool second = record_isolating(db, batch.subspan(half), s, done, true);
    return first && second;
  }
}

void UsageWriter::dead_letter(const Pending& p, const PgError& why, Unsynced& done) {
  std::string line = R"({"sqlstate":)";
  append_json_string(line, why.sqlstate);
  line += R"(,"error":)";
  append_json_string(line, why.what());
  line += R"(,"record":)";
  if (!p.journal_json.empty()) line += p.journal_json;
  else p.rec.append_json(line);
  line += "}\n";
  const fs::path path = dir_ / "dead-letter.jsonl";
  {
    std::lock_guard lock(dead_letter_mu_);
    int fd = ::open(path.c_str(), O_CREAT | O_WRONLY | O_APPEND | O_CLOEXEC, 0600);
    // Unwritable: the record stays in the journal and the batch is retried (an error to see).
    if (fd < 0 || !write_all(fd, line.data(), line.size()) || ::fdatasync(fd) != 0) {
      if (fd >= 0) ::close(fd);
      throw PgError(fmt::format("usage writer: cannot write {}: {}", path.string(), std::strerror(errno)), "");
    }
    ::close(fd);
  }
  spdlog::error("usage writer: PostgreSQL refused usage record {} (SQLSTATE {}: {}); it is in {} for the "
                "operator, and its charge no longer counts as pending spend", p.rec.request_id, why.sqlstate,
                why.what(), path.string());
  {
    std::lock_guard lock(mu_);
    ++stats_.dead_lettered;
  }
  // Redis counted the charge as pending spend at settle; Postgres will never have it, so the
  // sync lets it go (credits and version are left alone: -1 is never newer).
  Uuid account;
  if (p.rec.charge > 0 && parse_uuid(p.rec.user_id, account))
    done.accounts.push_back(CommittedAccount{canonical_uuid(p.rec.user_id), 0, -1, {p.rec.request_id}});
}

bool UsageWriter::record_by_copy(PgConn& db, std::span<const Pending> batch, Scratch& s,
                                 std::vector<CommittedAccount>& out) {
  constexpr std::int64_t int4_max = std::numeric_limits<std::int32_t>::max();
  constexpr std::int64_t max_created_at_us = 253'402'300'800'000'000;  // 10000-01-01
  // 1. Parse and check on this side; anything unusual goes the SQL path, which reports it.
  s.rows.assign(batch.size(), {});
  s.request_ids.clear();
  s.accounts.clear();
  s.keys.clear();
  for (std::size_t i = 0; i < batch.size(); ++i) {
    const Pending& p = batch[i];
    const UsageRecord& r = p.rec;
    auto& row = s.rows[i];
    if (!p.journal_json.empty()) return false;  // replayed: may be recorded already
    if (!parse_uuid(r.user_id, row.user) || !parse_uuid(r.id, row.id)) return false;
    row.has_key = !r.api_key_id.empty();
    if (row.has_key && !parse_uuid(r.api_key_id, row.key)) return false;
    if (r.prompt_tokens < 0 || r.completion_tokens < 0 || r.prompt_tokens + r.completion_tokens > int4_max)
      return false;
    if (r.created_at_us < 0 || r.created_at_us >= max_created_at_us) return false;
    s.request_ids.emplace_back(std::hash<std::string_view>{}(r.request_id), static_cast<std::uint32_t>(i));
    s.accounts.push_back(row.user);
    if (row.has_key) s.keys.push_back(row.key);
  }
  // A duplicate request_id goes the SQL path (record_usage() keeps the first). Hashes sorted,
  // then equal hashes compared as strings.
  std::sort(s.request_ids.begin(), s.request_ids.end());
  for (std::size_t i = 1; i < s.request_ids.size(); ++i)
    if (s.request_ids[i].first == s.request_ids[i - 1].first &&
        batch[s.request_ids[i].second].rec.request_id == batch[s.request_ids[i - 1].second].rec.request_id)
      return false;
  std::sort(s.accounts.begin(), s.accounts.end());
  s.accounts.erase(std::unique(s.accounts.begin(), s.accounts.end()), s.accounts.end());
  std::sort(s.keys.begin(), s.keys.end());
  s.keys.erase(std::unique(s.keys.begin(), s.keys.end()), s.keys.end());
  const std::size_t n_accounts = s.accounts.size();
  for (auto& row : s.rows)
    row.account = static_cast<std::uint32_t>(
        std::lower_bound(s.accounts.begin(), s.accounts.end(), row.user) - s.accounts.begin());

  db.exec("BEGIN");
  bool copying = false;
  try {
    // 2. Keys that still exist, held until commit (a concurrent delete waits, then nulls our
    //    rows too); records of a key deleted before now get NULL. FOR KEY SHARE does not block
    //    other writers, nor last_used_at updates.
    s.live_keys.clear();
    if (!s.keys.empty()) {
      uuid_array(s.p2, s.keys);
      auto live = db.exec("SELECT id FROM api_keys WHERE id = ANY ($1::uuid[]) ORDER BY id FOR KEY SHARE", {s.p2});
      for (int i = 0; i < live.rows(); ++i) {
        Uuid u;
        if (parse_uuid(live.get(i, 0), u)) s.live_keys.push_back(u);
      }
      std::sort(s.live_keys.begin(), s.live_keys.end());
    }
    s.key_last_used_us.assign(s.live_keys.size(), std::numeric_limits<std::int64_t>::min());

    // 3. The usage rows, in journal order (their UUIDv7 ids ascend). Before the balances are
    //    locked, so that another writer's batch of the same account can COPY meanwhile.
    db.copy_begin("COPY usage_logs (id, request_id, user_id, api_key_id, model, prompt_tokens,"
                  " completion_tokens, total_tokens, cost_usd, credits_deducted, status,"
                  " request_metadata, response_metadata, created_at, cached_tokens, cache_write_tokens,"
                  " reasoning_tokens, image_tokens, images_generated, upstream, upstream_cost_usd) FROM STDIN");
    copying = true;
    std::string& t = s.text;
    t.clear();
    for (std::size_t i = 0; i < batch.size(); ++i) {
      const UsageRecord& r = batch[i].rec;
      const auto& row = s.rows[i];
      append_uuid(t, row.id);
      t.push_back('\t');
      append_copy_text(t, r.request_id);
      t.push_back('\t');
      append_uuid(t, s.accounts[row.account]);
      t.push_back('\t');
      auto live = row.has_key ? std::lower_bound(s.live_keys.begin(), s.live_keys.end(), row.key) : s.live_keys.end();
      if (live != s.live_keys.end() && *live == row.key) {
        append_uuid(t, row.key);
        auto& last = s.key_last_used_us[static_cast<std::size_t>(live - s.live_keys.begin())];
        last = std::max(last, r.created_at_us);
      } else {
        t += "\\N";
      }
      t.push_back('\t');
      append_copy_text(t, r.model);
      t.push_back('\t');
      append_int(t, r.prompt_tokens);
      t.push_back('\t');
      append_int(t, r.completion_tokens);
      t.push_back('\t');
      append_int(t, r.prompt_tokens + r.completion_tokens);
      t.push_back('\t');
      append_micros(t, r.cost);
      t.push_back('\t');
      append_micros(t, r.charge);
      t.push_back('\t');
      append_copy_text(t, r.status);
      t.push_back('\t');
      append_copy_json(t, r.request_metadata_json);
      t.push_back('\t');
      append_copy_json(t, r.response_metadata_json);
      t.push_back('\t');
      append_timestamp(t, r.created_at_us);
      append_copy_price_parts(t, r);
      t.push_back('\n');
      send_when_full(db, t);
    }
    db.copy_data(t);
    make_durable(s);  // the journal's fdatasync runs while the server works through the rows
    copying = false;
    db.copy_end();

    // 4. Every account holds a balances row (its foreign key refuses unknown users), locked in
    //    uuid order like record_usage() so that writers of several instances cannot deadlock.
    //    A user deleted before this point has no row: the batch fails (nothing is recorded).
    uuid_array(s.p1, s.accounts);
    db.exec("INSERT INTO balances (user_id) SELECT unnest($1::uuid[]) ON CONFLICT (user_id) DO NOTHING", {s.p1});
    auto locked = db.exec("SELECT user_id, (credits * 1000000)::bigint, version FROM balances"
                          " WHERE user_id = ANY ($1::uuid[]) ORDER BY user_id FOR UPDATE", {s.p1});
    if (static_cast<std::size_t>(locked.rows()) != n_accounts)
      throw PgError(fmt::format("usage writer: {} of {} accounts in the batch do not exist",
                                n_accounts - static_cast<std::size_t>(locked.rows()), n_accounts),
                    "23503");
    s.credits.assign(n_accounts, 0);
    s.versions.assign(n_accounts, 0);
    s.totals.assign(n_accounts, 0);
    for (int i = 0; i < locked.rows(); ++i) {
      Uuid u;
      if (!parse_uuid(locked.get(i, 0), u) || u != s.accounts[static_cast<std::size_t>(i)])
        throw UseSqlPath{"balances came back in an unexpected order"};
      s.credits[static_cast<std::size_t>(i)] = locked.i64(i, 1);
      s.versions[static_cast<std::size_t>(i)] = locked.i64(i, 2);
    }

    // 5. The ledger: per account in (created_at, request_id byte order) — the order
    //    record_usage() runs its balance_after window in — the balance running down from the
    //    locked one, in credit units.
    s.order.resize(batch.size());
    for (std::size_t i = 0; i < batch.size(); ++i) s.order[i] = static_cast<std::uint32_t>(i);
    std::sort(s.order.begin(), s.order.end(), [&](std::uint32_t a, std::uint32_t b) {
      const UsageRecord &ra = batch[a].rec, &rb = batch[b].rec;
      if (s.rows[a].account != s.rows[b].account) return s.rows[a].account < s.rows[b].account;
      if (ra.created_at_us != rb.created_at_us) return ra.created_at_us < rb.created_at_us;
      return ra.request_id < rb.request_id;  // std::string compares bytes, like COLLATE "C"
    });
    db.copy_begin("COPY credit_transactions (user_id, amount, balance_after, transaction_type,"
                  " request_id, created_at) FROM STDIN");
    copying = true;
    t.clear();
    for (std::uint32_t i : s.order) {
      const UsageRecord& r = batch[i].rec;
      std::uint32_t a = s.rows[i].account;
      s.totals[a] += r.charge;
      append_uuid(t, s.accounts[a]);
      t.push_back('\t');
      append_micros(t, -r.charge);
      t.push_back('\t');
      append_micros(t, s.credits[a] - s.totals[a]);
      t += "\tusage\t";
      append_copy_text(t, r.request_id);
      t.push_back('\t');
      append_timestamp(t, r.created_at_us);
      t.push_back('\n');
      send_when_full(db, t);
    }
    db.copy_data(t);
    copying = false;
    db.copy_end();

    // 6. The debits, one statement; the balances come back to check the ledger's arithmetic.
    s.p2 = "{";
    for (auto total : s.totals) {
      append_micros(s.p2, total);
      s.p2.push_back(',');
    }
    s.p2.back() = '}';
    auto upd = db.exec("UPDATE balances b SET credits = b.credits - t.total, version = b.version + 1,"
                       " updated_at = now() FROM unnest($1::uuid[], $2::numeric[]) AS t(user_id, total)"
                       " WHERE b.user_id = t.user_id"
                       " RETURNING b.user_id, (b.credits * 1000000)::bigint, b.version", {s.p1, s.p2});
    if (static_cast<std::size_t>(upd.rows()) != n_accounts) throw UseSqlPath{"balances changed under their lock"};
    out.assign(n_accounts, CommittedAccount{});
    for (int i = 0; i < upd.rows(); ++i) {
      Uuid u;
      if (!parse_uuid(upd.get(i, 0), u)) throw UseSqlPath{"unexpected uuid from balances"};
      auto a = static_cast<std::size_t>(std::lower_bound(s.accounts.begin(), s.accounts.end(), u) - s.accounts.begin());
      if (a == n_accounts || s.accounts[a] != u || upd.i64(i, 1) != s.credits[a] - s.totals[a] ||
          upd.i64(i, 2) != s.versions[a] + 1)
        throw UseSqlPath{"balances changed under their lock"};
      out[a].account = upd.str(i, 0);
      out[a].credits = upd.i64(i, 1);
      out[a].version = upd.i64(i, 2);
    }

    // 7. last_used_at, as record_usage() sets it.
    if (!s.live_keys.empty()) {
      uuid_array(s.p1, s.live_keys);
      s.p2 = "{";
      for (auto us : s.key_last_used_us) {
        append_timestamp(s.p2, us);
        s.p2.push_back(',');
      }
      s.p2.back() = '}';
      db.exec("UPDATE api_keys k SET last_used_at = t.last_used"
              " FROM unnest($1::uuid[], $2::timestamptz[]) AS t(id, last_used)"
              " WHERE k.id = t.id AND (k.last_used_at IS NULL OR k.last_used_at < t.last_used)",
              {s.p1, s.p2});
    }
    db.exec("COMMIT");
  } catch (const PgError& e) {
    if (copying) db.copy_abort();
    rollback(db);
    if (e.sqlstate != "23505") throw;
    spdlog::info("usage writer: a batch of {} holds request_ids recorded before (a replay); "
                 "recording it with record_usage()", batch.size());
    return false;
  } catch (const UseSqlPath& e) {
    if (copying) db.copy_abort();
    rollback(db);
    spdlog::error("usage writer: COPY path refused a batch ({}); recording it with record_usage()", e.why);
    return false;
  } catch (...) {
    if (copying) db.copy_abort();
    rollback(db);
    throw;
  }
  for (std::size_t i = 0; i < batch.size(); ++i)
    if (batch[i].rec.charge > 0) out[s.rows[i].account].charged_request_ids.push_back(batch[i].rec.request_id);
  return true;
}

std::vector<CommittedAccount> UsageWriter::record_by_sql(PgConn& db, std::span<const Pending> batch, Scratch& s) {
  std::string& payload = s.text;
  payload.clear();
  payload.push_back('[');
  for (std::size_t i = 0; i < batch.size(); ++i) {
    if (i) payload.push_back(',');
    if (!batch[i].journal_json.empty()) payload += batch[i].journal_json;
    else batch[i].rec.append_json(payload);
  }
  payload.push_back(']');
  make_durable(s);
  auto r = db.exec("SELECT account, credits_micros, balance_version FROM record_usage($1::jsonb)", {payload});
  std::vector<CommittedAccount> accounts;
  std::map<std::string, std::size_t, std::less<>> index;
  for (int i = 0; i < r.rows(); ++i) {
    index[r.str(i, 0)] = accounts.size();
    accounts.push_back(CommittedAccount{r.str(i, 0), r.i64(i, 1), r.i64(i, 2), {}});
  }
  for (const auto& p : batch) {
    if (p.rec.charge <= 0) continue;
    auto it = index.find(canonical_uuid(p.rec.user_id));
    if (it != index.end()) accounts[it->second].charged_request_ids.push_back(p.rec.request_id);
  }
  return accounts;
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
    if (stopping_ && threads_.empty()) return;
    stopping_ = true;
    stop_deadline_ = std::chrono::steady_clock::now() + drain_timeout;
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
  threads_.clear();
}

bool UsageWriter::flush(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  ++flushing_;
  cv_.notify_all();
  bool drained =
      drained_cv_.wait_for(lock, timeout, [&] { return drained_locked(); });
  --flushing_;
  return drained;
}

UsageWriterStats UsageWriter::stats() const {
  std::lock_guard lock(mu_);
  UsageWriterStats s = stats_;
  s.queued = queue_.size() + in_flight_ + spilled_;
  s.in_memory = queue_.size() + in_flight_;
  s.spilled = spilled_;
  return s;
}

}  // namespace tollgate::sql
