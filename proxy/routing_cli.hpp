#pragma once
// `tollgate upstreams add|list|disable|enable` and `tollgate routes add|list|remove`: the
// operator's commands over sql/route_store.hpp. Every instance picks a change up by NOTIFY
// tollgate_routes within about a second.
#include "sql/pg.hpp"

#include <CLI/CLI.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace tollgate {

/// Registers the commands on `cli` (binds its options to members: do not move the object).
class RoutingCommands {
 public:
  explicit RoutingCommands(CLI::App& cli);
  RoutingCommands(const RoutingCommands&) = delete;
  RoutingCommands& operator=(const RoutingCommands&) = delete;

  /// True if one of these commands was given.
  bool parsed() const;
  /// Runs the command given, printing its result to stdout. Throws std::invalid_argument for
  /// bad input (exit 2) and sql::PgError for database failures (exit 1).
  void run(sql::PgConn& db) const;

 private:
  CLI::App *up_add_, *up_list_, *up_disable_, *up_enable_, *rt_add_, *rt_list_, *rt_remove_;
  std::string name_, base_url_, pattern_, upstream_;
  std::optional<std::string> key_ref_, upstream_model_;
  std::vector<std::string> headers_;
  std::int64_t connect_ms_ = 5000, response_ms_ = 600000, idle_ms_ = 300000, max_connections_ = 64;
  std::string auth_style_ = "bearer";
  std::int32_t priority_ = 0, weight_ = 1;
  std::int64_t route_id_ = 0;
};

}  // namespace tollgate
