#include "proxy/wire.hpp"

#include <catch2/catch.hpp>

#include <random>

using namespace tollgate::wire;

namespace {
std::vector<std::string> split_all(const std::string& stream, const std::vector<std::size_t>& cuts) {
  SseSplitter s;
  std::vector<std::string> events;
  std::size_t prev = 0;
  for (std::size_t cut : cuts) {
    s.feed(std::string_view(stream).substr(prev, cut - prev), [&](std::string_view ev) { events.emplace_back(ev); });
    prev = cut;
  }
  s.feed(std::string_view(stream).substr(prev), [&](std::string_view ev) { events.emplace_back(ev); });
  return events;
}

const std::string openrouter_stream =
    ": OPENROUTER PROCESSING\n\n"
    "data: {\"id\":\"gen-1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\n"
    "data: {\"id\":\"gen-1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}]}\n\n"
    "data: {\"id\":\"gen-1\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"total_tokens\":11,\"cost\":0.0000123}}\n\n"
    "data: [DONE]\n\n";
}  // namespace

TEST_CASE("SSE events split identically across every chunk boundary") {
  auto whole = split_all(openrouter_stream, {});
  REQUIRE(whole.size() == 5);
  CHECK(whole[0] == ": OPENROUTER PROCESSING\n\n");
  CHECK(whole[4] == "data: [DONE]\n\n");
  std::string joined;
  for (auto& e : whole) joined += e;
  CHECK(joined == openrouter_stream);  // byte for byte
  for (std::size_t cut = 1; cut < openrouter_stream.size(); ++cut) CHECK(split_all(openrouter_stream, {cut}) == whole);
}

TEST_CASE("SSE events split identically across random chunkings, every byte a chunk included") {
  auto whole = split_all(openrouter_stream, {});
  std::vector<std::size_t> every;
  for (std::size_t i = 1; i < openrouter_stream.size(); ++i) every.push_back(i);
  CHECK(split_all(openrouter_stream, every) == whole);
  std::mt19937 rng(42);
  for (int round = 0; round < 500; ++round) {
    std::vector<std::size_t> cuts;
    for (std::size_t i = 1; i < openrouter_stream.size(); ++i)
      if (rng() % 7 == 0) cuts.push_back(i);
    CHECK(split_all(openrouter_stream, cuts) == whole);
  }
}

TEST_CASE("CRLF and CR line endings") {
  std::string crlf = "data: a\r\n\r\ndata: b\r\n\r\n";
  for (std::size_t cut = 0; cut <= crlf.size(); ++cut) {
    auto ev = split_all(crlf, cut == 0 || cut == crlf.size() ? std::vector<std::size_t>{} : std::vector<std::size_t>{cut});
    REQUIRE(ev.size() == 2);
    CHECK(ev[0] == "data: a\r\n\r\n");
    CHECK(event_data(ev[1]) == "b");
  }
  auto cr = split_all("data: a\r\rdata: b\r\r", {});
  REQUIRE(cr.size() >= 1);
  CHECK(event_data(cr[0]) == "a");
}

TEST_CASE("a blank line ended by a lone CR is an event of its own, at every chunk boundary") {
  // CR, then CRLF: two blank lines, so two events (found by tests/fuzz sse_usage: the splitter
  // used to merge the second into the first).
  const std::string stream = "data: e\n\r\r\n\r\rdata: f\n\n";
  const std::vector<std::string> expected{"data: e\n\r", "\r\n", "\r", "\r", "data: f\n\n"};
  CHECK(split_all(stream, {}) == expected);
  for (std::size_t cut = 1; cut < stream.size(); ++cut) CHECK(split_all(stream, {cut}) == expected);
}

TEST_CASE("an incomplete event stays pending") {
  SseSplitter s;
  int n = 0;
  s.feed("data: {\"a\":1}\n", [&](std::string_view) { ++n; });
  CHECK(n == 0);
  CHECK(s.pending() == "data: {\"a\":1}\n");
  s.feed("\n", [&](std::string_view) { ++n; });
  CHECK(n == 1);
  CHECK(s.pending().empty());
}

TEST_CASE("event data: multi-line data, comments, optional space") {
  CHECK(event_data("data: x\n\n") == "x");
  CHECK(event_data("data:x\n\n") == "x");
  CHECK(event_data("data: a\ndata: b\n\n") == "a\nb");
  CHECK(event_data(": comment\n\n").empty());
  CHECK(event_data("event: message\ndata: y\nid: 3\n\n") == "y");
}
