#pragma once
// Where an upstream is: an absolute http(s) URL split for connecting (Boost.URL).
#include <string>

namespace tollgate::routing {

/// Parsed from an absolute http(s) URL such as https://openrouter.ai/api/v1 →
/// {tls, "openrouter.ai", "443", "/api/v1"}.
struct UpstreamUrl {
  bool tls = true;
  std::string host;
  std::string port;
  std::string base_path;  ///< no trailing slash ("" for the root)
};

/// Parses an upstream URL; throws std::invalid_argument with a readable message naming the URL
/// (URLs are not secret: keys never go in them, userinfo is refused).
UpstreamUrl parse_upstream_url(const std::string& url);

}  // namespace tollgate::routing
