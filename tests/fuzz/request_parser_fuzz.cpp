// Fuzz target: the strict request parser, raw bytes in (proxy/request_parser.hpp,
// parse_request_bytes). Each input is parsed twice: with the default limits, and with small
// limits so that every limit is reachable by short inputs.
//
// Invariants: nothing throws; a rejection is one of the statuses the parser documents; an accepted
// request is GET or POST, HTTP/1.0 or 1.1, origin-form, with one valid Host on 1.1, at most one
// Authorization, Content-Length and Transfer-Encoding and never both, within every limit, with a
// body of exactly Content-Length bytes; and it is accepted identically when the bytes arrive
// alone, while any shorter prefix of it still needs more bytes (a session reads incrementally, so
// a request must not be judged by where a TCP segment ends).
#include "proxy/request_parser.hpp"
#include "tests/fuzz/fuzz_check.hpp"

#include <boost/beast/core/string.hpp>

#include <cstdint>
#include <iterator>
#include <string_view>

namespace {
using namespace tollgate;
namespace http = boost::beast::http;
using State = ParseResult::State;

HttpLimits small_limits() {
  HttpLimits l;
  l.request_line = 64;
  l.header_section = 256;
  l.max_fields = 8;
  l.chunk_extensions = 16;
  l.body = 512;
  return l;
}

std::string_view trim_ows(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

void check_rejection(const Rejection& r) {
  unsigned s = r.status;
  FUZZ_CHECK(s == 400 || s == 413 || s == 414 || s == 431 || s == 501 || s == 505);
  FUZZ_CHECK(!r.code.empty());
  FUZZ_CHECK(!r.message.empty());
}

void check_complete(std::string_view in, const ParseResult& r, const HttpLimits& lim) {
  const auto& h = r.header;
  FUZZ_CHECK(r.consumed > 0 && r.consumed <= in.size());
  FUZZ_CHECK(h.method() == http::verb::get || h.method() == http::verb::post);
  FUZZ_CHECK(h.version() == 10 || h.version() == 11);
  std::string_view target(h.target().data(), h.target().size());
  FUZZ_CHECK(valid_origin_form(target));
  FUZZ_CHECK(r.body.size() <= lim.body);
  FUZZ_CHECK(static_cast<std::size_t>(std::distance(h.begin(), h.end())) <= lim.max_fields);

  std::size_t hosts = h.count(http::field::host), auths = h.count(http::field::authorization);
  std::size_t cls = h.count(http::field::content_length), tes = h.count(http::field::transfer_encoding);
  FUZZ_CHECK(hosts <= 1 && auths <= 1 && cls <= 1 && tes <= 1);
  FUZZ_CHECK(cls + tes <= 1);  // request smuggling: never both
  if (h.version() == 11) FUZZ_CHECK(hosts == 1);
  if (hosts == 1) {
    auto v = h[http::field::host];
    FUZZ_CHECK(valid_host(std::string_view(v.data(), v.size())));
  }
  if (tes == 1) {
    auto v = h[http::field::transfer_encoding];
    FUZZ_CHECK(h.version() == 11);
    FUZZ_CHECK(boost::beast::iequals(trim_ows(std::string_view(v.data(), v.size())), "chunked"));
  } else if (cls == 1) {
    auto v = h[http::field::content_length];
    std::uint64_t n = 0;
    FUZZ_CHECK(!v.empty());
    for (char c : v) {
      FUZZ_CHECK(c >= '0' && c <= '9');
      FUZZ_CHECK(n <= lim.body);  // else 413 before the body was read
      n = n * 10 + static_cast<std::uint64_t>(c - '0');
    }
    FUZZ_CHECK(r.body.size() == n);
  } else {
    FUZZ_CHECK(r.body.empty());
  }

  // The head's raw limits: request line and header section.
  std::size_t start = 0;
  while (in.substr(start, 2) == "\r\n") start += 2;
  std::size_t line_end = in.find("\r\n", start);
  FUZZ_CHECK(line_end != std::string_view::npos && line_end - start <= lim.request_line);
  std::size_t head_end = in.find("\r\n\r\n", line_end);
  std::size_t section = head_end == line_end ? 2 : head_end + 4 - (line_end + 2);
  FUZZ_CHECK(head_end != std::string_view::npos && section <= lim.header_section);
}

/// The request alone parses to the same request; any shorter prefix needs more bytes.
void check_prefixes(std::string_view in, const ParseResult& r, const HttpLimits& lim) {
  ParseResult alone = parse_request_bytes(in.substr(0, r.consumed), lim);
  FUZZ_CHECK(alone.state == State::complete);
  FUZZ_CHECK(alone.consumed == r.consumed);
  FUZZ_CHECK(alone.body == r.body);
  FUZZ_CHECK(alone.header.target() == r.header.target());
  for (std::size_t cut : {r.consumed - 1, r.consumed / 2, r.consumed - r.body.size()}) {
    if (cut >= r.consumed) continue;
    ParseResult part = parse_request_bytes(in.substr(0, cut), lim);
    FUZZ_CHECK(part.state == State::need_more);
  }
}

void check(std::string_view in, const HttpLimits& lim) {
  ParseResult r = parse_request_bytes(in, lim);
  switch (r.state) {
    case State::rejected:
      check_rejection(r.rejection);
      break;
    case State::need_more:
      break;
    case State::complete:
      check_complete(in, r, lim);
      check_prefixes(in, r, lim);
      break;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  check(in, HttpLimits{});
  check(in, small_limits());
  return 0;
}
