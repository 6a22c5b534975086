// The strict request parser (proxy/request_parser.hpp): what RFC 9112 says to reject, and what
// Beast 1.81 alone accepts or throws on.
#include "proxy/connection_limiter.hpp"
#include "proxy/request_parser.hpp"

#include <catch2/catch.hpp>

#include <string>

using namespace tollgate;
using State = ParseResult::State;

namespace {
const HttpLimits limits;

ParseResult parse(const std::string& bytes) { return parse_request_bytes(bytes, limits); }

unsigned status_of(const std::string& bytes) {
  auto r = parse(bytes);
  return r.state == State::rejected ? r.rejection.status : 0;
}

const std::string post_head = "POST /v1/chat/completions HTTP/1.1\r\nHost: gw.example\r\n";
}  // namespace

TEST_CASE("a plain request parses, with its body") {
  auto r = parse(post_head + "Content-Length: 5\r\nAuthorization: Bearer x\r\n\r\nhelloGET");
  REQUIRE(r.state == State::complete);
  CHECK(r.header.method() == boost::beast::http::verb::post);
  CHECK(r.header.target() == "/v1/chat/completions");
  CHECK(r.body == "hello");
  std::string bytes = post_head + "Content-Length: 5\r\nAuthorization: Bearer x\r\n\r\nhelloGET";
  CHECK(bytes.substr(r.consumed) == "GET");  // a pipelined request is left over
}

