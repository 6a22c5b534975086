// Fuzz target: an upstream SSE stream as tollgate relays and bills it (proxy/forward.cpp,
// inspect_event): wire::SseSplitter across arbitrary read boundaries, then wire::event_data,
// wire::inspect_json and wire::chunk_has_output on each event.
//
// Input: byte 0 = the largest piece (0: the whole stream at once), bytes 1-2 = seed of the piece
// sizes (1..largest, xorshift), the rest = the stream.
//
// Invariants: the events and the held-back bytes are the same whatever the pieces, and equal to
// a line-by-line reference splitter (WHATWG SSE: an event ends at a blank line; LF, CRLF or CR);
// the events plus what is pending are the stream, byte for byte; an event's data holds no line
// break but the '\n' that joins data lines; inspect_json is deterministic and what billing makes
// of it stays in range (usage_checks.hpp).
#include "proxy/wire.hpp"
#include "tests/fuzz/fuzz_check.hpp"
#include "tests/fuzz/usage_checks.hpp"

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace {
using namespace tollgate;

struct Split {
  std::vector<std::string> events;
  std::string pending;
};

/// The reference: one pass over the whole stream, by lines.
Split reference_split(std::string_view s) {
  Split out;
  std::size_t event_start = 0, i = 0;
  bool line_start = true;
  while (i < s.size()) {
    char c = s[i];
    if (c != '\r' && c != '\n') {
      line_start = false;
      ++i;
      continue;
    }
    if (c == '\r' && i + 1 == s.size()) break;  // CR or CRLF: undecided until the next byte
    std::size_t end = i + (c == '\r' && s[i + 1] == '\n' ? 2 : 1);
    if (line_start) {
      out.events.emplace_back(s.substr(event_start, end - event_start));
      event_start = end;
    }
    line_start = true;
    i = end;
  }
  out.pending = s.substr(event_start);
  return out;
}

Split split_in_pieces(std::string_view s, std::size_t largest, std::uint32_t seed) {
  Split out;
  wire::SseSplitter splitter;
  auto on_event = [&](std::string_view ev) { out.events.emplace_back(ev); };
  if (largest == 0) {
    splitter.feed(s, on_event);
  } else {
    std::uint32_t x = seed | 1;
    while (!s.empty()) {
      x ^= x << 13, x ^= x >> 17, x ^= x << 5;
      std::size_t n = std::min<std::size_t>(s.size(), 1 + x % largest);
      splitter.feed(s.substr(0, n), on_event);
      s.remove_prefix(n);
    }
  }
  out.pending = std::string(splitter.pending());
  return out;
}

/// What forward.cpp's inspect_event does with one event.
void inspect_event(std::string_view ev) {
  std::string data = wire::event_data(ev);
  for (std::size_t i = 0; i < data.size(); ++i) FUZZ_CHECK(data[i] != '\r');
  if (ev.find("data:") == std::string_view::npos) FUZZ_CHECK(data.empty());
  if (data.empty() || data == "[DONE]") return;
  auto info = wire::inspect_json(data);
  auto again = wire::inspect_json(data);
  FUZZ_CHECK(info.has_value() == again.has_value());
  if (info) {
    FUZZ_CHECK(info->generation_id == again->generation_id && info->error == again->error);
    FUZZ_CHECK(info->usage.has_value() == again->usage.has_value());
    tollgate::fuzz::check_chunk_info(*info);
  }
  (void)wire::chunk_has_output(data);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 3) return 0;
  std::size_t largest = data[0];
  std::uint32_t seed = static_cast<std::uint32_t>(data[1]) << 8 | data[2];
  std::string_view stream(reinterpret_cast<const char*>(data) + 3, size - 3);

  Split ref = reference_split(stream);
  Split pieces = split_in_pieces(stream, largest, seed);
  FUZZ_CHECK(pieces.events == ref.events);
  FUZZ_CHECK(pieces.pending == ref.pending);
  if (largest != 0) {
    Split whole = split_in_pieces(stream, 0, 0);
    FUZZ_CHECK(whole.events == pieces.events && whole.pending == pieces.pending);
  }
  std::string joined;
  for (const auto& ev : pieces.events) {
    FUZZ_CHECK(!ev.empty());
    joined += ev;
  }
  FUZZ_CHECK(joined + pieces.pending == stream);
  for (const auto& ev : pieces.events) inspect_event(ev);
  return 0;
}
