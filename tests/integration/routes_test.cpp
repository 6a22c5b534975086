// Upstreams and model routes in PostgreSQL (0007_upstreams.sql, sql/route_store.hpp): the
// constraints, the operator commands, and a route change by SQL reaching a NOTIFY-driven reload.
// Every row made here is deleted again (a guard), so the shared database goes back to "no route
// rows" (the configured upstream) for the tests that follow.
#include "db_fixture.hpp"
#include "sql/notify_listener.hpp"
#include "sql/route_store.hpp"

#include <atomic>
#include <cstdlib>
#include <thread>

using namespace tollgate;
using namespace tollgate::test;
using namespace std::chrono_literals;

namespace {
/// Deletes the routes and upstreams whose names start with `prefix`, now and at scope exit.
struct Cleanup {
  sql::PgConn& db;
  std::string prefix;
  Cleanup(sql::PgConn& d, std::string p) : db(d), prefix(std::move(p)) { run(); }
  ~Cleanup() {
    try {
      run();
    } catch (...) {  // a failing test already reported; nothing more to say
    }
  }
  void run() {
    db.exec("DELETE FROM model_routes WHERE upstream LIKE $1 || '%'", {prefix});
    db.exec("DELETE FROM upstreams WHERE name LIKE $1 || '%'", {prefix});
  }
};

routing::UpstreamSpec spec(const std::string& name, const std::string& url = "https://example.com/v1") {
  routing::UpstreamSpec u;
  u.name = name;
  u.base_url = url;
  return u;
}

/// The SQLSTATE and constraint name of a statement that must fail.
std::string refused_by(sql::PgConn& db, const char* sql, std::initializer_list<std::optional<std::string_view>> params) {
  try {
    db.exec("SAVEPOINT refused");
    db.exec(sql, params);
  } catch (const sql::PgError& e) {
    db.exec("ROLLBACK TO SAVEPOINT refused");
    return e.sqlstate + " " + e.what();
  }
  return "accepted";
}
}  // namespace

