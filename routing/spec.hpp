#pragma once
// Upstreams and model routes as stored (sql/migrations/0007_upstreams.sql): plain rows, before
// key refs are read and URLs parsed. The CLI writes these, the loader reads them, and
// build_route_table() (route_table.hpp) turns them into a RouteTable.
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace tollgate::routing {

/// One header added to every request to an upstream, e.g. {"HTTP-Referer", "https://…"}.
using HeaderField = std::pair<std::string, std::string>;

/// How an upstream takes its API key (upstreams.auth_style).
enum class AuthStyle {
  bearer,     ///< `Authorization: Bearer <key>` (OpenAI, OpenRouter)
  x_api_key,  ///< `x-api-key: <key>`, with `anthropic-version: 2023-06-01` unless the client sent one (Anthropic)
};
/// "bearer" | "x-api-key" (the column's values).
std::string_view to_string(AuthStyle s) noexcept;
/// The style a column value names; nullopt for any other text.
std::optional<AuthStyle> parse_auth_style(std::string_view s) noexcept;

/// One row of `upstreams`.
struct UpstreamSpec {
  std::string name;                        ///< unique; [A-Za-z0-9][A-Za-z0-9._-]{0,62}
  std::string base_url;                    ///< absolute http(s) URL with the API's base path
  std::optional<std::string> api_key_ref;  ///< `env:NAME` or `file:/path`; nullopt = no key
  std::vector<HeaderField> extra_headers;
  std::chrono::milliseconds connect_timeout{5'000};
  std::chrono::milliseconds response_timeout{600'000};  ///< until the response headers
  std::chrono::milliseconds idle_timeout{300'000};      ///< between two reads of a body
  std::int32_t max_connections = 64;       ///< per event-loop thread
  AuthStyle auth_style = AuthStyle::bearer;
  bool is_active = true;
};

/// One row of `model_routes`.
struct RouteSpec {
  std::int64_t id = 0;                        ///< 0 before it is stored
  std::string model_pattern;                  ///< glob: `*` any run, `?` one character
  std::string upstream;                       ///< upstreams.name
  std::optional<std::string> upstream_model;  ///< the model name sent upstream; nullopt = as asked
  std::int32_t priority = 0;                  ///< highest matching first
  std::int32_t weight = 1;                    ///< > 0; share among equal priorities
  bool is_active = true;
};

/// Checks an upstream row as the table's constraints do (name form, http(s) base URL without
/// userinfo, key ref form, header names and values, positive timeouts and connection cap).
/// Throws std::invalid_argument with a message naming the field (never a header's value).
void check_upstream_spec(const UpstreamSpec& u);

/// Checks one extra header: an RFC 9110 token name that tollgate does not write itself (Host,
/// Authorization, framing, Content-Type, User-Agent…) and a value without control characters.
/// Throws std::invalid_argument naming the header.
void check_extra_header(const HeaderField& h);

/// Parses a `--header 'Name: value'` argument (value trimmed) and checks it. Throws
/// std::invalid_argument.
HeaderField parse_header_arg(const std::string& arg);

/// Checks a route row: non-empty pattern and upstream, weight > 0, non-empty rename if given.
/// Throws std::invalid_argument.
void check_route_spec(const RouteSpec& r);

}  // namespace tollgate::routing
