#include "sql/intent_journal.hpp"

#include <boost/json.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>
#include <stdexcept>

namespace tollgate::sql {
namespace fs = std::filesystem;
namespace json = boost::json;

namespace {
constexpr std::uint64_t file_max_bytes = 64ull << 20;
constexpr std::string_view prefix = "intents-";

std::uint64_t now_us() {
  return static_cast<std::uint64_t>(
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::system_clock::now().time_since_epoch()).count());
}

std::string json_quoted(std::string_view s) { return json::serialize(json::string_view(s.data(), s.size())); }

std::int64_t int_of(const json::object& o, std::string_view k, std::int64_t fallback = 0) {
  const json::value* v = o.if_contains(k);
  return v && v->is_int64() ? v->as_int64() : v && v->is_uint64() ? static_cast<std::int64_t>(v->as_uint64()) : fallback;
}
std::string str_of(const json::object& o, std::string_view k) {
  const json::value* v = o.if_contains(k);
  return v && v->is_string() ? std::string(v->as_string()) : std::string();
}

/// Reads one file's lines into `open` (by request id, in order of their intents in `order`). A
/// torn last line (the process died inside a write) is skipped.
void read_file(const fs::path& p, std::unordered_map<std::string, OpenIntent>& open, std::vector<std::string>& order) {
  std::ifstream in(p);
  std::string line;
  while (std::getline(in, line)) {
    json::error_code ec;
    json::value v = json::parse(line, ec);
    if (ec || !v.is_object()) continue;
    const auto& o = v.as_object();
    std::string t = str_of(o, "t"), id = str_of(o, "id");
    if (id.empty()) continue;
    if (t == "i") {
      OpenIntent oi;
      Intent& i = oi.intent;
      i.request_id = id;
      i.user_id = str_of(o, "user");
      i.api_key_id = str_of(o, "key");
      i.model = str_of(o, "model");
      i.created_at_us = int_of(o, "at");
      i.hold = int_of(o, "hold");
      const json::value* held = o.if_contains("held");
      i.held_in_redis = held && held->is_bool() && held->as_bool();
      i.prompt_estimate = int_of(o, "prompt");
      if (const json::value* m = o.if_contains("meta"); m && m->is_object()) i.request_metadata_json = json::serialize(*m);
      if (open.emplace(id, std::move(oi)).second) order.push_back(id);
    } else if (auto it = open.find(id); it != open.end()) {
      if (t == "s") {
        it->second.sent = true;
      } else if (t == "p") {
        it->second.delivered = std::max(it->second.delivered, int_of(o, "d"));
        it->second.prompt_tokens = int_of(o, "pt", -1);
      } else if (t == "e") {
        open.erase(it);
      }
    }
  }
}
}  // namespace

IntentJournal::IntentJournal(fs::path dir) : dir_(std::move(dir)) {
  fs::create_directories(dir_);
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir_))
    if (e.is_regular_file() && e.path().filename().string().rfind(prefix, 0) == 0) files.push_back(e.path());
  std::sort(files.begin(), files.end());  // by start µs (fixed width): oldest first
  std::unordered_map<std::string, OpenIntent> open;
  std::vector<std::string> order;
  for (const auto& f : files) read_file(f, open, order);
  for (const auto& id : order)
    if (auto it = open.find(id); it != open.end()) recovered_.push_back(std::move(it->second));
  old_files_ = std::move(files);
  if (!recovered_.empty())
    spdlog::warn("intent journal: {} request(s) were in flight when tollgate last stopped; recording them as interrupted",
                 recovered_.size());
  std::lock_guard lock(mu_);
  roll_locked();
}

IntentJournal::~IntentJournal() {
  std::lock_guard lock(mu_);
  for (auto& [start, f] : files_) {
    ::close(f.fd);
    if (f.open == 0) {
      std::error_code ec;
      fs::remove(f.path, ec);  // nothing in flight: a clean stop leaves no intent file
    }
  }
}

