#pragma once
// The `usage` object of every API tollgate speaks, read as billing takes it (wire::Usage's
// rules), and rewritten to carry the customer's charge instead of the upstream's cost. Used by
// proxy/wire.cpp and the dialects (proxy/dialect*.cpp); simdjson on-demand values in, so this
// header is for the wire layer only.
#include "pricing/money.hpp"
#include "proxy/wire.hpp"

#include <simdjson.h>

#include <initializer_list>
#include <optional>
#include <string>
#include <string_view>

namespace tollgate::wire {

/// `s` as simdjson input: simdjson reads up to SIMDJSON_PADDING bytes past the end, so the
/// capacity is grown when it lacks them (the contents are unchanged).
simdjson::padded_string_view padded(std::string& s);

/// Whether a JSON member's name mentions "cost" (any case): `cost`, `cost_details`,
/// `upstream_inference_cost` — what never leaves tollgate from an upstream.
bool name_mentions_cost(std::string_view name);

/// The names an API gives a usage object's counts.
enum class UsageNames {
  /// OpenAI chat completions, completions, embeddings as OpenRouter serves them: prompt_tokens,
  /// completion_tokens, prompt_tokens_details{cached_tokens, cache_write_tokens},
  /// completion_tokens_details{reasoning_tokens, image_tokens}, cost.
  chat,
  /// OpenAI Responses API: input_tokens, output_tokens, input_tokens_details{cached_tokens,
  /// cache_write_tokens}, output_tokens_details{reasoning_tokens}, cost.
  responses,
  /// OpenAI Images API (gpt-image-1): input_tokens, output_tokens — every output token is an
  /// image token — and cost.
  images,
  /// Anthropic Messages: input_tokens (not cached), cache_creation_input_tokens,
  /// cache_read_input_tokens, output_tokens (cumulative in message_delta); prompt_tokens is the
  /// sum of the three input counts.
  anthropic,
};

/// Reads a usage object into `u`. Counts follow wire::Usage's rules (clamped, rounded up,
/// implausible when negative, not numbers or ≥ Usage::max_tokens; a null or absent details
/// object counts 0); of a repeated key the last counts. `u` should be a fresh Usage, except for
/// UsageNames::anthropic, where only the counts present replace those in `u` (a message_delta
/// carries cumulative output_tokens and, from some upstreams, the input counts again: they are
/// replaced, never added). Parts larger than their whole make `u` implausible.
void read_usage(simdjson::ondemand::object& obj, UsageNames names, Usage& u);

/// The same, from a usage object's JSON text (a second parser: safe while another document is
/// being iterated). False when `json` is not a JSON object (`u` untouched).
bool read_usage_text(std::string_view json, UsageNames names, Usage& u);

/// A JSON document (a response body or an SSE event's data) whose usage object at `path` (e.g.
/// {"usage"} or {"response","usage"}) has lost every member whose name mentions "cost", at any
/// depth (OpenRouter's `cost`, `cost_details.upstream_inference_cost`: the operator's cost), and
/// gained `"cost": <charge in USD, a decimal number with 6 fraction digits>` (the customer's
/// charge, credit units in). Duplicate keys are collapsed (the last one kept, as JSON.parse
/// reads them, so no second copy of an upstream cost survives). The document as it came when it
/// is not JSON or has no object at `path`.
/// With `charge` nullopt, the cost members are only removed (a usage that is not final yet).
std::string with_charge(std::string_view doc, std::initializer_list<std::string_view> path,
                        std::optional<pricing::Micros> charge);

/// The JSON text of the value at `path` in the document `doc` (e.g. {"response","usage"}), as
/// it is written there; of a repeated key the last counts. nullopt when `doc` is not a JSON
/// object or nothing is at `path`.
std::optional<std::string> json_at(std::string_view doc, std::initializer_list<std::string_view> path);
/// The string at `path` (unescaped); nullopt when absent or not a string.
std::optional<std::string> string_at(std::string_view doc, std::initializer_list<std::string_view> path);
/// The usage object at `path`, read as `names` says into `u` (see read_usage); false when there
/// is none (null or absent: `u` untouched).
bool usage_at(std::string_view doc, std::initializer_list<std::string_view> path, UsageNames names, Usage& u);

/// The SSE event's type: its `event:` field, else its data's top-level "type" (both the
/// Responses and the Messages APIs send both); empty when it has neither.
std::string event_type(std::string_view event, std::string_view data);

}  // namespace tollgate::wire
