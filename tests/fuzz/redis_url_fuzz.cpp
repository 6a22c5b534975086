// Fuzz target: the Redis URL (ratelimit/redis_client.hpp, parse_redis_url), from
// [redis] url or TOLLGATE_REDIS_URL.
//
// Invariants: a refusal is std::invalid_argument (nothing else is thrown); a TCP URL has a host and
// a port in 1..65535, a Unix one an absolute path that fits sockaddr_un; db >= 0; and the URL
// written back from the parsed fields (everything percent-encoded) parses to the same fields.
#include "ratelimit/redis_client.hpp"
#include "tests/fuzz/fuzz_check.hpp"

#include <fmt/format.h>

#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>

namespace {
using tollgate::ratelimit::RedisUrl;
using tollgate::ratelimit::parse_redis_url;

std::string percent_encode(const std::string& s, bool keep_slash) {
  std::string out;
  for (unsigned char c : s) {
    bool plain = (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (keep_slash && c == '/');
    if (plain) out += static_cast<char>(c);
    else out += fmt::format("%{:02X}", c);
  }
  return out;
}

std::string write_url(const RedisUrl& u) {
  std::string userinfo;
  if (!u.password.empty()) userinfo = percent_encode(u.username, false) + ":" + percent_encode(u.password, false) + "@";
  if (!u.socket_path.empty())
    return fmt::format("unix://{}{}?db={}", userinfo, percent_encode(u.socket_path, true), u.db);
  bool bracket = u.host.find(':') != std::string::npos || u.host.front() == '[';
  return fmt::format("redis://{}{}{}{}:{}/{}", userinfo, bracket ? "[" : "", u.host, bracket ? "]" : "", u.port, u.db);
}

bool same(const RedisUrl& a, const RedisUrl& b) {
  return a.host == b.host && a.port == b.port && a.socket_path == b.socket_path && a.db == b.db &&
         a.password == b.password && a.username == b.username;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string url(reinterpret_cast<const char*>(data), size);
  RedisUrl u;
  try {
    u = parse_redis_url(url);
  } catch (const std::invalid_argument& e) {
    FUZZ_CHECK(e.what()[0] != '\0');
    return 0;
  }
  FUZZ_CHECK(u.db >= 0);
  FUZZ_CHECK(u.username.empty() || !u.password.empty());
  if (u.socket_path.empty()) {
    FUZZ_CHECK(!u.host.empty());
    FUZZ_CHECK(u.port >= 1 && u.port <= 65535);
  } else {
    FUZZ_CHECK(u.socket_path.front() == '/' && u.socket_path.size() <= 107);
    FUZZ_CHECK(u.socket_path.find('\0') == std::string::npos);
    FUZZ_CHECK(u.host.empty() && u.port == 0);
  }
  std::string written = write_url(u);
  RedisUrl again;
  try {
    again = parse_redis_url(written);
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "%s\n", e.what());
    FUZZ_CHECK(!"the written-back URL parses");
  }
  FUZZ_CHECK(same(u, again));
  return 0;
}
