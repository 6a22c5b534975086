#include "sql/route_store.hpp"

#include <boost/json.hpp>

#include <stdexcept>

namespace tollgate::sql {

namespace {
constexpr const char* upstream_columns =
    "SELECT name, base_url, api_key_ref, extra_headers::text, connect_timeout_ms, response_timeout_ms,"
    " idle_timeout_ms, max_connections, is_active, auth_style FROM upstreams ORDER BY name";
constexpr const char* route_columns =
    "SELECT id, model_pattern, upstream, upstream_model, priority, weight, is_active FROM model_routes"
    " ORDER BY priority DESC, id";

std::optional<std::string> opt(const PgResult& r, int row, int col) {
  return r.is_null(row, col) ? std::nullopt : std::optional<std::string>(r.str(row, col));
}

std::vector<routing::HeaderField> parse_headers(std::string_view json) {
  std::vector<routing::HeaderField> out;
  auto v = boost::json::parse(json);
  for (const auto& [name, value] : v.as_object())
    out.emplace_back(std::string(name), value.is_string() ? std::string(value.get_string()) : boost::json::serialize(value));
  return out;
}

std::vector<routing::UpstreamSpec> read_upstreams(PgConn& db) {
  auto r = db.exec(upstream_columns);
  std::vector<routing::UpstreamSpec> out;
  for (int i = 0; i < r.rows(); ++i) {
    routing::UpstreamSpec u;
    u.name = r.str(i, 0);
    u.base_url = r.str(i, 1);
    u.api_key_ref = opt(r, i, 2);
    u.extra_headers = parse_headers(r.get(i, 3));
    u.connect_timeout = std::chrono::milliseconds(r.i64(i, 4));
    u.response_timeout = std::chrono::milliseconds(r.i64(i, 5));
    u.idle_timeout = std::chrono::milliseconds(r.i64(i, 6));
    u.max_connections = static_cast<std::int32_t>(r.i64(i, 7));
    u.is_active = r.boolean(i, 8);
    // The column's CHECK admits only these; anything else reads as the default.
    u.auth_style = routing::parse_auth_style(r.str(i, 9)).value_or(routing::AuthStyle::bearer);
    out.push_back(std::move(u));
  }
  return out;
}

std::vector<routing::RouteSpec> read_routes(PgConn& db) {
  auto r = db.exec(route_columns);
  std::vector<routing::RouteSpec> out;
  for (int i = 0; i < r.rows(); ++i)
    out.push_back(routing::RouteSpec{r.i64(i, 0), r.str(i, 1), r.str(i, 2), opt(r, i, 3),
                                     static_cast<std::int32_t>(r.i64(i, 4)), static_cast<std::int32_t>(r.i64(i, 5)),
                                     r.boolean(i, 6)});
  return out;
}

/// Turns the constraint a row broke into the operator's error.
[[noreturn]] void rethrow_as_input_error(const PgError& e, const std::string& what) {
  if (e.sqlstate == "23505") throw std::invalid_argument(what + " exists");
  if (e.sqlstate == "23503") throw std::invalid_argument("no such upstream: " + what);
  if (e.sqlstate == "23514") throw std::invalid_argument(what + ": refused by the table: " + e.what());
  throw e;
}
}  // namespace

std::vector<routing::UpstreamSpec> list_upstreams(PgConn& db) { return read_upstreams(db); }
std::vector<routing::RouteSpec> list_routes(PgConn& db) { return read_routes(db); }

routing::RouteTablePtr load_route_table(PgConn& db, const routing::DefaultUpstream& defaults,
                                        routing::CircuitRegistry& circuits) {
  db.exec("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
  std::vector<routing::UpstreamSpec> upstreams;
  std::vector<routing::RouteSpec> routes;
  try {
    upstreams = read_upstreams(db);
    routes = read_routes(db);
    db.exec("COMMIT");
  } catch (...) {
    PQexec(db.raw(), "ROLLBACK");  // leave the session usable; the error is rethrown
    throw;
  }
  return routing::build_route_table(upstreams, routes, defaults, circuits);
}

void add_upstream(PgConn& db, const routing::UpstreamSpec& u) {
  routing::check_upstream_spec(u);
  boost::json::object headers;
  for (const auto& [name, value] : u.extra_headers) headers[name] = value;
  std::string headers_json = boost::json::serialize(headers);
  try {
    db.exec("INSERT INTO upstreams (name, base_url, api_key_ref, extra_headers, connect_timeout_ms,"
            " response_timeout_ms, idle_timeout_ms, max_connections, is_active, auth_style)"
            " VALUES ($1, $2, $3, $4::jsonb, $5::int, $6::int, $7::int, $8::int, $9::boolean, $10)",
            {u.name, u.base_url, u.api_key_ref ? std::optional<std::string_view>(*u.api_key_ref) : std::nullopt,
             headers_json, std::to_string(u.connect_timeout.count()), std::to_string(u.response_timeout.count()),
             std::to_string(u.idle_timeout.count()), std::to_string(u.max_connections), u.is_active ? "true" : "false",
             routing::to_string(u.auth_style)});
  } catch (const PgError& e) {
    rethrow_as_input_error(e, "upstream " + u.name);
  }
}

bool set_upstream_active(PgConn& db, const std::string& name, bool active) {
  auto r = db.exec("UPDATE upstreams SET is_active = $2::boolean, updated_at = now() WHERE name = $1 RETURNING 1",
                   {name, active ? "true" : "false"});
  return r.rows() > 0;
}

std::int64_t add_route(PgConn& db, const routing::RouteSpec& r) {
  routing::check_route_spec(r);
  try {
    return db.exec("INSERT INTO model_routes (model_pattern, upstream, upstream_model, priority, weight, is_active)"
                   " VALUES ($1, $2, $3, $4::int, $5::int, $6::boolean) RETURNING id",
                   {r.model_pattern, r.upstream,
                    r.upstream_model ? std::optional<std::string_view>(*r.upstream_model) : std::nullopt,
                    std::to_string(r.priority), std::to_string(r.weight), r.is_active ? "true" : "false"})
        .i64(0, 0);
  } catch (const PgError& e) {
    rethrow_as_input_error(e, r.upstream);
  }
}

bool remove_route(PgConn& db, std::int64_t id) {
  return db.exec("DELETE FROM model_routes WHERE id = $1::bigint RETURNING 1", {std::to_string(id)}).rows() > 0;
}

}  // namespace tollgate::sql