TEST_CASE("the upstreams and model_routes constraints refuse bad rows by name") {
  sql::PgConn db(database_url());
  auto p = unique("itc");
  Cleanup cleanup(db, p);
  db.exec("BEGIN");
  auto ins = "INSERT INTO upstreams (name, base_url, api_key_ref, extra_headers) VALUES ($1, $2, $3, $4::jsonb)";
  CHECK(refused_by(db, ins, {p + "a", "ftp://example.com", std::nullopt, "{}"}).find("upstreams_base_url_http") != std::string::npos);
  CHECK(refused_by(db, ins, {p + "a", "https://u:pw@example.com", std::nullopt, "{}"}).find("upstreams_base_url_http") != std::string::npos);
  CHECK(refused_by(db, ins, {p + "a", "https://example.com", "sk-or-v1-abc", "{}"}).find("upstreams_api_key_ref_form") != std::string::npos);
  CHECK(refused_by(db, ins, {p + "a", "https://example.com", "env:", "{}"}).find("upstreams_api_key_ref_form") != std::string::npos);
  CHECK(refused_by(db, ins, {p + "a", "https://example.com", std::nullopt, R"({"Host": "x"})"}).find("upstreams_extra_headers_valid") != std::string::npos);
  CHECK(refused_by(db, ins, {p + "a", "https://example.com", std::nullopt, "{\"X-A\": \"a\\r\\nB: c\"}"}).find("upstreams_extra_headers_valid") != std::string::npos);
  CHECK(refused_by(db, ins, {p + "a", "https://example.com", std::nullopt, R"({"X-A": 1})"}).find("upstreams_extra_headers_valid") != std::string::npos);
  CHECK(refused_by(db, ins, {p + " a", "https://example.com", std::nullopt, "{}"}).find("upstreams_name_form") != std::string::npos);
  CHECK(refused_by(db, ins, {p + "a", "https://example.com/api/v1", "env:OPENROUTER_API_KEY",
                             R"({"HTTP-Referer": "https://tollgate.example", "X-Title": "tollgate"})"}) == "accepted");
  CHECK(refused_by(db, ins, {p + "b", "http://127.0.0.1:8000", "file:/run/secrets/vllm", "{}"}) == "accepted");
  auto route = "INSERT INTO model_routes (model_pattern, upstream, weight) VALUES ('*', $1, $2::int)";
  CHECK(refused_by(db, route, {p + "a", "0"}).find("model_routes_weight_positive") != std::string::npos);
  CHECK(refused_by(db, route, {p + "nosuch", "1"}).find("model_routes_upstream_fkey") != std::string::npos);
  CHECK(refused_by(db, route, {p + "a", "3"}) == "accepted");
  db.exec("ROLLBACK");
  // usage_logs.upstream: nullable text
  auto col = db.exec("SELECT data_type, is_nullable FROM information_schema.columns"
                     " WHERE table_name = 'usage_logs' AND column_name = 'upstream'");
  REQUIRE(col.rows() == 1);
  CHECK(col.str(0, 0) == "text");
  CHECK(col.str(0, 1) == "YES");
}

TEST_CASE("upstreams add|list|disable and routes add|list|remove, as the CLI runs them") {
  sql::PgConn db(database_url());
  auto p = unique("itr");
  Cleanup cleanup(db, p);
  auto u = spec(p + "-openrouter", "https://openrouter.ai/api/v1");
  u.api_key_ref = "env:TOLLGATE_IT_OPENROUTER_KEY";
  u.extra_headers = {{"HTTP-Referer", "https://tollgate.example"}, {"X-Title", "tollgate"}};
  u.connect_timeout = 1500ms;
  sql::add_upstream(db, u);
  sql::add_upstream(db, spec(p + "-openai", "https://api.openai.com/v1"));
  CHECK_THROWS_AS(sql::add_upstream(db, u), std::invalid_argument);                          // exists
  CHECK_THROWS_AS(sql::add_upstream(db, spec(p + "-x", "ftp://x")), std::invalid_argument);  // checked before SQL
  auto bad_ref = spec(p + "-y");
  bad_ref.api_key_ref = "sk-or-v1-literal-key";
  CHECK_THROWS_AS(sql::add_upstream(db, bad_ref), std::invalid_argument);

  std::vector<routing::UpstreamSpec> mine;
  for (auto& s : sql::list_upstreams(db))
    if (s.name.starts_with(p)) mine.push_back(s);
  REQUIRE(mine.size() == 2);
  const auto& listed = mine[1];  // by name: -openai, -openrouter
  CHECK(listed.name == u.name);
  CHECK(listed.api_key_ref == u.api_key_ref);
  CHECK(listed.connect_timeout == 1500ms);
  CHECK(listed.response_timeout == 600'000ms);
  CHECK(listed.extra_headers.size() == 2);
  CHECK(listed.is_active);

  auto r1 = sql::add_route(db, routing::RouteSpec{0, "openai/*", p + "-openai", std::string("gpt-4o"), 10, 1, true});
  auto r2 = sql::add_route(db, routing::RouteSpec{0, "*", p + "-openrouter", std::nullopt, 0, 3, true});
  CHECK(r2 > r1);
  CHECK_THROWS_AS(sql::add_route(db, routing::RouteSpec{0, "*", p + "-nosuch", std::nullopt, 0, 1, true}), std::invalid_argument);
  CHECK_THROWS_AS(sql::add_route(db, routing::RouteSpec{0, "*", p + "-openai", std::nullopt, 0, 0, true}), std::invalid_argument);
  auto for_model = db.exec("SELECT upstream, upstream_model FROM tollgate_routes_for('openai/gpt-4o')"
                           " WHERE upstream LIKE $1 || '%'", {p});
  REQUIRE(for_model.rows() == 2);
  CHECK(for_model.str(0, 1) == "gpt-4o");
  CHECK(for_model.str(1, 1) == "openai/gpt-4o");

  CHECK(sql::set_upstream_active(db, p + "-openai", false));
  CHECK_FALSE(sql::set_upstream_active(db, p + "-nosuch", false));
  CHECK(db.exec("SELECT count(*) FROM tollgate_routes_for('openai/gpt-4o') WHERE upstream LIKE $1 || '%'", {p}).i64(0, 0) == 1);

  int found = 0;
  for (const auto& r : sql::list_routes(db))
    if (r.id == r1 || r.id == r2) ++found;
  CHECK(found == 2);
  CHECK(sql::remove_route(db, r1));
  CHECK_FALSE(sql::remove_route(db, r1));
}

TEST_CASE("a route change by SQL reaches a NOTIFY-driven reload within 1 s; with no rows the config is the route") {
  auto url = database_url();
  sql::PgConn db(url);
  auto p = unique("itn");
  Cleanup cleanup(db, p);
  REQUIRE(db.exec("SELECT count(*) FROM model_routes").i64(0, 0) == 0);  // other tests leave none
  ::setenv("TOLLGATE_IT_ROUTES_KEY", "sk-it-routes", 1);
  routing::DefaultUpstream defaults;
  defaults.base_url = "http://127.0.0.1:9/v1";
  routing::CircuitRegistry circuits;
  std::atomic<routing::RouteTablePtr> routes;
  std::atomic<int> reloads{0};
  sql::NotifyListener listener(
      url,
      [&](sql::PgConn& conn, const std::string& channel, const std::string&) {
        if (channel != "tollgate_routes") return;
        routes.store(sql::load_route_table(conn, defaults, circuits));
        ++reloads;
      },
      [&](sql::PgConn& conn) { routes.store(sql::load_route_table(conn, defaults, circuits)); });
  listener.start();
  REQUIRE(routes.load()->from_config());
  routing::RouteTable::Rng rng(7);
  CHECK(routes.load()->select("openai/gpt-4o", rng, 3)[0].upstream->name == "default");

  auto wait_for = [&](auto&& done) {
    auto t0 = std::chrono::steady_clock::now();
    while (!done(*routes.load()) && std::chrono::steady_clock::now() - t0 < 2s) std::this_thread::sleep_for(5ms);
    return std::chrono::steady_clock::now() - t0;
  };
  auto name = p + "-vllm";
  db.exec("INSERT INTO upstreams (name, base_url, api_key_ref) VALUES ($1, 'http://127.0.0.1:8000/v1', 'env:TOLLGATE_IT_ROUTES_KEY')",
          {name});
  db.exec("INSERT INTO model_routes (model_pattern, upstream, upstream_model) VALUES ('meta-llama/*', $1, 'llama')", {name});
  auto took = wait_for([](const routing::RouteTable& t) { return !t.from_config(); });
  CHECK(took < 1s);
  auto t = routes.load();
  REQUIRE_FALSE(t->from_config());
  auto c = t->select("meta-llama/llama-3-8b", rng, 3);
  REQUIRE(c.size() == 1);
  CHECK(c[0].upstream->name == name);
  CHECK(c[0].upstream_model == "llama");
  CHECK(c[0].upstream->wire_fields().find("Bearer sk-it-routes") != std::string::npos);
  CHECK(t->select("openai/gpt-4o", rng, 3).empty());  // rows exist: no implicit default
  WARN("route insert reached the reloaded table in " << std::chrono::duration_cast<std::chrono::milliseconds>(took).count() << " ms");

  db.exec("UPDATE upstreams SET is_active = false WHERE name = $1", {name});  // a change to upstreams reloads too
  took = wait_for([](const routing::RouteTable& t) { return t.routes().empty(); });
  CHECK(took < 1s);

  cleanup.run();  // no rows: the configured upstream again
  took = wait_for([](const routing::RouteTable& t) { return t.from_config(); });
  CHECK(took < 1s);
  CHECK(reloads >= 3);
  listener.stop();
  ::unsetenv("TOLLGATE_IT_ROUTES_KEY");
}
