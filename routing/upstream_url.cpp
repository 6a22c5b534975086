#include "routing/upstream_url.hpp"

#include <boost/url/parse.hpp>

#include <stdexcept>

namespace tollgate::routing {

UpstreamUrl parse_upstream_url(const std::string& text) {
  auto r = boost::urls::parse_absolute_uri(text);
  if (!r) throw std::invalid_argument("upstream URL is not an absolute URL: " + text);
  // user:password@ would be a secret in every log line that names the URL (and was never sent).
  if (r->has_userinfo())
    throw std::invalid_argument("upstream URL must not carry user:password@ (use an API key ref)");
  UpstreamUrl u;
  if (r->scheme() == "https") u.tls = true;
  else if (r->scheme() == "http") u.tls = false;
  else throw std::invalid_argument("upstream URL must be http:// or https://: " + text);
  u.host = std::string(r->encoded_host());
  if (u.host.empty()) throw std::invalid_argument("upstream URL has no host: " + text);
  u.port = r->has_port() ? std::string(r->port()) : (u.tls ? "443" : "80");
  u.base_path = std::string(r->encoded_path());
  while (!u.base_path.empty() && u.base_path.back() == '/') u.base_path.pop_back();
  return u;
}

}  // namespace tollgate::routing
