#include "proxy/http_head.hpp"

#include <boost/beast/http/status.hpp>

#include <charconv>

namespace tollgate::http_head {
namespace {

void append_number(std::string& out, std::size_t n) {
  char buf[24];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, n);
  out.append(buf, end);
}

}  // namespace

void status_line(std::string& out, unsigned code) {
  out += "HTTP/1.1 ";
  append_number(out, code);
  out.push_back(' ');
  auto reason = boost::beast::http::obsolete_reason(static_cast<boost::beast::http::status>(code));
  out.append(reason.data(), reason.size());
  out += "\r\n";
}

void request_line(std::string& out, std::string_view method, std::string_view target_a,
                  std::string_view target_b) {
  out += method;
  out.push_back(' ');
  out += target_a;
  out += target_b;
  out += " HTTP/1.1\r\n";
}

void field(std::string& out, std::string_view name, std::string_view value) {
  if (value.find_first_of(std::string_view("\r\n\0", 3)) != std::string_view::npos) return;
  out += name;
  out += ": ";
  out += value;
  out += "\r\n";
}

void finish(std::string& out, std::optional<std::size_t> content_length, bool keep_alive, bool chunked) {
  if (content_length) {
    out += "Content-Length: ";
    append_number(out, *content_length);
    out += "\r\n";
  } else if (chunked) {
    out += "Transfer-Encoding: chunked\r\n";
  } else {
    keep_alive = false;  // the body ends with the connection (RFC 9112 §6.3)
  }
  if (!keep_alive) out += "Connection: close\r\n";
  out += "\r\n";
}

}  // namespace tollgate::http_head
