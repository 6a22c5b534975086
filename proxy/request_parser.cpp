#include "proxy/request_parser.hpp"

#include <boost/asio/buffer.hpp>
#include <boost/beast/core/string.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/url/parse.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <array>

namespace tollgate {
namespace http = boost::beast::http;
using boost::beast::error_code;
using boost::beast::string_view;

namespace {

/// Bytes RFC 3986 allows in a path or query: unreserved, sub-delims, ":", "@", "/", "?";
/// "%" is checked separately (it must start a pct-encoding).
constexpr std::array<bool, 256> make_target_chars() {
  std::array<bool, 256> t{};
  for (int c = 'a'; c <= 'z'; ++c) t[c] = true;
  for (int c = 'A'; c <= 'Z'; ++c) t[c] = true;
  for (int c = '0'; c <= '9'; ++c) t[c] = true;
  for (unsigned char c : std::string_view("-._~!$&'()*+,;=:@/?")) t[c] = true;
  return t;
}
constexpr auto target_chars = make_target_chars();

bool is_hex(char c) noexcept {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/// RFC 3986 characters (as `allowed` says) with valid pct-encodings.
template <class Allowed>
bool uri_chars(std::string_view s, Allowed allowed) noexcept {
  for (std::size_t i = 0; i < s.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c == '%') {
      if (i + 2 >= s.size() || !is_hex(s[i + 1]) || !is_hex(s[i + 2])) return false;
      i += 2;
    } else if (!allowed(c)) {
      return false;
    }
  }
  return true;
}

std::string_view trim_ows(std::string_view s) noexcept {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

HeadScan reject(unsigned status, std::string_view code, std::string message) {
  HeadScan s;
  s.state = HeadScan::State::rejected;
  s.rejection = {status, code, std::move(message)};
  return s;
}

}  // namespace

bool valid_origin_form(std::string_view target) noexcept {
  if (target.empty() || target.front() != '/') return false;
  return uri_chars(target, [](unsigned char c) { return target_chars[c]; });
}

bool valid_host(std::string_view host) noexcept {
  std::string_view port;
  if (!host.empty() && host.front() == '[') {  // IP-literal: IPv6 (or IPvFuture) in brackets
    auto close = host.find(']');
    if (close == std::string_view::npos || close < 2) return false;
    for (char c : host.substr(1, close - 1))
      if (!is_hex(c) && c != ':' && c != '.' && c != 'v' && c != 'V') return false;
    std::string_view rest = host.substr(close + 1);
    if (!rest.empty() && rest.front() != ':') return false;
    port = rest;
  } else {
    auto colon = host.find(':');
    std::string_view name = host.substr(0, colon);
    if (colon != std::string_view::npos) port = host.substr(colon);
    // reg-name = *( unreserved / pct-encoded / sub-delims ); IPv4 is a subset.
    if (!uri_chars(name, [](unsigned char c) {
          return target_chars[c] && c != ':' && c != '@' && c != '/' && c != '?';
        }))
      return false;
  }
  if (port.empty()) return true;
  port.remove_prefix(1);  // the ':'
  if (port.size() > 5) return false;
  unsigned value = 0;
  for (char c : port) {
    if (c < '0' || c > '9') return false;
    value = value * 10 + static_cast<unsigned>(c - '0');
  }
  return value <= 65535;
}

HeadScan scan_head(std::string_view b, const HttpLimits& limits) {
  HeadScan s;
  // Empty lines before the request line (RFC 9112 §2.2: a server SHOULD ignore at least one).
  std::size_t i = 0;
  while (i + 1 < b.size() && b[i] == '\r' && b[i + 1] == '\n') i += 2;
  if (i > limits.request_line) return reject(400, "bad_request", "Too many empty lines before the request.");
  if (i < b.size() && b[i] == '\n') return reject(400, "bad_request", "Bare LF in the request head.");
  s.skip = i;
  std::string_view r = b.substr(i);

  auto lf = r.find('\n');
  if (lf == std::string_view::npos) {
    if (r.size() > limits.request_line + 1)
      return reject(414, "uri_too_long", fmt::format("The request line exceeds {} bytes.", limits.request_line));
    return s;
  }
  if (lf == 0 || r[lf - 1] != '\r') return reject(400, "bad_request", "Bare LF in the request line.");
  if (lf - 1 > limits.request_line)
    return reject(414, "uri_too_long", fmt::format("The request line exceeds {} bytes.", limits.request_line));
  if (r.substr(0, lf - 1).find('\r') != std::string_view::npos)
    return reject(400, "bad_request", "Bare CR in the request line.");
  // A well-formed HTTP-version other than 1.0 and 1.1 (Beast 1.81 reads them as a syntax error):
  // 505. RFC 9110 §2.5 would let 1.2-1.9 be read as 1.1; Beast cannot, and 505 says so honestly.
  std::string_view version = r.substr(0, lf - 1);
  version = version.substr(version.rfind(' ') + 1);
  if (version.size() == 8 && version.substr(0, 5) == "HTTP/" && version[6] == '.' && version[5] >= '0' &&
      version[5] <= '9' && version[7] >= '0' && version[7] <= '9' && (version[5] != '1' || version[7] > '1'))
    return reject(505, "http_version_not_supported", "Only HTTP/1.0 and HTTP/1.1 are supported.");

  const std::size_t section = lf + 1;  // where the field lines start
  std::size_t pos = section, fields = 0;
  for (;;) {
    auto eol = r.find('\n', pos);
    if (eol == std::string_view::npos) {
      if (r.size() - section > limits.header_section)
        return reject(431, "header_fields_too_large",
                      fmt::format("The request header section exceeds {} bytes.", limits.header_section));
      return s;
    }
    if (eol + 1 - section > limits.header_section)
      return reject(431, "header_fields_too_large",
                    fmt::format("The request header section exceeds {} bytes.", limits.header_section));
    if (eol == pos || r[eol - 1] != '\r') return reject(400, "bad_request", "Bare LF in a header field line.");
    std::string_view line = r.substr(pos, eol - 1 - pos);
    if (line.empty()) {
      s.state = HeadScan::State::complete;
      s.size = eol + 1;
      return s;
    }
    if (line.front() == ' ' || line.front() == '\t')
      return reject(400, "bad_request", "Obsolete line folding (obs-fold) is not accepted.");
    if (line.find('\r') != std::string_view::npos) return reject(400, "bad_request", "Bare CR in a header field line.");
    if (++fields > limits.max_fields)
      return reject(431, "header_fields_too_large",
                    fmt::format("The request has more than {} header fields.", limits.max_fields));
    pos = eol + 1;
  }
}

// ---------------------------------------------------------------------------------------------

RequestParser::RequestParser(const HttpLimits& limits) : limits_(limits) {
  // scan_head() enforces the head's limits first; Beast's own limit only has to let it through.
  header_limit(static_cast<std::uint32_t>(limits.request_line + limits.header_section + 8));
  body_limit(limits.body);
}

void RequestParser::refuse(error_code& ec, unsigned status, std::string_view code, std::string message) {
  if (!rejection_) rejection_ = {status, code, std::move(message)};
  ec = http::error::bad_value;  // any parser error: put() stops, rejection() tells the rest
}

Rejection RequestParser::rejection(error_code ec) const {
  if (rejection_) return rejection_;
  if (ec == http::error::body_limit)
    return {413, "request_too_large", fmt::format("The request body exceeds {} bytes.", limits_.body)};
  if (ec == http::error::header_limit)
    return {431, "header_fields_too_large", "The request header section is too large."};
  if (ec == http::error::buffer_overflow)
    return {400, "bad_request", "A chunk-size line is too long."};
  return {400, "bad_request", fmt::format("Malformed HTTP request: {}.", ec.message())};
}

void RequestParser::on_request_impl(http::verb method, string_view method_str, string_view target, int version,
                                    error_code& ec) {
  if (version / 10 != 1)
    return refuse(ec, 505, "http_version_not_supported", "Only HTTP/1.0 and HTTP/1.1 are supported.");
  if (method != http::verb::get && method != http::verb::post)
    return refuse(ec, 400, "bad_request",
                  fmt::format("The method {} is not accepted here.", std::string_view(method_str).substr(0, 32)));
  std::string_view t(target.data(), target.size());
  std::string effective;
  if (!t.empty() && t.front() != '/') {
    // absolute-form (RFC 9112 §3.2.2: a server MUST accept it): its path and query are the target.
    auto u = boost::urls::parse_absolute_uri(t);
    if (!u || (u->scheme() != "http" && u->scheme() != "https"))
      return refuse(ec, 400, "bad_request", "The request target is not in origin-form or absolute-form.");
    effective = u->encoded_path().empty() ? "/" : std::string(u->encoded_path());
    if (u->has_query()) effective.append("?").append(u->encoded_query().data(), u->encoded_query().size());
    t = effective;
  }
  if (!valid_origin_form(t))
    return refuse(ec, 400, "bad_request", "The request target holds characters RFC 3986 does not allow.");
  header_.method(method);
  header_.target(t);
  header_.version(version);
}

void RequestParser::on_response_impl(int, string_view, int, error_code& ec) {
  refuse(ec, 400, "bad_request", "Expected a request, got a response.");
}

void RequestParser::on_field_impl(http::field name, string_view name_string, string_view value, error_code& ec) {
  if (is_header_done())  // a trailer field (RFC 9112 §7.1.2): refused, never merged
    return refuse(ec, 400, "bad_request", "Trailer fields are not accepted.");
  if (++fields_ > limits_.max_fields)
    return refuse(ec, 431, "header_fields_too_large",
                  fmt::format("The request has more than {} header fields.", limits_.max_fields));
  std::string_view v(value.data(), value.size());
  switch (name) {
    case http::field::host:
      if (std::exchange(has_host_, true)) return refuse(ec, 400, "bad_request", "Duplicate Host header field.");
      if (!valid_host(v)) return refuse(ec, 400, "bad_request", "Malformed Host header field.");
      break;
    case http::field::authorization:
      if (std::exchange(has_authorization_, true))
        return refuse(ec, 400, "bad_request", "Duplicate Authorization header field.");
      break;
    case http::field::content_length:
      if (std::exchange(has_content_length_, true))
        return refuse(ec, 400, "bad_request", "Duplicate Content-Length header field.");
      if (v.empty() || !std::all_of(v.begin(), v.end(), [](char c) { return c >= '0' && c <= '9'; }))
        return refuse(ec, 400, "bad_request", "Content-Length must be a single decimal number.");
      if (has_transfer_encoding_)
        return refuse(ec, 400, "bad_request", "Content-Length and Transfer-Encoding together are not accepted.");
      break;
    case http::field::transfer_encoding: {
      if (std::exchange(has_transfer_encoding_, true))
        return refuse(ec, 400, "bad_request", "Duplicate Transfer-Encoding header field.");
      if (header_.version() < 11)
        return refuse(ec, 400, "bad_request", "Transfer-Encoding is not accepted on HTTP/1.0.");
      if (has_content_length_)
        return refuse(ec, 400, "bad_request", "Content-Length and Transfer-Encoding together are not accepted.");
      // Exactly `chunked`. Another coding before it: 501; chunked not last, or twice: 400
      // (RFC 9112 §6.3: the body length cannot be determined).
      std::size_t codings = 0, chunked_at = 0;
      bool chunked_last = false;
      std::string_view rest = v;
      for (;;) {
        auto comma = rest.find(',');
        std::string_view coding = trim_ows(rest.substr(0, comma));
        ++codings;
        chunked_last = boost::beast::iequals(coding, "chunked");
        if (chunked_last) ++chunked_at;
        if (coding.empty()) return refuse(ec, 400, "bad_request", "Malformed Transfer-Encoding header field.");
        if (comma == std::string_view::npos) break;
        rest.remove_prefix(comma + 1);
      }
      if (!chunked_last || chunked_at > 1)
        return refuse(ec, 400, "bad_request", "Transfer-Encoding must end with chunked, once.");
      if (codings > 1)
        return refuse(ec, 501, "not_implemented", "Only the chunked transfer coding is supported.");
      break;
    }
    default:
      break;
  }
  header_.insert(name_string, value);
}

void RequestParser::on_header_impl(error_code& ec) {
  if (!has_host_ && header_.version() >= 11)
    return refuse(ec, 400, "bad_request", "HTTP/1.1 requests must carry a Host header field.");
  has_body_ = chunked() || content_length().value_or(0) > 0;
}

void RequestParser::on_body_init_impl(boost::optional<std::uint64_t> const& content_length, error_code&) {
  if (content_length) body_.reserve(static_cast<std::size_t>(std::min<std::uint64_t>(*content_length, limits_.body)));
}

std::size_t RequestParser::on_body_impl(string_view body, error_code&) {
  body_.append(body.data(), body.size());
  return body.size();
}

void RequestParser::on_chunk_header_impl(std::uint64_t, string_view extensions, error_code& ec) {
  ++chunk_headers_;
  if (extensions.size() > limits_.chunk_extensions) {
    refuse(ec, 400, "bad_request", fmt::format("Chunk extensions exceed {} bytes.", limits_.chunk_extensions));
    return;
  }
  // RFC 9112 §7.1.1: chunk-ext is tokens and quoted-strings, which hold no control character but
  // HTAB. Beast 1.81 lets a bare LF (or CR, NUL) through inside a quoted string when the whole
  // line is in one buffer (found by fuzz_request_parser).
  for (char c : extensions) {
    auto b = static_cast<unsigned char>(c);
    if ((b < 0x20 && b != '\t') || b == 0x7f) {
      refuse(ec, 400, "bad_request", "A control character in a chunk extension.");
      return;
    }
  }
}

std::size_t RequestParser::on_chunk_body_impl(std::uint64_t, string_view body, error_code&) {
  body_.append(body.data(), body.size());
  return body.size();
}

void RequestParser::on_finish_impl(error_code&) {}

std::size_t RequestParser::put_body(boost::asio::const_buffer bytes, error_code& ec) {
  eager(false);  // one structured element per call: a chunk header's bytes can be measured
  const std::size_t headers_before = chunk_headers_;
  std::size_t used = put(bytes, ec);
  if (!chunked()) return used;
  // What a chunk header took: the previous chunk's CRLF, the chunk-size line and, for the last
  // chunk, the blank line that ends the (empty) trailer section.
  if (!ec && chunk_headers_ != headers_before && used > limits_.chunk_extensions + 6) {
    refuse(ec, 400, "bad_request", fmt::format("A chunk-size line exceeds {} bytes.", limits_.chunk_extensions));
    return used;
  }
  if (ec == http::error::need_more) {
    // Waiting for a chunk-size line (chunk data is taken as it comes): what is pending is that
    // line, which must not hold a bare LF nor outgrow the limit.
    std::string_view pending(static_cast<const char*>(bytes.data()) + used, bytes.size() - used);
    for (std::size_t i = pending.find('\n'); i != std::string_view::npos; i = pending.find('\n', i + 1))
      if (i == 0 || pending[i - 1] != '\r') {
        refuse(ec, 400, "bad_request", "Bare LF in the chunked framing.");
        return used;
      }
    if (pending.size() > limits_.chunk_extensions + 6)
      refuse(ec, 400, "bad_request", fmt::format("A chunk-size line exceeds {} bytes.", limits_.chunk_extensions));
  }
  return used;
}

// ---------------------------------------------------------------------------------------------

ParseResult parse_request_bytes(std::string_view bytes, const HttpLimits& limits) {
  ParseResult r;
  auto rejected = [&](Rejection why) {
    r.state = ParseResult::State::rejected;
    r.rejection = std::move(why);
    return std::move(r);
  };
  HeadScan scan = scan_head(bytes, limits);
  if (scan.state == HeadScan::State::rejected) return rejected(std::move(scan.rejection));
  if (scan.state == HeadScan::State::need_more) return r;

  RequestParser p(limits);
  error_code ec;
  std::size_t pos = scan.skip;
  pos += p.put(boost::asio::buffer(bytes.data() + pos, scan.size), ec);
  if (ec || !p.is_header_done()) return rejected(p.rejection(ec ? ec : http::error::need_more));
  while (!p.is_done()) {
    std::size_t left = bytes.size() - pos;
    if (left == 0) return r;
    std::size_t used = p.put_body(boost::asio::buffer(bytes.data() + pos, left), ec);
    pos += used;
    if (ec == http::error::need_more || (!ec && used == 0)) {
      // What a session's bounded read buffer could not hold either is refused the same way.
      if (bytes.size() - pos >= limits.read_buffer()) return rejected(p.rejection(http::error::buffer_overflow));
      return r;
    }
    if (ec) return rejected(p.rejection(ec));
  }
  r.state = ParseResult::State::complete;
  r.header = p.header();
  r.body = std::move(p.body());
  r.consumed = pos;
  return r;
}

}  // namespace tollgate
