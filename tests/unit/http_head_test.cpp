// Response and request heads written by hand must be what Beast's parser reads back, and a value
// that would split the head (CR, LF, NUL: e.g. a generation id out of an upstream's JSON) must
// never reach the wire.
#include "proxy/http_head.hpp"

#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <catch2/catch.hpp>

using namespace tollgate;
namespace http = boost::beast::http;

namespace {
/// Parses `wire` as a complete response with Beast; returns it (throws on a parse error).
http::response<http::string_body> parse_response(const std::string& wire) {
  http::response_parser<http::string_body> p;
  p.eager(true);
  boost::beast::error_code ec;
  p.put(boost::asio::buffer(wire), ec);
  if (ec) throw boost::system::system_error(ec);
  REQUIRE(p.is_done());
  return p.release();
}
}  // namespace

TEST_CASE("a response head with a body parses back field for field") {
  std::string h;
  http_head::status_line(h, 429);
  http_head::field(h, "Content-Type", "application/json");
  http_head::field(h, "x-request-id", "req_1");
  http_head::field(h, "Retry-After", "3");
  const std::string body = R"({"error":{}})";
  http_head::finish(h, body.size(), true);
  CHECK(h.starts_with("HTTP/1.1 429 Too Many Requests\r\n"));
  auto res = parse_response(h + body);
  CHECK(res.result_int() == 429);
  CHECK(res[http::field::content_type] == "application/json");
  CHECK(res["x-request-id"] == "req_1");
  CHECK(res[http::field::retry_after] == "3");
  CHECK(res.body() == body);
  CHECK(res.keep_alive());
}

TEST_CASE("a head without keep-alive says Connection: close; without a length it is chunked") {
  std::string h;
  http_head::status_line(h, 200);
  http_head::field(h, "Content-Type", "text/event-stream");
  http_head::finish(h, std::nullopt, false);
  auto res = parse_response(h + "5\r\nhello\r\n0\r\n\r\n");
  CHECK(res.chunked());
  CHECK_FALSE(res.keep_alive());
  CHECK(res.body() == "hello");
}

TEST_CASE("a field value holding CR, LF or NUL is left out, with its name") {
  for (std::string bad : {std::string("gen-1\r\nSet-Cookie: x=1"), std::string("a\nb"), std::string("a\rb"),
                          std::string("a\0b", 3)}) {
    std::string h;
    http_head::status_line(h, 200);
    http_head::field(h, "x-generation-id", bad);
    http_head::field(h, "x-request-id", "req_2");
    http_head::finish(h, 0, true);
    CHECK(h.find("x-generation-id") == std::string::npos);
    CHECK(h.find("Set-Cookie") == std::string::npos);
    auto res = parse_response(h);
    CHECK(res["x-request-id"] == "req_2");
  }
}

TEST_CASE("a request line joins the base path and the endpoint") {
  std::string h;
  http_head::request_line(h, "POST", "/api/v1", "/chat/completions");
  http_head::field(h, "Host", "upstream.example");
  std::string body = "{}";
  http_head::finish(h, body.size(), true);
  http::request_parser<http::string_body> p;
  p.eager(true);
  boost::beast::error_code ec;
  p.put(boost::asio::buffer(h + body), ec);
  REQUIRE_FALSE(ec);
  REQUIRE(p.is_done());
  CHECK(p.get().method() == http::verb::post);
  CHECK(p.get().target() == "/api/v1/chat/completions");
  CHECK(p.get().body() == "{}");
}
