// Fuzz target: a complete upstream JSON body (a non-streaming response, or one stream chunk's
// data) as billing reads it (proxy/wire.hpp, wire::inspect_json).
//
// Invariants: when an independent parser (Boost.JSON: strict RFC 8259, last duplicate key wins,
// as JavaScript and Python read it, and as the client's SDK will) reads the body as an object,
// inspect_json reads it too and agrees on every field billing uses: `id`, `error`, the last
// `finish_reason` of `choices`, `usage.prompt_tokens`/`completion_tokens` and the detail counts
// (`prompt_tokens_details.cached_tokens`/`cache_write_tokens`,
// `completion_tokens_details.reasoning_tokens`; integers) and `usage.cost` (a number, its exact
// text); and what billing makes of the result stays in range
// (usage_checks.hpp).
#include "proxy/wire.hpp"
#include "tests/fuzz/fuzz_check.hpp"
#include "tests/fuzz/usage_checks.hpp"

#include <boost/json.hpp>

#include <algorithm>
#include <cstdint>
#include <string>
#include <string_view>

namespace {
using namespace tollgate;
namespace json = boost::json;

/// An integer token count as inspect_json keeps it: int64 values only, else 0.
/// Checks a token count as billing takes it (wire::Usage): an integer clamped to [0, max_tokens],
/// another number rounded up within that range (exactly, from its text: only bounds here), and
/// anything else 0.
void check_tokens(std::int64_t got, const json::object& usage, std::string_view key) {
  FUZZ_CHECK(got >= 0 && got <= wire::Usage::max_tokens);
  const json::value* v = usage.if_contains(key);
  if (!v || !(v->is_int64() || v->is_uint64() || v->is_double())) FUZZ_CHECK(got == 0);
  else if (v->is_int64()) FUZZ_CHECK(got == std::clamp<std::int64_t>(v->as_int64(), 0, wire::Usage::max_tokens));
  else if (v->is_uint64()) FUZZ_CHECK(got == wire::Usage::max_tokens);
  else if (v->as_double() <= 0) FUZZ_CHECK(got == 0);
}

void compare_with_boost(std::string_view body, const std::optional<wire::ChunkInfo>& info) {
  json::error_code ec;
  json::parse_options deep;
  deep.max_depth = 1024;  // as deep as simdjson reads (Boost.JSON's default is 32)
  json::value doc = json::parse(body, ec, {}, deep);
  if (ec || !doc.is_object()) return;
  FUZZ_CHECK(info.has_value());
  const json::object& o = doc.as_object();

  const json::value* id = o.if_contains("id");
  if (id && id->is_string()) FUZZ_CHECK(info->generation_id && *info->generation_id == id->as_string());
  else FUZZ_CHECK(!info->generation_id);

  const json::value* error = o.if_contains("error");
  FUZZ_CHECK(info->error == (error && !error->is_null()));

  std::optional<std::string_view> finish;
  bool choices_empty = false;
  if (const json::value* choices = o.if_contains("choices"); choices && choices->is_array()) {
    choices_empty = choices->as_array().empty();
    for (const json::value& c : choices->as_array()) {
      const json::value* fr = c.is_object() ? c.as_object().if_contains("finish_reason") : nullptr;
      if (fr && fr->is_string()) finish = fr->as_string();
    }
  }
  FUZZ_CHECK(info->finish_reason.has_value() == finish.has_value());
  if (finish) FUZZ_CHECK(*info->finish_reason == *finish);

  const json::value* usage = o.if_contains("usage");
  FUZZ_CHECK(info->usage.has_value() == (usage && usage->is_object()));
  FUZZ_CHECK(info->usage_only == (choices_empty && info->usage.has_value()));
  if (!info->usage) return;
  const json::object& u = usage->as_object();
  check_tokens(info->usage->prompt_tokens, u, "prompt_tokens");
  check_tokens(info->usage->completion_tokens, u, "completion_tokens");
  // The detail counts, from the last details object when it is one (null or another type: 0).
  static const json::object no_details;
  auto details = [&](std::string_view key) -> const json::object& {
    const json::value* d = u.if_contains(key);
    return d && d->is_object() ? d->as_object() : no_details;
  };
  check_tokens(info->usage->cached_tokens, details("prompt_tokens_details"), "cached_tokens");
  check_tokens(info->usage->cache_write_tokens, details("prompt_tokens_details"), "cache_write_tokens");
  check_tokens(info->usage->reasoning_tokens, details("completion_tokens_details"), "reasoning_tokens");
  const json::value* cost = u.if_contains("cost");
  bool cost_is_number = cost && (cost->is_int64() || cost->is_uint64() || cost->is_double());
  // Billing keeps a cost only when it is a number in [0, $1,000,000] (wire.cpp usage_cost); well
  // inside that range every number is kept, outside it none is.
  double usd = cost_is_number ? cost->to_number<double>() : -1;
  // Boost.JSON 1.81 reads a zero with a huge exponent (0e400) as NaN; tollgate reads it exactly,
  // as 0. Nothing to compare there.
  if (usd != usd) return;
  if (info->usage->cost_usd) FUZZ_CHECK(cost_is_number && usd >= 0);
  // A zero written negative (-0, -0.0e5) may be taken as 0 or refused as negative (then the
  // request is priced from its tokens); both are safe, so only a positive cost must be kept.
  if (cost_is_number && usd > 0 && usd < 999'999) FUZZ_CHECK(info->usage->cost_usd.has_value());
  if (!cost_is_number || usd < 0 || usd > 1'000'001) FUZZ_CHECK(!info->usage->cost_usd);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view body(reinterpret_cast<const char*>(data), size);
  auto info = wire::inspect_json(body);
  if (info) tollgate::fuzz::check_chunk_info(*info);
  compare_with_boost(body, info);
  return 0;
}
