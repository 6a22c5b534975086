#include "proxy/wire.hpp"

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

/// simdjson reads up to SIMDJSON_PADDING bytes past the end: make sure they are ours.
simdjson::padded_string_view padded(std::string& s) {
  if (s.capacity() < s.size() + simdjson::SIMDJSON_PADDING) s.reserve(s.size() + simdjson::SIMDJSON_PADDING);
  return simdjson::padded_string_view(s.data(), s.size(), s.capacity());
}

/// True if `s` is exactly a JSON number (RFC 8259 §6).
bool is_json_number(std::string_view s) noexcept {
  std::size_t i = 0;
  auto digits = [&] {
    std::size_t from = i;
    while (i < s.size() && s[i] >= '0' && s[i] <= '9') ++i;
    return i > from;
  };
  if (i < s.size() && s[i] == '-') ++i;
  if (i < s.size() && s[i] == '0') ++i;
  else if (!digits()) return false;
  if (i < s.size() && s[i] == '.' && (++i, !digits())) return false;
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
    if (!digits()) return false;
  }
  return i == s.size();
}

std::string json_escape(std::string_view s) {
  return boost::json::serialize(boost::json::string_view(s.data(), s.size()));
}

/// The text of a number value (ondemand's raw token, trailing whitespace removed), or empty
/// when `v` is not one. Does not consume `v`.
std::string_view number_text(od::value& v) {
  od::json_type t;
  if (v.type().get(t) != simdjson::SUCCESS || t != od::json_type::number) return {};
  std::string_view raw = v.raw_json_token();
  while (!raw.empty() && (raw.back() == ' ' || raw.back() == '\n' || raw.back() == '\r' || raw.back() == '\t'))
    raw.remove_suffix(1);
  return is_json_number(raw) ? raw : std::string_view{};
}

/// A usage token count as billing takes it (see Usage): clamped to [0, Usage::max_tokens],
/// fractions and exponents rounded up; 0 when `v` is not a number. Sets `implausible` when the
/// count is not a number, negative or ≥ Usage::max_tokens (the usage is then billed as missing).
std::int64_t usage_tokens(od::value& v, bool& implausible) {
  std::string_view raw = number_text(v);  // 12, 12.5, 1e3, a 30-digit integer, -1e30, -0
  if (raw.empty() || raw.front() == '-') {
    implausible = true;
    return 0;
  }
  std::int64_t n;
  if (v.get_int64().get(n) != simdjson::SUCCESS) {
    auto up = pricing::parse_decimal(raw, 0);  // exact, rounds up; nullopt only beyond int64
    n = up ? *up : Usage::max_tokens;
  }
  if (n >= Usage::max_tokens) implausible = true;
  return std::min<std::int64_t>(n, Usage::max_tokens);
}

/// `usage.cost` (USD) if it is a number in [0, max_request_picos] once read as Picos.
std::optional<std::string> usage_cost(od::value& v) {
  std::string_view raw = number_text(v);
  if (raw.empty() || raw.front() == '-') return std::nullopt;
  auto picos = pricing::parse_decimal(raw, 12);
  if (!picos || *picos > pricing::max_request_picos) return std::nullopt;
  return std::string(raw);
}

/// Reads `prompt_tokens_details` (cached_tokens, cache_write_tokens) or
/// `completion_tokens_details` (reasoning_tokens) into `usage`. Of a repeated object the last
/// counts; null or not an object: no details (0); a null count is 0, any other count is read as
/// usage_tokens() reads one (and may make the usage implausible).
void usage_details(od::value& v, bool prompt_side, Usage& usage) {
  if (prompt_side) usage.cached_tokens = usage.cache_write_tokens = 0;
  else usage.reasoning_tokens = 0;
  od::object d;
  if (v.get_object().get(d) != simdjson::SUCCESS) return;
  for (auto df : d) {
    std::string_view dk;
    if (df.unescaped_key().get(dk) != simdjson::SUCCESS) break;
    std::int64_t* count = nullptr;
    if (prompt_side && dk == "cached_tokens") count = &usage.cached_tokens;
    else if (prompt_side && dk == "cache_write_tokens") count = &usage.cache_write_tokens;
    else if (!prompt_side && dk == "reasoning_tokens") count = &usage.reasoning_tokens;
    if (!count) continue;
    od::value dv;
    if (df.value().get(dv) != simdjson::SUCCESS) break;
    bool null = false;
    if (dv.is_null().get(null) == simdjson::SUCCESS && null) *count = 0;
    else *count = usage_tokens(dv, usage.implausible);
  }
}

}  // namespace

std::optional<ParsedRequest> parse_request(std::string& body, RequestError& err) {
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
  bool seen_model = false, seen_stream = false, seen_max_tokens = false, seen_max_completion_tokens = false;
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
    } else if (key == "max_tokens" || key == "max_completion_tokens") {
      bool is_max_tokens = key == "max_tokens";
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
    } else if (key == "stream_options") {
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
      }
    }
  }
  if (!seen_model) return fail("you must provide a model parameter", "missing_model");
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
  bool want_usage = req.stream && !req.include_usage && ep != Endpoint::embeddings;
  bool want_cap = !req.max_tokens && ep != Endpoint::embeddings;
  bool one_cap = req.caps_differ() && ep != Endpoint::embeddings;
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
    if (want_cap) o["max_tokens"] = default_max_tokens;
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
  if (want_cap) fmt::format_to(std::back_inserter(out), R"("max_tokens":{},)", default_max_tokens);
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
      for (auto uf : u) {
        std::string_view uk;
        if (uf.unescaped_key().get(uk) != simdjson::SUCCESS) break;
        od::value uv;
        if (uf.value().get(uv) != simdjson::SUCCESS) break;
        if (uk == "prompt_tokens" || uk == "completion_tokens") {
          // Of repeated keys the last counts. A count that is not a number, is negative or is
          // beyond Usage::max_tokens makes the whole usage implausible (billed as missing).
          (uk == "prompt_tokens" ? usage.prompt_tokens : usage.completion_tokens) = usage_tokens(uv, usage.implausible);
        } else if (uk == "cost") {
          usage.cost_usd = usage_cost(uv);
          if (!usage.cost_usd && !uv.is_null()) usage.implausible = true;  // negative, huge, not a number
        } else if (uk == "prompt_tokens_details" || uk == "completion_tokens_details") {
          usage_details(uv, uk == "prompt_tokens_details", usage);
        }
      }
      // The parts priced apart are parts of their whole: more is an upstream's mistake.
      if (usage.cached_tokens + usage.cache_write_tokens > usage.prompt_tokens ||
          usage.reasoning_tokens > usage.completion_tokens)
        usage.implausible = true;
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
  while (!ev.empty()) {
    auto eol = ev.find_first_of("\r\n");
    std::string_view line = ev.substr(0, eol);
    if (line.size() >= 5 && line.substr(0, 5) == "data:") {
      line.remove_prefix(5);
      if (!line.empty() && line.front() == ' ') line.remove_prefix(1);
      if (!first) out.push_back('\n');
      out.append(line);
      first = false;
    }
    if (eol == std::string_view::npos) break;
    ev.remove_prefix(eol + 1);
  }
  return out;
}

std::string error_body(std::string_view message, std::string_view type, std::string_view code) {
  return fmt::format(R"({{"error":{{"message":{},"type":{},"param":null,"code":{}}}}})",
                     json_escape(message), json_escape(type), json_escape(code));
}

}  // namespace tollgate::wire
