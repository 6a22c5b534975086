#include "proxy/routing_cli.hpp"

#include "routing/spec.hpp"
#include "sql/route_store.hpp"

#include <fmt/format.h>

#include <stdexcept>

namespace tollgate {

RoutingCommands::RoutingCommands(CLI::App& cli) {
  auto* up = cli.add_subcommand("upstreams", "Manage upstreams (where requests go)")->require_subcommand(1);
  up_add_ = up->add_subcommand("add", "Add an upstream");
  up_add_->add_option("NAME", name_, "Unique name: letters, digits, . _ -")->required();
  up_add_->add_option("BASE_URL", base_url_, "http(s) URL with the API's base path, e.g. https://openrouter.ai/api/v1")
      ->required();
  up_add_->add_option("--key-ref", key_ref_, "Where the API key is: env:VAR or file:/path (never the key itself)");
  up_add_->add_option("--header", headers_, "'Name: value' added to every request (repeatable)");
  up_add_->add_option("--connect-timeout-ms", connect_ms_, "Connect + TLS handshake (default 5000)");
  up_add_->add_option("--response-timeout-ms", response_ms_, "Until the response headers (default 600000)");
  up_add_->add_option("--idle-timeout-ms", idle_ms_, "Between two reads of a body (default 300000)");
  up_add_->add_option("--max-connections", max_connections_, "Per event-loop thread (default 64)");
  up_add_->add_option("--auth-style", auth_style_, "How the key is sent: bearer (Authorization: Bearer, the default) "
                                                   "or x-api-key (Anthropic)")
      ->check(CLI::IsMember({"bearer", "x-api-key"}));
  up_list_ = up->add_subcommand("list", "List upstreams");
  up_disable_ = up->add_subcommand("disable", "Stop routing to an upstream (its routes stay)");
  up_disable_->add_option("NAME", name_)->required();
  up_enable_ = up->add_subcommand("enable", "Route to a disabled upstream again");
  up_enable_->add_option("NAME", name_)->required();

  auto* rt = cli.add_subcommand("routes", "Manage model routes (which upstream serves a model)")->require_subcommand(1);
  rt_add_ = rt->add_subcommand("add", "Add a route");
  rt_add_->add_option("PATTERN", pattern_, "Model glob: * any run, ? one character (e.g. 'openai/*')")->required();
  rt_add_->add_option("UPSTREAM", upstream_, "An upstream's name")->required();
  rt_add_->add_option("--priority", priority_, "Highest matching priority first; lower ones are fallbacks (default 0)");
  rt_add_->add_option("--weight", weight_, "Share among matching routes of equal priority (default 1)");
  rt_add_->add_option("--upstream-model", upstream_model_, "The model name sent upstream (default: as asked)");
  rt_list_ = rt->add_subcommand("list", "List routes");
  rt_remove_ = rt->add_subcommand("remove", "Remove a route");
  rt_remove_->add_option("ID", route_id_)->required();
}

bool RoutingCommands::parsed() const {
  for (auto* c : {up_add_, up_list_, up_disable_, up_enable_, rt_add_, rt_list_, rt_remove_})
    if (c->parsed()) return true;
  return false;
}

void RoutingCommands::run(sql::PgConn& db) const {
  if (up_add_->parsed()) {
    routing::UpstreamSpec u;
    u.name = name_;
    u.base_url = base_url_;
    u.api_key_ref = key_ref_;
    for (const auto& h : headers_) u.extra_headers.push_back(routing::parse_header_arg(h));
    u.connect_timeout = std::chrono::milliseconds(connect_ms_);
    u.response_timeout = std::chrono::milliseconds(response_ms_);
    u.idle_timeout = std::chrono::milliseconds(idle_ms_);
    if (max_connections_ > INT32_MAX) throw std::invalid_argument("--max-connections is too large");
    u.max_connections = static_cast<std::int32_t>(max_connections_);
    u.auth_style = routing::parse_auth_style(auth_style_).value_or(routing::AuthStyle::bearer);
    sql::add_upstream(db, u);
    fmt::print("upstream {} added\n", u.name);
  } else if (up_list_->parsed()) {
    fmt::print("{:<20} {:<8} {:<40} {:<28} {:>10} {:>10} {:>10} {:>6}  {}\n", "NAME", "STATUS", "BASE URL", "KEY REF",
               "CONNECT", "RESPONSE", "IDLE", "CONNS", "HEADERS");
    for (const auto& u : sql::list_upstreams(db)) {
      std::string headers;
      for (const auto& h : u.extra_headers) headers += (headers.empty() ? "" : ", ") + h.first;
      fmt::print("{:<20} {:<8} {:<40} {:<28} {:>8}ms {:>8}ms {:>8}ms {:>6}  {}\n", u.name,
                 u.is_active ? "active" : "disabled", u.base_url, u.api_key_ref.value_or("-"), u.connect_timeout.count(),
                 u.response_timeout.count(), u.idle_timeout.count(), u.max_connections, headers);
    }
  } else if (up_disable_->parsed() || up_enable_->parsed()) {
    bool enable = up_enable_->parsed();
    if (!sql::set_upstream_active(db, name_, enable)) throw std::invalid_argument("no such upstream: " + name_);
    fmt::print("upstream {} {}\n", name_, enable ? "enabled" : "disabled");
  } else if (rt_add_->parsed()) {
    routing::RouteSpec r;
    r.model_pattern = pattern_;
    r.upstream = upstream_;
    r.upstream_model = upstream_model_;
    r.priority = priority_;
    r.weight = weight_;
    fmt::print("route {} added\n", sql::add_route(db, r));
  } else if (rt_list_->parsed()) {
    fmt::print("{:>6}  {:<32} {:<20} {:<32} {:>8} {:>6}  {}\n", "ID", "PATTERN", "UPSTREAM", "UPSTREAM MODEL", "PRIORITY",
               "WEIGHT", "STATUS");
    for (const auto& r : sql::list_routes(db))
      fmt::print("{:>6}  {:<32} {:<20} {:<32} {:>8} {:>6}  {}\n", r.id, r.model_pattern, r.upstream,
                 r.upstream_model.value_or("(as asked)"), r.priority, r.weight, r.is_active ? "active" : "disabled");
  } else if (rt_remove_->parsed()) {
    if (!sql::remove_route(db, route_id_)) throw std::invalid_argument(fmt::format("no such route: {}", route_id_));
    fmt::print("route {} removed\n", route_id_);
  }
}

}  // namespace tollgate
