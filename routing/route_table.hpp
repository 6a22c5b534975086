#pragma once
// The route table: which upstreams serve a model, in which order. An immutable snapshot built
// from the `upstreams` and `model_routes` rows (or, while model_routes has no rows, from the
// configuration's [upstream] as the one route `*` → `default`), swapped whole on NOTIFY
// tollgate_routes like the pricing snapshot:
//
//   std::atomic<RouteTablePtr> routes;                    // main.cpp
//   routes.store(sql::load_route_table(db, defaults, circuits));   // at start and on NOTIFY
//   auto table = routes.load();                           // per request: keep it for the request
//   for (const auto& c : table->select(model, rng, n)) …  // c.upstream, c.upstream_model
#include "routing/circuit.hpp"
#include "routing/secret.hpp"
#include "routing/spec.hpp"
#include "routing/upstream_url.hpp"

#include <boost/container/small_vector.hpp>

#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <random>
#include <string>
#include <string_view>
#include <vector>

namespace tollgate::routing {

/// An upstream ready to take requests: URL parsed, key read. Formats (fmt, iostreams) as
/// "name (https://host:port/base, key env:NAME)": the key ref, never the key.
struct Upstream {
  std::string name;
  std::string base_url;                    ///< as configured, for display
  UpstreamUrl url;                         ///< host, port, tls, base path (no trailing slash)
  std::optional<std::string> api_key_ref;  ///< where the key came from (display); nullopt = none
  std::optional<Secret> api_key;           ///< the key itself; nullopt = send no Authorization
  std::vector<HeaderField> extra_headers;
  std::chrono::milliseconds connect_timeout{5'000};
  std::chrono::milliseconds response_timeout{600'000};
  std::chrono::milliseconds idle_timeout{300'000};
  std::size_t max_connections = 64;        ///< per event-loop thread
  AuthStyle auth_style = AuthStyle::bearer;  ///< how the key is sent (wire_fields)
  std::shared_ptr<CircuitBreaker> circuit; ///< never null; shared by every snapshot and thread

  /// The request fields that never change for this upstream, each "Name: value\r\n": Host (with
  /// the port when not the scheme's default), Authorization: Bearer <key> (or x-api-key: <key>,
  /// as auth_style says) when there is a key,
  /// the extra headers, Content-Type: application/json and User-Agent. HOLDS THE KEY: write it
  /// to the upstream socket only, never to a log or an error.
  const std::string& wire_fields() const { return wire_fields_; }
  /// "name (url, key ref)": safe to log.
  std::string describe() const;
  /// "scheme://host:port": the connection pool this upstream's requests share.
  const std::string& origin() const { return origin_; }

 private:
  friend class RouteTable;
  std::string wire_fields_;
  std::string origin_;
};

std::ostream& operator<<(std::ostream& o, const Upstream& u);

/// One route of the table, resolved to its upstream.
struct Route {
  std::int64_t id = 0;                 ///< model_routes.id (0 for the configured default)
  std::string model_pattern;
  const Upstream* upstream = nullptr;  ///< owned by the table
  std::optional<std::string> upstream_model;
  std::int32_t priority = 0;
  std::int32_t weight = 1;
};

/// One attempt the request may make, in order.
struct Candidate {
  const Upstream* upstream = nullptr;  ///< valid while the RouteTable lives
  /// The model name to send: the route's rename, else the model asked for (then it views the
  /// caller's `model` argument, which must outlive the candidate).
  std::string_view upstream_model;
  std::int64_t route_id = 0;
};
using Candidates = boost::container::small_vector<Candidate, 4>;

/// What build_route_table() uses when model_routes has no rows: today's [upstream] config.
struct DefaultUpstream {
  std::string base_url;                ///< upstream.url / TOLLGATE_UPSTREAM_URL
  std::optional<Secret> api_key;       ///< upstream.key / TOLLGATE_UPSTREAM_KEY; nullopt = none
  std::chrono::milliseconds connect_timeout{5'000};
  std::chrono::milliseconds response_timeout{600'000};
  std::chrono::milliseconds idle_timeout{300'000};
  std::size_t max_connections = 64;
};

/// The name of the upstream built from the configuration.
inline constexpr std::string_view default_upstream_name = "default";

class RouteTable;
using RouteTablePtr = std::shared_ptr<const RouteTable>;

/// Builds a table from stored rows. Inactive upstreams and routes are left out, so are routes
/// whose upstream is inactive or missing. An upstream whose key ref cannot be read (unset
/// variable, unreadable or empty file) or whose row is invalid is unusable: it and its routes
/// are left out, with one warning log line naming the upstream and the ref (never a value),
/// and listed in unusable(). While `routes` is empty (no rows at all, active or not), the table
/// is the one route `*` → `defaults` named "default". Breakers come from `circuits`, so their
/// state survives reloads. Never throws for bad rows.
RouteTablePtr build_route_table(const std::vector<UpstreamSpec>& upstreams, const std::vector<RouteSpec>& routes,
                                const DefaultUpstream& defaults, CircuitRegistry& circuits);

/// Immutable routes; see the file comment. Thread-safe (const).
class RouteTable {
 public:
  using Rng = std::mt19937_64;

  /// The attempts for `model`, at most `max_candidates`: the matching routes of the highest
  /// priority first, in an order drawn by weight (the first is route i with probability
  /// weight_i / Σ weights; then the next among those left, and so on), then the matching routes
  /// of each lower priority, drawn the same way. Empty when no route matches (the request path
  /// answers "no route for model"). Does not look at circuits: the caller asks each
  /// candidate's `upstream->circuit` before attempting it and skips a refusal, so pass a
  /// max_candidates above max_attempts to leave room for skipped ones.
  Candidates select(std::string_view model, Rng& rng, std::size_t max_candidates) const;

  /// Whether any route matches `model` (select() would not be empty).
  bool serves(std::string_view model) const;

  const std::deque<Upstream>& upstreams() const { return upstreams_; }
  /// Active routes to usable upstreams, highest priority first, then by id.
  const std::vector<Route>& routes() const { return routes_; }
  /// The upstream called `name`, or nullptr.
  const Upstream* upstream(std::string_view name) const;
  /// "name: reason" for each upstream left out because it could not be used (no values).
  const std::vector<std::string>& unusable() const { return unusable_; }
  /// True when the table is the configured default (model_routes has no rows).
  bool from_config() const { return from_config_; }

 private:
  friend RouteTablePtr build_route_table(const std::vector<UpstreamSpec>&, const std::vector<RouteSpec>&,
                                         const DefaultUpstream&, CircuitRegistry&);
  static void finish(Upstream& u);

  std::deque<Upstream> upstreams_;  ///< a deque: Route::upstream pointers stay valid as it grows
  std::vector<Route> routes_;
  std::vector<std::string> unusable_;
  bool from_config_ = false;
};

}  // namespace tollgate::routing

template <>
struct fmt::formatter<tollgate::routing::Upstream> : fmt::formatter<std::string_view> {
  template <class Ctx>
  auto format(const tollgate::routing::Upstream& u, Ctx& ctx) const {
    return fmt::formatter<std::string_view>::format(u.describe(), ctx);
  }
};
