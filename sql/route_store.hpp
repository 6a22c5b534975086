#pragma once
// Upstreams and model routes in Postgres (sql/migrations/0007_upstreams.sql): the loader of the
// route table and the operator commands behind `tollgate upstreams|routes`. Blocking; call off
// the event loop. Errors: PgError, or std::invalid_argument for bad operator input (a message
// naming the field; never a key: only key refs are stored).
#include "routing/route_table.hpp"
#include "routing/spec.hpp"
#include "sql/pg.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace tollgate::sql {

/// Every `upstreams` row (active or not), by name.
std::vector<routing::UpstreamSpec> list_upstreams(PgConn& db);
/// Every `model_routes` row (active or not), highest priority first, then by id.
std::vector<routing::RouteSpec> list_routes(PgConn& db);

/// Reads both tables in one snapshot (REPEATABLE READ) and builds the route table
/// (routing::build_route_table: unusable upstreams logged and left out; no route rows → the
/// configured default). Call at start, on every NOTIFY tollgate_routes and after a reconnect.
routing::RouteTablePtr load_route_table(PgConn& db, const routing::DefaultUpstream& defaults,
                                        routing::CircuitRegistry& circuits);

/// Inserts an upstream (checked with routing::check_upstream_spec first). Throws
/// std::invalid_argument when the name exists or a field is invalid.
void add_upstream(PgConn& db, const routing::UpstreamSpec& u);
/// Sets an upstream's is_active; false if there is no such upstream.
bool set_upstream_active(PgConn& db, const std::string& name, bool active);

/// Inserts a route; returns its id. Throws std::invalid_argument when the upstream does not
/// exist or a field is invalid.
std::int64_t add_route(PgConn& db, const routing::RouteSpec& r);
/// Deletes a route by id; false if there is none.
bool remove_route(PgConn& db, std::int64_t id);

}  // namespace tollgate::sql
