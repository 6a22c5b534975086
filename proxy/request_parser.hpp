#pragma once
// Phase 1 (parse & limit): a strict HTTP/1.1 request parser on Beast 1.81.
//
// Beast 1.81 (the Boost of Debian 12) lacks the parser fixes of 1.86-1.92 and several checks no
// Beast version makes (shared/reference/WIRE.md). tollgate adds them in two layers:
//  - scan_head() looks at the raw bytes of a request head before Beast does: the request line
//    (≤ 8 KiB, else 414), the header section (≤ 16 KiB and ≤ 100 fields, else 431), obs-fold
//    and bare LF (400), which Beast would silently unfold or accept.
//  - RequestParser, a basic_parser<true>, checks what the head means in its callbacks
//    (RFC 9112 §3, §6, §7): one valid Host on HTTP/1.1; no duplicate Authorization or
//    Content-Length; Content-Length only as 1*DIGIT; Transfer-Encoding only as exactly
//    `chunked`, only on HTTP/1.1, never with Content-Length (request smuggling); the method one
//    that a route accepts; an origin-form target of RFC 3986 characters; chunk extensions
//    ≤ 8 KiB; no trailer fields (they are refused, never merged into the header). It keeps the
//    body itself (up to a limit), so nothing Beast does with trailers or large fields can
//    throw.
// Every refusal is a Rejection: the status to answer and a message; the connection is closed
// after it. Nothing here throws except std::bad_alloc.
#include <boost/beast/http/basic_parser.hpp>
#include <boost/beast/http/message.hpp>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace tollgate {

/// Size limits of one request (bytes). Reference points: nginx 8 KiB lines, Envoy 60 KiB and
/// 100 headers, HAProxy 101 headers, Pingora 8 KiB chunk-size lines.
struct HttpLimits {
  std::size_t request_line = 8 * 1024;    ///< 414 above (CRLF excluded)
  std::size_t header_section = 16 * 1024; ///< 431 above: the field lines and the final CRLF
  std::size_t max_fields = 100;           ///< 431 above
  std::size_t chunk_extensions = 8 * 1024;///< 400 above (RFC 9112 §7.1.1 chunk-ext)
  std::uint64_t body = 10ull << 20;       ///< 413 above (decoded body bytes)

  /// Bytes a connection's read buffer may hold: a complete head plus some room; a chunk-size
  /// line that does not fit in it is refused as well.
  std::size_t read_buffer() const { return request_line + header_section + 8 * 1024; }
};

/// Why a request is refused before it is routed: 400, 408, 413, 414, 431, 501 or 505, an
/// error code for OpenAI's envelope (e.g. "bad_request", "uri_too_long"), and a message.
struct Rejection {
  unsigned status = 0;
  std::string_view code;
  std::string message;
  explicit operator bool() const { return status != 0; }
};

/// What scan_head() found in the bytes received so far.
struct HeadScan {
  enum class State { need_more, complete, rejected };
  State state = State::need_more;
  std::size_t skip = 0;  ///< leading empty lines to discard first (RFC 9112 §2.2 allows them)
  std::size_t size = 0;  ///< bytes of the head after `skip`, through the blank line
  Rejection rejection;
};

/// Finds one request head at the start of `bytes` and checks its raw form: request line length
/// (414), header section size and field count (431), obs-fold, bare CR/LF and a blank line
/// before the request line's end (400). Returns need_more while the head is incomplete and
/// still within the limits. Pure; O(bytes).
HeadScan scan_head(std::string_view bytes, const HttpLimits& limits);

/// A request parser that never throws (except bad_alloc) and refuses what RFC 9112 says to
/// reject (see the file comment). Feed it a head found by scan_head(), then the body; on an
/// error from put(), rejection() says what to answer. One parser per request.
class RequestParser : public boost::beast::http::basic_parser<true> {
 public:
  using Header = boost::beast::http::request_header<>;

  explicit RequestParser(const HttpLimits& limits);

