// UsageWriter's bounded memory: records beyond max_queued wait in the journal only and are read
// back from it, in order, as the queue drains (usage_writer.hpp). The journal keeps every
// record anyway, so spilling costs nothing on the request path but not keeping it in memory.
#include "sql/usage_writer.hpp"

#include <boost/json/parse.hpp>
#include <spdlog/spdlog.h>

#include <fstream>

namespace tollgate::sql {

bool UsageWriter::pending_from_line(std::string& line, std::uint64_t segment, Pending& out) {
  if (line.size() < 2 || line.front() != '{' || line.back() != '}') return false;
  out.segment = segment;
  try {
    auto v = boost::json::parse(line).as_object();
    out.rec.user_id = std::string(v.at("user_id").as_string());
    out.rec.request_id = std::string(v.at("request_id").as_string());
    out.rec.charge = pricing::parse_decimal(std::string(v.at("credits_deducted").as_string()), 6).value_or(0);
    if (auto* i = v.if_contains("id"); i && i->is_string()) out.rec.id = std::string(i->as_string());
  } catch (const std::exception&) {
    return false;  // not a record of ours
  }
  // Journals written before records carried "id" replay as they are: record_usage() then gives
  // the row a random id.
  out.journal_json = std::move(line);
  return true;
}

void UsageWriter::refill() {
  std::unique_lock one(refill_mu_, std::try_to_lock);
  if (!one) return;  // another writer thread is at it
  std::uint64_t segment = 0, from = 0, to = 0;
  std::size_t room = 0;
  std::filesystem::path path;
  {
    std::lock_guard lock(mu_);
    if (!spilling_ || queue_.size() >= max_queued_ / 2) return;
    segment = spill_segment_;
    from = spill_offset_;
    auto it = segments_.find(segment);
    if (it == segments_.end()) {  // cannot happen: a segment with spilled records is not retired
      spdlog::error("usage writer: spilled records in segment {} that is gone", segment);
      spilling_ = false;
      spilled_ = 0;
      return;
    }
    to = it->second.bytes;
    path = it->second.path;
    room = max_queued_ - queue_.size();
  }
  // Read without mu_: appends go on (past `to`, still spilled).
  std::vector<Pending> got;
  std::uint64_t at = from;
  {
    std::ifstream in(path, std::ios::binary);
    in.seekg(static_cast<std::streamoff>(from));
    std::string line;
    while (got.size() < room && at < to && std::getline(in, line)) {
      at += line.size() + 1;
      Pending p;
      if (pending_from_line(line, segment, p)) got.push_back(std::move(p));
    }
  }
  std::lock_guard lock(mu_);
  for (auto& p : got) queue_.push_back(std::move(p));
  spilled_ -= std::min<std::uint64_t>(spilled_, got.size());
  spill_offset_ = at;
  if (at >= segments_.at(segment).bytes) {  // this segment is read to its end
    auto next = segments_.upper_bound(segment);
    if (next == segments_.end()) {
      spilling_ = false;  // caught up: appends queue in memory again
      spilled_ = 0;
    } else {
      spill_segment_ = next->first;
      spill_offset_ = 0;
    }
  }
  if (!got.empty()) cv_.notify_all();
}

}  // namespace tollgate::sql
