// Fuzz target: the client's request body (proxy/wire.hpp, wire::parse_request) and the body
// tollgate sends upstream from it (wire::upstream_body).
//
// Invariants: a refusal is a 400 with a code; an accepted body has a model of 1-256 bytes and a
// positive max_tokens if any. For each endpoint, the upstream body is valid JSON for an
// independent parser (Boost.JSON) and tollgate itself reads from it the same model, stream flag
// and token cap that it billed for: the cap the client gave, else the default; on streams the
// usage chunk is requested. Embeddings bodies go upstream unchanged.
#include "proxy/wire.hpp"
#include "tests/fuzz/fuzz_check.hpp"

#include <boost/json.hpp>

#include <cstdint>
#include <string>

namespace {
using namespace tollgate::wire;

constexpr std::int64_t default_cap = 4096;

/// What an independent JSON parser reads from the fields tollgate bills by (last key wins, as in
/// Boost.JSON, JavaScript and Python).
void check_independent_reading(const std::string& up, const ParsedRequest& req, Endpoint ep) {
  boost::json::error_code ec;
  boost::json::parse_options deep;
  deep.max_depth = 1024;  // as deep as simdjson reads (Boost.JSON's default is 32)
  boost::json::value v = boost::json::parse(up, ec, {}, deep);
  // Boost.JSON 1.81 cannot read a number whose exponent overflows (0e9223372036854775808), which
  // RFC 8259 allows and other parsers read; such a body is passed through as it came.
  if (ec == boost::json::error::exponent_overflow) return;
  FUZZ_CHECK(!ec);  // the upstream must get valid JSON
  FUZZ_CHECK(v.is_object());
  const auto& o = v.as_object();
  const auto* model = o.if_contains("model");
  FUZZ_CHECK(model && model->is_string() && model->as_string() == req.model);
  if (ep == Endpoint::embeddings) return;
  // One cap: every cap field the upstream gets holds the cap tollgate held, and one is there.
  bool capped = false;
  for (const char* field : {"max_tokens", "max_completion_tokens"}) {
    const auto* mt = o.if_contains(field);
    if (!mt || mt->is_null()) continue;
    FUZZ_CHECK(mt->is_int64() && mt->as_int64() == req.max_tokens.value_or(default_cap));
    capped = true;
  }
  FUZZ_CHECK(capped);
  if (req.stream) {
    const auto* so = o.if_contains("stream_options");
    FUZZ_CHECK(so && so->is_object());
    const auto* iu = so->as_object().if_contains("include_usage");
    FUZZ_CHECK(iu && iu->is_bool() && iu->as_bool());
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string original(reinterpret_cast<const char*>(data), size);
  std::string body = original;
  RequestError err;
  auto req = parse_request(body, err);
  if (!req) {
    FUZZ_CHECK(err.status == 400);
    FUZZ_CHECK(!err.code.empty() && !err.message.empty());
    return 0;
  }
  FUZZ_CHECK(body == original);  // parse_request may pad the buffer, never change the bytes
  FUZZ_CHECK(!req->model.empty() && req->model.size() <= 256);
  FUZZ_CHECK(!req->max_tokens || *req->max_tokens >= 1);
  FUZZ_CHECK(!req->include_usage || req->has_stream_options);

  for (Endpoint ep : {Endpoint::chat_completions, Endpoint::completions, Endpoint::embeddings}) {
    std::string up = upstream_body(original, ep, *req, default_cap);
    if (ep == Endpoint::embeddings) FUZZ_CHECK(up == original);
    std::string again_body = up;
    RequestError again_err;
    auto again = parse_request(again_body, again_err);
    FUZZ_CHECK(again.has_value());
    FUZZ_CHECK(again->model == req->model);
    FUZZ_CHECK(again->stream == req->stream);
    if (ep != Endpoint::embeddings) {
      FUZZ_CHECK(again->max_tokens == req->max_tokens.value_or(default_cap));
      if (req->stream) FUZZ_CHECK(again->include_usage);
    }
    check_independent_reading(up, *req, ep);
  }
  return 0;
}