void IntentJournal::forget_recovered() {
  for (const auto& p : old_files_) {
    std::error_code ec;
    fs::remove(p, ec);
  }
  old_files_.clear();
  recovered_.clear();
}

void IntentJournal::roll_locked() {
  std::uint64_t start = now_us();
  if (!files_.empty() && start <= files_.rbegin()->first) start = files_.rbegin()->first + 1;
  File f;
  f.path = dir_ / fmt::format("{}{:020}.jsonl", prefix, start);
  f.fd = ::open(f.path.c_str(), O_CREAT | O_WRONLY | O_APPEND | O_CLOEXEC, 0600);
  if (f.fd < 0) throw std::runtime_error("cannot open " + f.path.string());
  files_.emplace(start, std::move(f));
  // Earlier files of this process with nothing open are done with.
  for (auto it = files_.begin(); std::next(it) != files_.end();) {
    if (it->second.open != 0) {
      ++it;
      continue;
    }
    ::close(it->second.fd);
    std::error_code ec;
    fs::remove(it->second.path, ec);
    it = files_.erase(it);
  }
}

void IntentJournal::write_locked(std::string_view line, std::uint64_t file) {
  File& f = files_.at(file);
  for (std::size_t done = 0; done < line.size();) {
    ssize_t w = ::write(f.fd, line.data() + done, line.size() - done);
    if (w < 0) {
      if (errno == EINTR) continue;
      spdlog::error("intent journal: write to {} failed: {}", f.path.string(), std::strerror(errno));
      return;  // the request goes on; only its crash recovery is lost
    }
    done += static_cast<std::size_t>(w);
  }
  f.bytes += line.size();
}

void IntentJournal::begin(const Intent& i) {
  std::string line = fmt::format(
      R"({{"t":"i","id":{},"user":{},"key":{},"model":{},"at":{},"hold":{},"held":{},"prompt":{},"meta":{}}})"
      "\n",
      json_quoted(i.request_id), json_quoted(i.user_id), json_quoted(i.api_key_id), json_quoted(i.model), i.created_at_us, i.hold,
      i.held_in_redis, i.prompt_estimate, i.request_metadata_json.empty() ? "{}" : i.request_metadata_json);
  std::lock_guard lock(mu_);
  if (files_.rbegin()->second.bytes >= file_max_bytes) roll_locked();
  std::uint64_t current = files_.rbegin()->first;
  write_locked(line, current);
  ++files_.at(current).open;
  file_of_[i.request_id] = current;
}

void IntentJournal::sent(std::string_view request_id) {
  std::string line = fmt::format(R"({{"t":"s","id":{}}})"
                                 "\n",
                                 json_quoted(request_id));
  std::lock_guard lock(mu_);
  auto it = file_of_.find(std::string(request_id));
  if (it != file_of_.end()) write_locked(line, it->second);
}

void IntentJournal::progress(std::string_view request_id, std::int64_t delivered, std::int64_t prompt_tokens) {
  std::string line = fmt::format(R"({{"t":"p","id":{},"d":{},"pt":{}}})"
                                 "\n",
                                 json_quoted(request_id), delivered, prompt_tokens);
  std::lock_guard lock(mu_);
  auto it = file_of_.find(std::string(request_id));
  if (it != file_of_.end()) write_locked(line, it->second);
}

void IntentJournal::end(std::string_view request_id) {
  std::string line = fmt::format(R"({{"t":"e","id":{}}})"
                                 "\n",
                                 json_quoted(request_id));
  std::lock_guard lock(mu_);
  auto it = file_of_.find(std::string(request_id));
  if (it == file_of_.end()) return;
  std::uint64_t file = it->second;
  file_of_.erase(it);
  write_locked(line, file);
  File& f = files_.at(file);
  if (--f.open == 0 && file != files_.rbegin()->first) {  // a finished earlier file
    ::close(f.fd);
    std::error_code ec;
    fs::remove(f.path, ec);
    files_.erase(file);
  }
}

std::uint64_t IntentJournal::open() const {
  std::lock_guard lock(mu_);
  return file_of_.size();
}

}  // namespace tollgate::sql
