#include "proxy/wire_usage.hpp"

#include <boost/json.hpp>

#include <algorithm>
#include <cctype>

namespace tollgate::wire {
namespace od = simdjson::ondemand;

bool name_mentions_cost(std::string_view name) {
  constexpr std::string_view cost = "cost";
  return std::search(name.begin(), name.end(), cost.begin(), cost.end(), [](char a, char b) {
           return std::tolower(static_cast<unsigned char>(a)) == b;
         }) != name.end();
}

simdjson::padded_string_view padded(std::string& s) {
  if (s.capacity() < s.size() + simdjson::SIMDJSON_PADDING) s.reserve(s.size() + simdjson::SIMDJSON_PADDING);
  return simdjson::padded_string_view(s.data(), s.size(), s.capacity());
}

namespace {

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

/// A count that may be null (vLLM and others send null for "none"): 0.
std::int64_t nullable_tokens(od::value& v, bool& implausible) {
  bool null = false;
  if (v.is_null().get(null) == simdjson::SUCCESS && null) return 0;
  return usage_tokens(v, implausible);
}

/// `usage.cost` (USD) if it is a number in [0, max_request_picos] once read as Picos.
std::optional<std::string> usage_cost(od::value& v) {
  std::string_view raw = number_text(v);
  if (raw.empty() || raw.front() == '-') return std::nullopt;
  auto picos = pricing::parse_decimal(raw, 12);
  if (!picos || *picos > pricing::max_request_picos) return std::nullopt;
  return std::string(raw);
}

/// One counted member of a details object: its name and where it goes.
struct DetailField {
  std::string_view name;
  std::int64_t Usage::*count;
};

/// Reads a details object's listed counts into `u` (all reset to 0 first: of a repeated details
/// object the last counts, and a null or non-object one means none).
void usage_details(od::value& v, std::initializer_list<DetailField> fields, Usage& u) {
  for (const auto& f : fields) u.*f.count = 0;
  od::object d;
  if (v.get_object().get(d) != simdjson::SUCCESS) return;
  for (auto df : d) {
    std::string_view dk;
    if (df.unescaped_key().get(dk) != simdjson::SUCCESS) break;
    auto it = std::find_if(fields.begin(), fields.end(), [&](const DetailField& f) { return f.name == dk; });
    if (it == fields.end()) continue;
    od::value dv;
    if (df.value().get(dv) != simdjson::SUCCESS) break;
    u.*it->count = nullable_tokens(dv, u.implausible);
  }
}


void remove_costs(boost::json::value& v) {
  if (auto* o = v.if_object()) {
    for (auto it = o->begin(); it != o->end();) {
      if (name_mentions_cost(it->key())) {
        it = o->erase(it);
      } else {
        remove_costs(it->value());
        ++it;
      }
    }
  } else if (auto* a = v.if_array()) {
    for (auto& el : *a) remove_costs(el);
  }
}

const boost::json::parse_options deep_json = [] {
  boost::json::parse_options o;
  o.max_depth = simdjson::DEFAULT_MAX_DEPTH;
  return o;
}();

}  // namespace

void read_usage(od::object& obj, UsageNames names, Usage& u) {
  const bool anthropic = names == UsageNames::anthropic;
  // Anthropic's input counts are three separate numbers; prompt_tokens is their sum.
  std::int64_t uncached = anthropic ? std::max<std::int64_t>(0, u.prompt_tokens - u.cached_tokens - u.cache_write_tokens) : 0;
  const std::string_view prompt_name = names == UsageNames::chat ? "prompt_tokens" : "input_tokens";
  const std::string_view completion_name = names == UsageNames::chat ? "completion_tokens" : "output_tokens";
  for (auto f : obj) {
    std::string_view k;
    if (f.unescaped_key().get(k) != simdjson::SUCCESS) break;
    od::value v;
    if (f.value().get(v) != simdjson::SUCCESS) break;
    if (k == prompt_name) {
      (anthropic ? uncached : u.prompt_tokens) = usage_tokens(v, u.implausible);
    } else if (k == completion_name) {
      u.completion_tokens = usage_tokens(v, u.implausible);
    } else if (k == "cost") {
      u.cost_usd = usage_cost(v);
      if (!u.cost_usd && !v.is_null()) u.implausible = true;  // negative, huge, not a number
    } else if (anthropic && k == "cache_read_input_tokens") {
      u.cached_tokens = nullable_tokens(v, u.implausible);
    } else if (anthropic && k == "cache_creation_input_tokens") {
      u.cache_write_tokens = nullable_tokens(v, u.implausible);
    } else if (names == UsageNames::chat && k == "prompt_tokens_details") {
      usage_details(v, {{"cached_tokens", &Usage::cached_tokens}, {"cache_write_tokens", &Usage::cache_write_tokens}}, u);
    } else if (names == UsageNames::chat && k == "completion_tokens_details") {
      usage_details(v, {{"reasoning_tokens", &Usage::reasoning_tokens}, {"image_tokens", &Usage::image_tokens}}, u);
    } else if (names == UsageNames::responses && k == "input_tokens_details") {
      usage_details(v, {{"cached_tokens", &Usage::cached_tokens}, {"cache_write_tokens", &Usage::cache_write_tokens}}, u);
    } else if (names == UsageNames::responses && k == "output_tokens_details") {
      usage_details(v, {{"reasoning_tokens", &Usage::reasoning_tokens}}, u);
    }
  }
  if (anthropic)  // each ≤ max_tokens, so the sum fits; beyond max_tokens it is implausible
    u.prompt_tokens = uncached + u.cached_tokens + u.cache_write_tokens;
  if (names == UsageNames::images) u.image_tokens = u.completion_tokens;
  // The parts priced apart are parts of their whole: more is an upstream's mistake.
  if (u.prompt_tokens >= Usage::max_tokens || u.cached_tokens + u.cache_write_tokens > u.prompt_tokens ||
      u.reasoning_tokens + u.image_tokens > u.completion_tokens)
    u.implausible = true;
  u.prompt_tokens = std::min(u.prompt_tokens, Usage::max_tokens);
}

bool read_usage_text(std::string_view json, UsageNames names, Usage& u) {
  thread_local od::parser parser;
  thread_local std::string buf;
  buf.assign(json);
  od::document doc;
  od::object obj;
  if (parser.iterate(padded(buf)).get(doc) != simdjson::SUCCESS || doc.get_object().get(obj) != simdjson::SUCCESS)
    return false;
  Usage read = u;
  try {
    read_usage(obj, names, read);
  } catch (const simdjson::simdjson_error&) {
    return false;
  }
  u = read;
  return true;
}


namespace {
/// Where the value at `path` is in `doc`: byte offset and size (the last of repeated keys), and
/// whether every key on the path appears once.
struct Span {
  std::size_t begin = 0, size = 0;
  bool unique = true;
};

std::optional<Span> span_at(std::string_view doc, std::initializer_list<std::string_view> path) {
  thread_local od::parser parser;
  thread_local std::string buf;
  Span at{0, doc.size(), true};
  for (std::string_view key : path) {
    buf.assign(doc.substr(at.begin, at.size));
    od::document d;
    od::object o;
    if (parser.iterate(padded(buf)).get(d) != simdjson::SUCCESS || d.get_object().get(o) != simdjson::SUCCESS)
      return std::nullopt;
    std::optional<Span> found;
    int count = 0;
    try {
      for (auto f : o) {
        std::string_view k = f.unescaped_key();
        od::value v = f.value();
        if (k != key) continue;
        od::json_type t = v.type();
        std::string_view raw;
        if (t == od::json_type::object) {
          od::object inner = v.get_object();
          raw = inner.raw_json();
        } else if (t == od::json_type::array) {
          od::array inner = v.get_array();
          raw = inner.raw_json();
        } else {
          raw = v.raw_json_token();
        }
        while (!raw.empty() && (raw.back() == ' ' || raw.back() == '\n' || raw.back() == '\r' || raw.back() == '\t'))
          raw.remove_suffix(1);
        found = Span{at.begin + static_cast<std::size_t>(raw.data() - buf.data()), raw.size(), at.unique};
        ++count;
      }
    } catch (const simdjson::simdjson_error&) {
      return std::nullopt;
    }
    if (!found) return std::nullopt;
    at = *found;
    at.unique = at.unique && count == 1;
  }
  return at;
}
}  // namespace

std::optional<std::string> json_at(std::string_view doc, std::initializer_list<std::string_view> path) {
  auto at = span_at(doc, path);
  if (!at) return std::nullopt;
  return std::string(doc.substr(at->begin, at->size));
}

std::optional<std::string> string_at(std::string_view doc, std::initializer_list<std::string_view> path) {
  auto raw = json_at(doc, path);
  if (!raw || raw->empty() || raw->front() != '"') return std::nullopt;
  boost::json::error_code ec;
  auto v = boost::json::parse(*raw, ec);
  if (ec || !v.is_string()) return std::nullopt;
  return std::string(v.get_string());
}

bool usage_at(std::string_view doc, std::initializer_list<std::string_view> path, UsageNames names, Usage& u) {
  auto raw = json_at(doc, path);
  return raw && read_usage_text(*raw, names, u);
}

std::string event_type(std::string_view ev, std::string_view data) {
  std::optional<std::string_view> type;  // the first `event:` field
  for_each_field(ev, "event:", [&](std::string_view value) {
    if (!type) type = value;
  });
  return type ? std::string(*type) : string_at(data, {"type"}).value_or("");
}

std::string with_charge(std::string_view doc, std::initializer_list<std::string_view> path,
                        std::optional<pricing::Micros> charge) {
  // Usual case: the usage object is found once on its path; only it is rewritten, and the rest
  // of the document goes out byte for byte (an embeddings body of megabytes is not re-printed).
  if (auto at = path.size() ? span_at(doc, path) : std::nullopt; at && at->unique) {
    std::string_view usage = doc.substr(at->begin, at->size);
    if (usage.empty() || usage.front() != '{') return std::string(doc);
    std::string out;
    out.reserve(doc.size() + 32);
    out.append(doc.substr(0, at->begin));
    out.append(with_charge(usage, {}, charge));
    out.append(doc.substr(at->begin + at->size));
    return out;
  }
  boost::json::error_code ec;
  boost::json::value v = boost::json::parse(boost::json::string_view(doc.data(), doc.size()), ec, {}, deep_json);
  if (ec) return std::string(doc);
  boost::json::value* at = &v;
  for (std::string_view key : path) {
    auto* o = at->if_object();
    at = o ? o->if_contains(key) : nullptr;
    if (!at) return std::string(doc);
  }
  if (!at->is_object()) return std::string(doc);
  remove_costs(*at);
  if (!charge) return boost::json::serialize(v);
  // The charge goes in as decimal text, exact in micro-dollars ("0.000123"), not as a double
  // (which Boost.JSON would print as 1.23E-4): a marker string is serialized, then replaced.
  static constexpr std::string_view marker = "\"tollgate:charge:9f3b1c\"";
  at->as_object()["cost"] = marker.substr(1, marker.size() - 2);
  std::string out = boost::json::serialize(v);
  std::string amount;
  pricing::append_micros(amount, *charge);
  if (auto pos = out.rfind(marker); pos != std::string::npos) out.replace(pos, marker.size(), amount);
  return out;
}

}  // namespace tollgate::wire
