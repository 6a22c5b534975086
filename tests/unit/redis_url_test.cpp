// parse_redis_url (ratelimit/redis_client.hpp): redis:// and unix:// URLs, and the refusals with
// their messages. No server needed.
#include "ratelimit/redis_client.hpp"

#include <catch2/catch.hpp>

#include <stdexcept>
#include <string>
#include <utility>

using tollgate::ratelimit::parse_redis_url;

TEST_CASE("parse_redis_url") {
  auto u = parse_redis_url("redis://127.0.0.1:23579");
  CHECK(u.host == "127.0.0.1");
  CHECK(u.port == 23579);
  CHECK(u.db == 0);
  CHECK(u.password.empty());

  u = parse_redis_url("redis://:s%40cr%3At@redis.internal/3");
  CHECK(u.host == "redis.internal");
  CHECK(u.port == 6379);
  CHECK(u.db == 3);
  CHECK(u.password == "s@cr:t");
  CHECK(u.username.empty());

  u = parse_redis_url("REDIS://app:pw@[::1]:7000/0");
  CHECK(u.host == "::1");
  CHECK(u.port == 7000);
  CHECK(u.username == "app");
  CHECK(u.password == "pw");

  for (const char* bad : {"http://x", "rediss://x:6380", "redis://", "redis://:6379", "redis://h:0",
                          "redis://h:70000", "redis://h:12x", "redis://h/-1", "redis://h/db", "redis://pw@h",
                          "redis://:%zz@h", "redis://[::1", "redis://h:6379/0?x=1"}) {
    INFO(bad);
    CHECK_THROWS_AS(parse_redis_url(bad), std::invalid_argument);
  }
}

TEST_CASE("parse_redis_url: unix://") {
  auto u = parse_redis_url("unix:///tmp/redis.sock");
  CHECK(u.socket_path == "/tmp/redis.sock");
  CHECK(u.host.empty());
  CHECK(u.port == 0);
  CHECK(u.db == 0);
  CHECK(u.password.empty());
  CHECK(u.username.empty());

  u = parse_redis_url("UNIX://:s%40cr%3At@/run/redis/redis.sock?db=3");
  CHECK(u.socket_path == "/run/redis/redis.sock");
  CHECK(u.db == 3);
  CHECK(u.password == "s@cr:t");
  CHECK(u.username.empty());

  u = parse_redis_url("unix://app:pw@/var/run/a@b/redis%20x%3F.sock?db=0");
  CHECK(u.socket_path == "/var/run/a@b/redis x?.sock");
  CHECK(u.username == "app");
  CHECK(u.password == "pw");
  CHECK(u.db == 0);

  std::string longest = "/" + std::string(106, 's');  // 107 bytes: what sockaddr_un holds
  CHECK(parse_redis_url("unix://" + longest).socket_path == longest);

  // redis:// URLs have no socket path
  CHECK(parse_redis_url("redis://127.0.0.1:6379").socket_path.empty());

  const std::pair<std::string, const char*> bad[] = {
      {"unix://", "missing socket path"},
      {"unix://:pw@", "missing socket path"},
      {"unix://?db=1", "missing socket path"},
      {"unix://redis.sock", "must be absolute"},
      {"unix://run/redis.sock", "must be absolute"},
      {"unix://localhost/tmp/redis.sock", "must be absolute"},
      {"unix://:pw@redis.sock", "must be absolute"},
      {"unix:/tmp/redis.sock", "expected redis://"},
      {"unix://pw@/tmp/redis.sock", "[user]:password"},
      {"unix://app:@/tmp/redis.sock", "empty password"},
      {"unix://:%zz@/tmp/redis.sock", "percent-encoding in the user information"},
      {"unix:///tmp/r%zz.sock", "percent-encoding in the socket path"},
      {"unix:///tmp/r%00.sock", "NUL"},
      {"unix://" + longest + "s", "at most 107"},
      {"unix:///tmp/redis.sock?", "empty query string"},
      {"unix:///tmp/redis.sock?db=", "database number"},
      {"unix:///tmp/redis.sock?db", "database number"},
      {"unix:///tmp/redis.sock?db=-1", "database number"},
      {"unix:///tmp/redis.sock?db=x", "database number"},
      {"unix:///tmp/redis.sock?db=1&db=2", "more than once"},
      {"unix:///tmp/redis.sock?password=pw", "unsupported query parameter 'password'"},
      {"unix:///tmp/redis.sock?db=1&timeout=5", "unsupported query parameter 'timeout'"},
      {"unix:///tmp/redis.sock#x", "fragments"},
  };
  for (const auto& [url, why] : bad) {
    INFO(url);
    CHECK_THROWS_AS(parse_redis_url(url), std::invalid_argument);
    CHECK_THROWS_WITH(parse_redis_url(url), Catch::Contains(why));
  }
}