  /// Method, target, version (10 or 11) and header fields. Trailer
  /// fields never land here.
  const Header& header() const { return header_; }
  /// The decoded body (Content-Length or chunked), once is_done().
  std::string& body() { return body_; }
  /// put() for the body, one element at a time, with the checks Beast 1.81 lacks on chunked
  /// framing: a chunk-size line (extensions included) over the limit, and a bare LF in it, are
  /// refused (rejection() tells) instead of waiting for more. Call after the header is done.
  std::size_t put_body(boost::asio::const_buffer bytes, boost::beast::error_code& ec);
  /// Lowers the body limit for this request (a route's own, e.g. the Stripe webhook's), before
  /// its body is read: a chunked body over it is refused with 413 naming `bytes`. A
  /// Content-Length over it is the caller's to check (Beast checked it with the head).
  void limit_body(std::uint64_t bytes) {
    limits_.body = bytes;
    body_limit(bytes);
  }
  /// True when the request announced a body (chunked, or Content-Length > 0).
  bool has_body() const { return has_body_; }
  /// What to answer after put() (or a read) failed with `ec`: our own checks' rejection, or
  /// Beast's error mapped to 400 / 413 / 431.
  Rejection rejection(boost::beast::error_code ec) const;

 private:
  void on_request_impl(boost::beast::http::verb method, boost::beast::string_view method_str,
                       boost::beast::string_view target, int version, boost::beast::error_code& ec) override;
  void on_response_impl(int, boost::beast::string_view, int, boost::beast::error_code& ec) override;
  void on_field_impl(boost::beast::http::field name, boost::beast::string_view name_string,
                     boost::beast::string_view value, boost::beast::error_code& ec) override;
  void on_header_impl(boost::beast::error_code& ec) override;
  void on_body_init_impl(boost::optional<std::uint64_t> const& content_length,
                         boost::beast::error_code& ec) override;
  std::size_t on_body_impl(boost::beast::string_view body, boost::beast::error_code& ec) override;
  void on_chunk_header_impl(std::uint64_t size, boost::beast::string_view extensions,
                            boost::beast::error_code& ec) override;
  std::size_t on_chunk_body_impl(std::uint64_t remain, boost::beast::string_view body,
                                 boost::beast::error_code& ec) override;
  void on_finish_impl(boost::beast::error_code& ec) override;

  /// Records the first refusal and sets `ec` to a parser error so put() stops.
  void refuse(boost::beast::error_code& ec, unsigned status, std::string_view code, std::string message);

  HttpLimits limits_;
  Header header_;
  std::string body_;
  Rejection rejection_;
  std::size_t fields_ = 0, chunk_headers_ = 0;
  bool has_host_ = false, has_authorization_ = false, has_content_length_ = false;
  bool has_transfer_encoding_ = false, has_body_ = false;
};

/// The outcome of parse_request_bytes().
struct ParseResult {
  enum class State { need_more, complete, rejected };
  State state = State::need_more;
  Rejection rejection;                  ///< when rejected
  RequestParser::Header header;         ///< when complete
  std::string body;                     ///< when complete
  std::size_t consumed = 0;             ///< bytes of `bytes` the request took (complete)
};

/// Parses one request from the start of `bytes` without I/O, exactly as a session does
/// (scan_head, then RequestParser over the head and the body). For fuzzing and tests.
ParseResult parse_request_bytes(std::string_view bytes, const HttpLimits& limits);

/// True if `target` is an origin-form request target (RFC 9112 §3.2.1): "/" then RFC 3986
/// path and query characters, each "%" followed by two hex digits.
bool valid_origin_form(std::string_view target) noexcept;

/// True if `host` is a valid Host field value (RFC 9110 §7.2): uri-host [":" port], where
/// uri-host is an IP-literal in brackets, or RFC 3986 reg-name / IPv4 characters; no userinfo.
bool valid_host(std::string_view host) noexcept;

}  // namespace tollgate
