#pragma once
// HTTP/1.1 message heads (RFC 9112 §3-§6) written by hand into one flat string. The request
// path's writes then go out as one or two contiguous buffers; Beast's serializer walks a
// buffers_cat of every field through variant iterators, which a profile under load put at ~8 %
// of the event loop's CPU. Parsing stays with Beast.
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace tollgate::http_head {

/// Appends "HTTP/1.1 <code> <reason>\r\n" (the reason phrase as RFC 9110 names it).
void status_line(std::string& out, unsigned code);

/// Appends "<method> <target> HTTP/1.1\r\n".
void request_line(std::string& out, std::string_view method, std::string_view target_a,
                  std::string_view target_b = {});

/// Appends "name: value\r\n". A value holding CR, LF or NUL is not written (nor its field): it
/// can only come from an upstream (a generation id out of a JSON body, say) and would split the
/// head.
void field(std::string& out, std::string_view name, std::string_view value);

/// Ends a head: "Content-Length: n" when `content_length` is set, else
/// "Transfer-Encoding: chunked"; "Connection: close" unless `keep_alive`; the blank line.
void finish(std::string& out, std::optional<std::size_t> content_length, bool keep_alive, bool chunked = true);

}  // namespace tollgate::http_head
