#include "routing/spec.hpp"

#include "routing/secret.hpp"
#include "routing/upstream_url.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <stdexcept>
#include <string_view>

namespace tollgate::routing {

std::string_view to_string(AuthStyle s) noexcept { return s == AuthStyle::x_api_key ? "x-api-key" : "bearer"; }

std::optional<AuthStyle> parse_auth_style(std::string_view s) noexcept {
  if (s == "bearer") return AuthStyle::bearer;
  if (s == "x-api-key") return AuthStyle::x_api_key;
  return std::nullopt;
}

namespace {
bool is_tchar(unsigned char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         std::string_view("!#$%&'*+-.^_`|~").find(static_cast<char>(c)) != std::string_view::npos;
}

std::string lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

/// The fields tollgate writes itself on every upstream request, or that frame it.
constexpr std::array<std::string_view, 14> reserved_headers = {
    "host", "authorization", "content-length", "transfer-encoding", "connection", "keep-alive", "te",
    "trailer", "upgrade", "expect", "content-type", "user-agent", "proxy-authorization", "x-api-key"};
}  // namespace

void check_extra_header(const HeaderField& h) {
  const auto& [name, value] = h;
  if (name.empty() || !std::all_of(name.begin(), name.end(), [](char c) { return is_tchar(static_cast<unsigned char>(c)); }))
    throw std::invalid_argument(fmt::format("header name '{}' is not an HTTP token", name));
  if (std::find(reserved_headers.begin(), reserved_headers.end(), lower(name)) != reserved_headers.end())
    throw std::invalid_argument(fmt::format("header {} is written by tollgate itself and cannot be added", name));
  for (unsigned char c : value)
    if ((c < 0x20 && c != '\t') || c == 0x7f)
      throw std::invalid_argument(fmt::format("the value of header {} holds a control character", name));
}

HeaderField parse_header_arg(const std::string& arg) {
  auto colon = arg.find(':');
  if (colon == std::string::npos || colon == 0)
    throw std::invalid_argument("--header takes 'Name: value'");
  std::string_view value(arg);
  value.remove_prefix(colon + 1);
  while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.remove_prefix(1);
  while (!value.empty() && (value.back() == ' ' || value.back() == '\t')) value.remove_suffix(1);
  HeaderField h{arg.substr(0, colon), std::string(value)};
  check_extra_header(h);
  return h;
}

void check_upstream_spec(const UpstreamSpec& u) {
  bool name_ok = !u.name.empty() && u.name.size() <= 63 && std::isalnum(static_cast<unsigned char>(u.name[0])) &&
                 std::all_of(u.name.begin(), u.name.end(), [](unsigned char c) {
                   return std::isalnum(c) || c == '.' || c == '_' || c == '-';
                 });
  if (!name_ok)
    throw std::invalid_argument(fmt::format("upstream name '{}' must be 1-63 of [A-Za-z0-9._-], starting with a letter or digit", u.name));
  parse_upstream_url(u.base_url);
  if (u.base_url.find_first_of("?# \t\r\n") != std::string::npos)
    throw std::invalid_argument("upstream URL takes no query, fragment or whitespace: " + u.base_url);
  if (u.api_key_ref) check_key_ref(*u.api_key_ref);
  for (const auto& h : u.extra_headers) check_extra_header(h);
  for (auto [what, ms] : {std::pair{"connect timeout", u.connect_timeout}, {"response timeout", u.response_timeout},
                          {"idle timeout", u.idle_timeout}})
    if (ms.count() < 1 || ms.count() > INT32_MAX) throw std::invalid_argument(fmt::format("{} must be 1 ms or more", what));
  if (u.max_connections < 1) throw std::invalid_argument("max connections must be 1 or more");
}

void check_route_spec(const RouteSpec& r) {
  if (r.model_pattern.empty()) throw std::invalid_argument("a route needs a model pattern");
  if (r.upstream.empty()) throw std::invalid_argument("a route needs an upstream");
  if (r.weight < 1) throw std::invalid_argument(fmt::format("route weight must be 1 or more, not {}", r.weight));
  if (r.upstream_model && r.upstream_model->empty()) throw std::invalid_argument("--upstream-model must not be empty");
}

}  // namespace tollgate::routing