TEST_CASE("a chunked body is decoded; trailers are refused, whatever their size") {
  auto r = parse(post_head + "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
  REQUIRE(r.state == State::complete);
  CHECK(r.body == "hello");
  CHECK(status_of(post_head + "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n") == 400);
  // Beast 1.81 throws std::length_error on a trailer field of 64 KiB or more.
  std::string big(70 * 1024, 'a');
  CHECK(status_of(post_head + "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-T: " + big + "\r\n\r\n") == 400);
}

TEST_CASE("request smuggling: Content-Length with Transfer-Encoding, in either order") {
  CHECK(status_of(post_head + "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n") == 400);
  CHECK(status_of(post_head + "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n") == 400);
  CHECK(status_of(post_head + "Transfer-Encoding: gzip\r\nContent-Length: 5\r\n\r\nhello") == 400);
}

TEST_CASE("Transfer-Encoding: exactly chunked, on HTTP/1.1 only") {
  CHECK(status_of(post_head + "Transfer-Encoding: gzip\r\n\r\n") == 400);        // length unknown
  CHECK(status_of(post_head + "Transfer-Encoding: chunked, gzip\r\n\r\n") == 400);
  CHECK(status_of(post_head + "Transfer-Encoding: chunked, chunked\r\n\r\n") == 400);
  CHECK(status_of(post_head + "Transfer-Encoding: gzip, chunked\r\n\r\n") == 501);
  CHECK(status_of(post_head + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n") == 400);
  CHECK(status_of("POST /v1/chat/completions HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n") == 400);
  CHECK(parse(post_head + "Transfer-Encoding: CHUNKED\r\n\r\n0\r\n\r\n").state == State::complete);
}

TEST_CASE("Content-Length: one field, digits only") {
  CHECK(status_of(post_head + "Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello") == 400);
  CHECK(status_of(post_head + "Content-Length: 5, 5\r\n\r\nhello") == 400);
  CHECK(status_of(post_head + "Content-Length: +5\r\n\r\nhello") == 400);
  CHECK(status_of(post_head + "Content-Length: 0x5\r\n\r\nhello") == 400);
  CHECK(status_of(post_head + "Content-Length: 99999999999999999999999\r\n\r\n") == 400);
  CHECK(status_of(post_head + "Content-Length: 20000000\r\n\r\n") == 413);
}

TEST_CASE("Host: exactly one, well formed, on HTTP/1.1") {
  CHECK(status_of("GET /v1/models HTTP/1.1\r\n\r\n") == 400);
  CHECK(parse("GET /v1/models HTTP/1.0\r\n\r\n").state == State::complete);
  CHECK(status_of("GET /v1/models HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n") == 400);
  CHECK(status_of("GET /v1/models HTTP/1.1\r\nHost: a b\r\n\r\n") == 400);
  CHECK(status_of("GET /v1/models HTTP/1.1\r\nHost: user@a\r\n\r\n") == 400);
  CHECK(status_of("GET /v1/models HTTP/1.1\r\nHost: a:99999\r\n\r\n") == 400);
  CHECK(status_of("GET /v1/models HTTP/1.1\r\nHost: a:8x\r\n\r\n") == 400);
  CHECK(parse("GET /v1/models HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n").state == State::complete);
  CHECK(parse("GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n").state == State::complete);
}

TEST_CASE("duplicate Authorization, obs-fold, bare LF and bare CR are refused") {
  CHECK(status_of(post_head + "Authorization: Bearer a\r\nAuthorization: Bearer b\r\n\r\n") == 400);
  CHECK(status_of(post_head + "X-A: 1\r\n  folded\r\n\r\n") == 400);
  CHECK(status_of(post_head + "X-A: 1\n\r\n") == 400);
  CHECK(status_of("GET /v1/models HTTP/1.1\nHost: a\r\n\r\n") == 400);
  CHECK(status_of(post_head + "X-A: 1\r2\r\n\r\n") == 400);
}

TEST_CASE("limits: 414 for the request line, 431 for the header section and field count") {
  std::string ok_target = "/v1/models?" + std::string(8 * 1024 - 30, 'a');
  CHECK(parse("GET " + ok_target + " HTTP/1.1\r\nHost: a\r\n\r\n").state == State::complete);
  CHECK(status_of("GET /v1/models?" + std::string(8 * 1024, 'a') + " HTTP/1.1\r\nHost: a\r\n\r\n") == 414);
  CHECK(status_of("GET /v1/models?" + std::string(9 * 1024, 'a')) == 414);  // before any CRLF
  CHECK(status_of("GET /v1/models HTTP/1.1\r\nHost: a\r\nX: " + std::string(16 * 1024, 'a') + "\r\n\r\n") == 431);
  std::string fields;
  for (int i = 0; i < 99; ++i) fields += "X-" + std::to_string(i) + ": 1\r\n";
  CHECK(parse("GET /v1/models HTTP/1.1\r\nHost: a\r\n" + fields + "\r\n").state == State::complete);  // 100
  CHECK(status_of("GET /v1/models HTTP/1.1\r\nHost: a\r\n" + fields + "X-last: 1\r\n\r\n") == 431);    // 101
}

TEST_CASE("chunk framing: extensions up to 8 KiB, nothing malformed") {
  std::string ext(8 * 1024 - 1, 'e');
  CHECK(parse(post_head + "Transfer-Encoding: chunked\r\n\r\n5;" + ext + "\r\nhello\r\n0\r\n\r\n").state ==
        State::complete);
  CHECK(status_of(post_head + "Transfer-Encoding: chunked\r\n\r\n5;" + ext + "ee\r\nhello\r\n0\r\n\r\n") == 400);
  CHECK(status_of(post_head + "Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n") == 400);
  CHECK(status_of(post_head + "Transfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n") == 400);
  CHECK(status_of(post_head + "Transfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n") == 400);
  // a chunk-size line over 8 KiB, even of leading zeros, or with a bare LF, is refused at once
  CHECK(status_of(post_head + "Transfer-Encoding: chunked\r\n\r\n" + std::string(9000, '0') + "5\r\nhello\r\n0\r\n\r\n") == 400);
  CHECK(status_of(post_head + "Transfer-Encoding: chunked\r\n\r\n" + std::string(8000, '0') + "5\r\nhello\r\n0\r\n\r\n") == 0);
  CHECK(status_of(post_head + "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\n\r\n") == 400);
  CHECK(status_of(post_head + "Transfer-Encoding: chunked\r\n\r\n" + std::string(9000, '0')) == 400);
  // a chunk-size line that never ends is refused once it cannot fit the read buffer
  CHECK(status_of(post_head + "Transfer-Encoding: chunked\r\n\r\n5;" + std::string(40 * 1024, 'e')) == 400);
}

TEST_CASE("methods no route accepts, targets outside RFC 3986, other HTTP versions") {
  for (const char* m : {"PUT", "DELETE", "TRACE", "CONNECT", "HEAD", "OPTIONS", "get", "FOO"})
    CHECK(status_of(std::string(m) + " /v1/models HTTP/1.1\r\nHost: a\r\n\r\n") == 400);
  for (const char* t : {"/v1/mo dels", "/v1/\"x\"", "/v1/<x>", "/v1/\\x", "/v1/{x}", "/v1/^", "/v1/`", "/v1/|",
                        "/v1/\xc3\xa9", "/v1/%zz", "/v1/%4", "*", "v1/models", "/v1#frag"})
    CHECK(status_of("GET " + std::string(t) + " HTTP/1.1\r\nHost: a\r\n\r\n") == 400);
  auto abs = parse("GET http://gw.example/v1/models?x=1 HTTP/1.1\r\nHost: gw.example\r\n\r\n");
  REQUIRE(abs.state == State::complete);
  CHECK(abs.header.target() == "/v1/models?x=1");
  CHECK(status_of("GET /v1/models HTTP/2.0\r\nHost: a\r\n\r\n") == 505);
  CHECK(status_of("GET /v1/models HTTP/0.9\r\nHost: a\r\n\r\n") == 505);
  CHECK(status_of("GET /v1/models HTTP/1.2\r\nHost: a\r\n\r\n") == 505);  // Beast 1.81 reads only 1.0/1.1
  CHECK(status_of("GET /v1/models FOO/1.1\r\nHost: a\r\n\r\n") == 400);
}

TEST_CASE("an incomplete request asks for more") {
  CHECK(parse("GET /v1/mod").state == State::need_more);
  CHECK(parse(post_head).state == State::need_more);
  CHECK(parse(post_head + "Content-Length: 5\r\n\r\nhel").state == State::need_more);
  CHECK(parse("\r\n\r\nGET /v1/models HTTP/1.1\r\nHost: a\r\n\r\n").state == State::complete);
}

TEST_CASE("connection caps: total and per client address, slots given back") {
  ConnectionLimiter limiter(3, 2);
  auto a = boost::asio::ip::make_address("192.0.2.1"), b = boost::asio::ip::make_address("192.0.2.2");
  ConnectionLimiter::Refusal why;
  auto s1 = limiter.acquire(a, why);
  auto s2 = limiter.acquire(a, why);
  CHECK((s1 && s2 && why == ConnectionLimiter::Refusal::none));
  CHECK(!limiter.acquire(a, why));
  CHECK(why == ConnectionLimiter::Refusal::per_address);
  auto s3 = limiter.acquire(b, why);
  CHECK(s3);
  CHECK(!limiter.acquire(b, why));
  CHECK(why == ConnectionLimiter::Refusal::total);
  CHECK(limiter.open() == 3);
  {
    auto moved = std::move(s1);  // a moved-from slot gives nothing back twice
  }
  CHECK(limiter.open() == 2);
  CHECK(limiter.acquire(a, why));  // released again at the end of this statement
  CHECK(limiter.open() == 2);
}
