#include "routing/route_table.hpp"

#include "pricing/pricing.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <stdexcept>

namespace tollgate::routing {

std::string Upstream::describe() const {
  return fmt::format("{} ({}, key {})", name, base_url, api_key_ref ? *api_key_ref : (api_key ? "from config" : "none"));
}

std::ostream& operator<<(std::ostream& o, const Upstream& u) { return o << u.describe(); }

void RouteTable::finish(Upstream& u) {
  const bool default_port = u.url.port == (u.url.tls ? "443" : "80");
  std::string& f = u.wire_fields_;
  f = "Host: " + u.url.host + (default_port ? "" : ":" + u.url.port) + "\r\n";
  if (u.api_key)
    f += (u.auth_style == AuthStyle::x_api_key ? "x-api-key: " : "Authorization: Bearer ") + u.api_key->reveal() + "\r\n";
  for (const auto& [name, value] : u.extra_headers) f += name + ": " + value + "\r\n";
  f += "Content-Type: application/json\r\nUser-Agent: tollgate/0.1\r\n";
  u.origin_ = (u.url.tls ? "https://" : "http://") + u.url.host + ":" + u.url.port;
}

const Upstream* RouteTable::upstream(std::string_view name) const {
  for (const auto& u : upstreams_)
    if (u.name == name) return &u;
  return nullptr;
}

namespace {
void left_out(std::vector<std::string>& unusable, const std::string& name, const std::string& why) {
  spdlog::warn("upstream {} is unusable, its routes are left out: {}", name, why);
  unusable.push_back(name + ": " + why);
}
}  // namespace

RouteTablePtr build_route_table(const std::vector<UpstreamSpec>& upstreams, const std::vector<RouteSpec>& routes,
                                const DefaultUpstream& defaults, CircuitRegistry& circuits) {
  auto t = std::make_shared<RouteTable>();
  if (routes.empty()) {
    t->from_config_ = true;
    Upstream u;
    u.name = default_upstream_name;
    u.base_url = defaults.base_url;
    try {
      u.url = parse_upstream_url(defaults.base_url);
    } catch (const std::invalid_argument& e) {
      left_out(t->unusable_, u.name, e.what());
      return t;
    }
    u.api_key = defaults.api_key;
    u.connect_timeout = defaults.connect_timeout;
    u.response_timeout = defaults.response_timeout;
    u.idle_timeout = defaults.idle_timeout;
    u.max_connections = defaults.max_connections;
    u.circuit = circuits.get(u.name);
    RouteTable::finish(u);
    t->routes_.push_back(Route{0, "*", &t->upstreams_.emplace_back(std::move(u)), std::nullopt, 0, 1});
    return t;
  }
  for (const auto& spec : upstreams) {
    if (!spec.is_active) continue;
    Upstream u;
    try {
      check_upstream_spec(spec);
      u.url = parse_upstream_url(spec.base_url);
    } catch (const std::invalid_argument& e) {
      left_out(t->unusable_, spec.name, e.what());
      continue;
    }
    if (spec.api_key_ref) {
      auto key = resolve_key_ref(*spec.api_key_ref);
      if (!key.key) {
        left_out(t->unusable_, spec.name, key.error);
        continue;
      }
      u.api_key = std::move(key.key);
    }
    u.name = spec.name;
    u.base_url = spec.base_url;
    u.api_key_ref = spec.api_key_ref;
    u.extra_headers = spec.extra_headers;
    u.connect_timeout = spec.connect_timeout;
    u.response_timeout = spec.response_timeout;
    u.idle_timeout = spec.idle_timeout;
    u.max_connections = static_cast<std::size_t>(spec.max_connections);
    u.auth_style = spec.auth_style;
    u.circuit = circuits.get(u.name);
    RouteTable::finish(u);
    t->upstreams_.push_back(std::move(u));
  }
  for (const auto& spec : routes) {
    if (!spec.is_active) continue;
    const Upstream* up = t->upstream(spec.upstream);
    if (!up) continue;  // inactive or unusable (logged above) upstream
    try {
      check_route_spec(spec);
    } catch (const std::invalid_argument& e) {
      spdlog::warn("route {} is left out: {}", spec.id, e.what());
      continue;
    }
    t->routes_.push_back(Route{spec.id, spec.model_pattern, up, spec.upstream_model, spec.priority, spec.weight});
  }
  std::stable_sort(t->routes_.begin(), t->routes_.end(), [](const Route& a, const Route& b) {
    return a.priority != b.priority ? a.priority > b.priority : a.id < b.id;
  });
  if (t->routes_.empty()) spdlog::warn("no usable route: every request will be answered \"no route for model\"");
  return t;
}

bool RouteTable::serves(std::string_view model) const {
  return std::any_of(routes_.begin(), routes_.end(),
                     [&](const Route& r) { return pricing::glob_match(r.model_pattern, model); });
}

Candidates RouteTable::select(std::string_view model, Rng& rng, std::size_t max_candidates) const {
  Candidates out;
  boost::container::small_vector<const Route*, 8> group;
  std::size_t i = 0;
  while (i < routes_.size() && out.size() < max_candidates) {
    const std::int32_t priority = routes_[i].priority;
    group.clear();
    std::uint64_t total = 0;
    for (; i < routes_.size() && routes_[i].priority == priority; ++i)
      if (pricing::glob_match(routes_[i].model_pattern, model)) {
        group.push_back(&routes_[i]);
        total += static_cast<std::uint64_t>(routes_[i].weight);
      }
    // Weighted draw without replacement: each pick takes route k with weight_k / (weights left).
    while (!group.empty() && out.size() < max_candidates) {
      std::size_t k = 0;
      if (group.size() > 1) {
        std::uint64_t r = std::uniform_int_distribution<std::uint64_t>(0, total - 1)(rng);
        while (r >= static_cast<std::uint64_t>(group[k]->weight)) r -= static_cast<std::uint64_t>(group[k++]->weight);
      }
      const Route& route = *group[k];
      out.push_back(Candidate{route.upstream, route.upstream_model ? std::string_view(*route.upstream_model) : model,
                              route.id});
      total -= static_cast<std::uint64_t>(route.weight);
      group.erase(group.begin() + static_cast<std::ptrdiff_t>(k));
    }
  }
  return out;
}

}  // namespace tollgate::routing
