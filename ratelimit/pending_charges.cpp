#include "ratelimit/pending_charges.hpp"

#include <spdlog/spdlog.h>

namespace tollgate::ratelimit {

PendingCharges& PendingCharges::process() {
  static PendingCharges p;
  return p;
}

void PendingCharges::forget_old_commits(std::chrono::steady_clock::time_point now) {
  while (!recent_order_.empty() && now - recent_order_.front().first > recent_commits) {
    recent_.erase(recent_order_.front().second);
    recent_order_.pop_front();
  }
}

void PendingCharges::add(const std::string& account, const std::string& request_id, pricing::Micros charge) {
  if (charge <= 0) return;
  std::lock_guard lock(mu_);
  forget_old_commits(std::chrono::steady_clock::now());
  if (recent_.count(request_id)) return;
  if (charges_.size() >= max_entries) {
    if (!warned_full_) spdlog::warn("pending charges: {} not yet committed; not remembering more", charges_.size());
    warned_full_ = true;
    return;
  }
  charges_[request_id] = Charge{account, request_id, charge};
}

void PendingCharges::committed(const std::vector<std::string>& request_ids) {
  if (request_ids.empty()) return;
  const auto now = std::chrono::steady_clock::now();
  std::lock_guard lock(mu_);
  forget_old_commits(now);
  for (const auto& id : request_ids) {
    if (charges_.erase(id) == 0 && recent_.insert(id).second) recent_order_.emplace_back(now, id);
  }
  if (charges_.size() < max_entries / 2) warned_full_ = false;
}

bool PendingCharges::contains(const std::string& request_id) const {
  std::lock_guard lock(mu_);
  return charges_.count(request_id) > 0;
}

std::vector<PendingCharges::Charge> PendingCharges::snapshot() const {
  std::lock_guard lock(mu_);
  std::vector<Charge> out;
  out.reserve(charges_.size());
  for (const auto& [id, c] : charges_) out.push_back(c);
  return out;
}

std::size_t PendingCharges::size() const {
  std::lock_guard lock(mu_);
  return charges_.size();
}

}  // namespace tollgate::ratelimit
