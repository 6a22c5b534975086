#include "proxy/wire.hpp"

#include "proxy/wire_usage.hpp"

#include "pricing/money.hpp"

#include <boost/json.hpp>
#include <fmt/format.h>
#include <simdjson.h>

#include <algorithm>
#include <cstring>
#include <utility>

namespace tollgate::wire {
namespace od = simdjson::ondemand;

namespace {

thread_local od::parser tl_parser;
thread_local simdjson::dom::parser tl_dom_parser;

/// Boost.JSON reads documents as deep as simdjson does (its default is 32 levels).
const boost::json::parse_options deep_json = [] {
  boost::json::parse_options o;
  o.max_depth = simdjson::DEFAULT_MAX_DEPTH;
  return o;
}();


}  // namespace

namespace {
/// The field that caps the completion, per API (chat and completions have two).
std::string_view cap_key(Endpoint ep) {
  switch (ep) {
    case Endpoint::responses: return "max_output_tokens";
    case Endpoint::images_generations: return {};
    default: return "max_tokens";
  }
}
bool openai_chat_like(Endpoint ep) {
  return ep == Endpoint::chat_completions || ep == Endpoint::completions || ep == Endpoint::embeddings;
}
constexpr std::int64_t max_images = 10;  ///< OpenAI Images API: n in [1, 10]
}  // namespace

std::optional<ParsedRequest> parse_request(std::string& body, RequestError& err, Endpoint ep) {
  auto fail = [&](std::string msg, std::string code = "invalid_request_error") {
    err = RequestError{400, std::move(msg), std::move(code)};
    return std::nullopt;
  };
  auto invalid_json = [&] { return fail("We could not parse the JSON body of your request.", "invalid_json"); };
  ParsedRequest out;
  // The DOM parser validates the whole document (on-demand would skip unread values unchecked,
  // and the upstream must get valid JSON).
  simdjson::padded_string_view in = padded(body);
  simdjson::dom::element doc;
  if (tl_dom_parser.parse(in.data(), in.length(), false).get(doc) != simdjson::SUCCESS) return invalid_json();
  simdjson::dom::object obj;
  if (doc.get_object().get(obj) != simdjson::SUCCESS)
    return fail("The request body must be a JSON object.", "invalid_json");
  // Each field read here at most once: parsers disagree on which duplicate wins (the upstream
  // might bill a different model or cap than tollgate held for).
  bool seen_model = false, seen_stream = false, seen_max_tokens = false, seen_max_completion_tokens = false,
       seen_n = false;
  auto repeated = [&](std::string_view key) {
    return fail(fmt::format("We could not parse the JSON body of your request: the key '{}' appears more than once "
                            "(JSON parsers disagree on which one counts).", key),
                "invalid_json");
  };
  for (auto [key, v] : obj) {
    if (key == "model") {
      if (std::exchange(seen_model, true)) return repeated(key);
      std::string_view m;
      if (v.get_string().get(m) != simdjson::SUCCESS || m.empty() || m.size() > 256)
        return fail("'model' must be a non-empty string.", "invalid_model");
      out.model = std::string(m);
    } else if (key == "stream") {
      if (std::exchange(seen_stream, true)) return repeated(key);
      if (v.is_null()) continue;
      bool b;
      if (v.get_bool().get(b) != simdjson::SUCCESS) return fail("'stream' must be a boolean.", "invalid_value");
      out.stream = b;
    } else if ((key == cap_key(ep) && !key.empty()) || (key == "max_completion_tokens" && openai_chat_like(ep))) {
      bool is_max_tokens = key != "max_completion_tokens";
      if (std::exchange(is_max_tokens ? seen_max_tokens : seen_max_completion_tokens, true)) return repeated(key);
      if (v.is_null()) {
        if (is_max_tokens) out.max_tokens_null = true;
        continue;
      }
      std::int64_t n;
      if (v.get_int64().get(n) != simdjson::SUCCESS || n < 1)
        return fail(fmt::format("'{}' must be a positive integer.", key), "invalid_value");
      // One cap: the upstream honours whichever field it knows (OpenAI: max_completion_tokens
      // over max_tokens), so tollgate holds the smaller and sends it in both (upstream_body).
      (is_max_tokens ? out.max_tokens_field : out.max_completion_tokens_field) = n;
      out.max_tokens = out.max_tokens ? std::min(*out.max_tokens, n) : n;
    } else if (key == "n" && ep == Endpoint::images_generations) {
      if (std::exchange(seen_n, true)) return repeated(key);
      if (v.is_null()) continue;
      if (v.get_int64().get(out.n) != simdjson::SUCCESS || out.n < 1 || out.n > max_images)
        return fail(fmt::format("'n' must be an integer from 1 to {}.", max_images), "invalid_value");
    } else if (key == "stream_options" && openai_chat_like(ep)) {
      if (std::exchange(out.has_stream_options, true)) return repeated(key);
      if (v.is_null()) continue;
      simdjson::dom::object so;
      if (v.get_object().get(so) != simdjson::SUCCESS)
        return fail("'stream_options' must be an object.", "invalid_value");
      bool seen_include_usage = false;
      for (auto [k2, v2] : so) {
        if (k2 != "include_usage") continue;
        if (std::exchange(seen_include_usage, true)) return repeated("stream_options.include_usage");
        if (v2.get_bool().get(out.include_usage) != simdjson::SUCCESS)
          return fail("'stream_options.include_usage' must be a boolean.", "invalid_value");
        out.usage_declined = !out.include_usage;
      }
    }
  }
  if (!seen_model) return fail("you must provide a model parameter", "missing_model");
  // Anthropic requires the cap (its own message for a missing one).
  if (ep == Endpoint::messages && !out.max_tokens) return fail("max_tokens: Field required", "missing_max_tokens");
  if (ep == Endpoint::images_generations && out.stream)
    return fail("Streaming image generation is not supported on this gateway; send 'stream': false.", "invalid_value");
  // upstream_body() edits these as a document with Boost.JSON: it must read them as well.
  if ((out.stream && out.has_stream_options && !out.include_usage) || out.max_tokens_null || out.caps_differ()) {
    boost::json::error_code ec;
    boost::json::parse(boost::json::string_view(body.data(), body.size()), ec, {}, deep_json);
    if (ec) return invalid_json();
  }
  return out;
}

std::string upstream_body(std::string_view body, Endpoint ep, const ParsedRequest& req,
                          std::int64_t default_max_tokens, std::string_view upstream_model) {
  const bool chat = ep == Endpoint::chat_completions || ep == Endpoint::completions;
  // Usage is asked for where OpenAI makes it optional (chat and completion streams); the
  // Responses, Messages and Images APIs always report it. The cap goes where the API has one
  // that may be left out (Anthropic requires max_tokens; images and embeddings have none).
  bool want_usage = req.stream && !req.include_usage && chat;
  bool want_cap = !req.max_tokens && (chat || ep == Endpoint::responses);
  bool one_cap = req.caps_differ() && chat;
  const std::string cap(cap_key(ep));
  bool rename = !upstream_model.empty() && upstream_model != req.model;
  if (!want_usage && !want_cap && !one_cap && !rename) return std::string(body);
  if ((want_usage && req.has_stream_options) || (want_cap && req.max_tokens_null) || one_cap || rename) {
    // Rare: a field to set is there already (null, or stream_options without include_usage):
    // edit it as a document, so the body never holds the field twice.
    boost::json::object o =
        boost::json::parse(boost::json::string_view(body.data(), body.size()), {}, deep_json).as_object();
    if (want_usage) {
      boost::json::value& so = o["stream_options"];
      if (!so.is_object()) so = boost::json::object();
      so.as_object()["include_usage"] = true;
    }
    if (want_cap) o[cap] = default_max_tokens;
    if (one_cap) o["max_tokens"] = o["max_completion_tokens"] = *req.max_tokens;  // the cap held
    // The route's rename (parse_request refused a body with two "model" keys: this is the one).
    if (rename) o["model"] = upstream_model;
    return boost::json::serialize(o);
  }
  // Common case: insert the absent keys right after the opening brace (the body has at least
  // "model", so a comma always follows).
  std::size_t brace = body.find('{');
  std::string out;
  out.reserve(body.size() + 64);
  out.append(body.substr(0, brace + 1));
  if (want_usage) out.append(R"("stream_options":{"include_usage":true},)");
  if (want_cap) fmt::format_to(std::back_inserter(out), R"("{}":{},)", cap, default_max_tokens);
  out.append(body.substr(brace + 1));
  return out;
}

std::optional<ChunkInfo> inspect_json(std::string_view json) {
  thread_local std::string buf;
  buf.assign(json);
  od::document doc;
  if (tl_parser.iterate(padded(buf)).get(doc) != simdjson::SUCCESS) return std::nullopt;
  od::object obj;
  if (doc.get_object().get(obj) != simdjson::SUCCESS) return std::nullopt;
  ChunkInfo info;
  bool choices_empty = false, have_choices = false;
  for (auto field : obj) {
    std::string_view key;
    if (field.unescaped_key().get(key) != simdjson::SUCCESS) return std::nullopt;
    od::value v;
    if (field.value().get(v) != simdjson::SUCCESS) return std::nullopt;
    if (key == "id") {
      std::string_view id;
      if (v.get_string().get(id) == simdjson::SUCCESS) info.generation_id = std::string(id);
      else info.generation_id.reset();
    } else if (key == "error") {
      info.error = !v.is_null().value_unsafe();
    } else if (key == "choices") {
      have_choices = choices_empty = false;
      info.finish_reason.reset();
      od::array arr;
      if (v.get_array().get(arr) != simdjson::SUCCESS) continue;
      have_choices = true;
      choices_empty = true;
      for (auto el : arr) {
        choices_empty = false;
        od::object c;
        if (el.get_object().get(c) != simdjson::SUCCESS) continue;
        std::string_view fr;
        bool have_fr = false;  // the last finish_reason of this choice is a string
        for (auto cf : c) {
          std::string_view ck;
          if (cf.unescaped_key().get(ck) != simdjson::SUCCESS) break;
          if (ck == "finish_reason") have_fr = cf.value().get_string().get(fr) == simdjson::SUCCESS;
        }
        if (have_fr) info.finish_reason = std::string(fr);
      }
    } else if (key == "usage") {
      od::object u;
      if (v.get_object().get(u) != simdjson::SUCCESS) {  // null
        info.usage.reset();
        continue;
      }
      Usage usage;
      read_usage(u, UsageNames::chat, usage);
      info.usage = usage;
    }
  }
  info.usage_only = have_choices && choices_empty && info.usage.has_value();
  return info;
}

namespace {
/// True if a non-empty string (content, text), array (tool_calls) or object is at `v`.
bool non_empty(od::value v) {
  od::json_type t;
  if (v.type().get(t) != simdjson::SUCCESS) return false;
  if (t == od::json_type::string) {
    std::string_view sv;
    return v.get_string().get(sv) == simdjson::SUCCESS && !sv.empty();
  }
  if (t == od::json_type::array) {
    od::array a;
    if (v.get_array().get(a) != simdjson::SUCCESS) return false;
    for (auto e : a) {
      (void)e;
      return true;
    }
  }
  return false;
}

/// Parses a chunk: does any choice carry delta.content, delta.tool_calls or text?
bool parsed_has_output(std::string_view d) {
  thread_local std::string buf;
  buf.assign(d);
  od::document doc;
  od::array choices;
  if (tl_parser.iterate(padded(buf)).get(doc) != simdjson::SUCCESS ||
      doc["choices"].get_array().get(choices) != simdjson::SUCCESS)
    return false;
  for (auto c : choices) {
    od::object co;
    if (c.get_object().get(co) != simdjson::SUCCESS) return false;
    for (auto f : co) {
      std::string_view k;
      if (f.unescaped_key().get(k) != simdjson::SUCCESS) return false;
      if (k == "text" && non_empty(f.value())) return true;
      if (k != "delta" && k != "message") continue;
      od::object delta;
      if (f.value().get_object().get(delta) != simdjson::SUCCESS) continue;
      for (auto df : delta) {
        std::string_view dk;
        if (df.unescaped_key().get(dk) != simdjson::SUCCESS) return false;
        if ((dk == "content" || dk == "tool_calls" || dk == "reasoning") && non_empty(df.value())) return true;
      }
    }
  }
  return false;
}
}  // namespace

bool chunk_has_output(std::string_view d) noexcept {
  // Fast path: the compact form every provider sends.
  for (std::string_view k : {std::string_view(R"("content":")"), std::string_view(R"("text":")")}) {
    auto p = d.find(k);
    if (p != std::string_view::npos && p + k.size() < d.size() && d[p + k.size()] != '"') return true;
  }
  if (d.find(R"("tool_calls":[{)") != std::string_view::npos) return true;
  // Anything else that may hold output ("content": "x" with spaces, escapes) is parsed: output is
  // never free because of how its JSON is spaced.
  if (d.find("\"content\"") == std::string_view::npos && d.find("\"text\"") == std::string_view::npos &&
      d.find("\"tool_calls\"") == std::string_view::npos && d.find("\"reasoning\"") == std::string_view::npos)
    return false;
  try {
    return parsed_has_output(d);
  } catch (...) {
    return false;
  }
}

std::string event_data(std::string_view ev) {
  std::string out;
  bool first = true;
  for_each_field(ev, "data:", [&](std::string_view value) {
    if (!std::exchange(first, false)) out.push_back('\n');
    out.append(value);
  });
  return out;
}

std::string json_string(std::string_view s) {
  return boost::json::serialize(boost::json::string_view(s.data(), s.size()));
}

std::string error_body(std::string_view message, std::string_view type, std::string_view code) {
  return fmt::format(R"({{"error":{{"message":{},"type":{},"param":null,"code":{}}}}})",
                     json_string(message), json_string(type), json_string(code));
}

}  // namespace tollgate::wire
