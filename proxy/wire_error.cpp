// Upstream errors in OpenAI's envelope (proxy/wire.hpp): a non-2xx response body, and the
// error event of a stream that fails after its 200. Errors are rare, so this path parses and
// rebuilds documents with Boost.JSON instead of splicing bytes.
#include "proxy/wire.hpp"
#include "proxy/wire_usage.hpp"

#include <boost/json.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <cctype>

namespace tollgate::wire {
namespace json = boost::json;

namespace {

constexpr std::string_view redacted = "[redacted]";


std::string redact(std::string_view s, std::string_view key) {
  std::string out(s);
  if (key.empty()) return out;
  for (std::size_t at = out.find(key); at != std::string::npos; at = out.find(key, at + redacted.size()))
    out.replace(at, key.size(), redacted);
  return out;
}

/// Removes every member whose name mentions "cost" and redacts the operator's key in every
/// string, at any depth (Boost.JSON's parser bounds the depth at 32).
void scrub(json::value& v, std::string_view key) {
  if (auto* o = v.if_object()) {
    for (auto it = o->begin(); it != o->end();) {
      if (name_mentions_cost(it->key())) {
        it = o->erase(it);
      } else {
        scrub(it->value(), key);
        ++it;
      }
    }
  } else if (auto* a = v.if_array()) {
    for (auto& el : *a) scrub(el, key);
  } else if (auto* s = v.if_string()) {
    if (!key.empty() && std::string_view(*s).find(key) != std::string_view::npos) *s = redact(*s, key);
  }
}

/// The inner object of OpenAI's envelope, from what the upstream said (`e`: its error object,
/// or null) and a fallback message. Members are in OpenAI's order; metadata only when given.
json::object envelope(const json::value& e, int status, std::string fallback_message, std::string_view key) {
  const json::object* o = e.if_object();
  auto member = [&](std::string_view name) -> const json::value* { return o ? o->if_contains(name) : nullptr; };
  json::object out;
  const json::value* message = member("message");
  if (message && message->is_string() && !message->get_string().empty())
    out["message"] = message->get_string();
  else if (e.is_string() && !e.get_string().empty())
    out["message"] = e.get_string();
  else
    out["message"] = std::move(fallback_message);
  const json::value* type = member("type");
  if (type && type->is_string() && !type->get_string().empty())
    out["type"] = type->get_string();
  else
    out["type"] = error_type_for_status(status);
  const json::value* param = member("param");
  out["param"] = param && param->is_string() ? *param : json::value(nullptr);
  const json::value* code = member("code");
  if (code && (code->is_string() || code->is_int64() || code->is_uint64() || code->is_null()))
    out["code"] = *code;
  else
    out["code"] = status;
  if (const json::value* metadata = member("metadata"); metadata && metadata->is_object())
    out["metadata"] = *metadata;
  json::value v(std::move(out));
  scrub(v, key);
  return std::move(v.as_object());
}

json::value parse_or_null(std::string_view text) {
  json::error_code ec;
  json::value v = json::parse(json::string_view(text.data(), text.size()), ec);
  return ec ? json::value(nullptr) : v;
}

}  // namespace

std::string_view error_type_for_status(int status) noexcept {
  switch (status) {
    case 401: return "authentication_error";
    case 402: return "insufficient_quota";
    case 403: return "permission_denied";
    case 404: return "not_found_error";
    case 429: return "rate_limit_error";
    default: return status >= 400 && status < 500 ? "invalid_request_error" : "upstream_error";
  }
}

std::string upstream_error_body(int status, std::string_view body, std::string_view content_type,
                                std::string_view upstream_key) {
  json::value doc = parse_or_null(body);
  json::value error;  // what the upstream's error says: an object, a string, or null
  std::string fallback;
  if (const json::object* o = doc.if_object()) {
    const json::value* e = o->if_contains("error");
    if (e && (e->is_object() || e->is_string())) {
      error = *e;
    } else {
      for (std::string_view name : {"message", "detail"}) {
        const json::value* m = o->if_contains(name);
        if (m && m->is_string() && !m->get_string().empty()) {
          error = *m;
          break;
        }
      }
    }
    fallback = fmt::format("The upstream answered HTTP {} without an error message.", status);
  } else if (body.find_first_not_of(" \t\r\n") == std::string_view::npos) {
    fallback = fmt::format("The upstream answered HTTP {} with an empty body.", status);
  } else {
    std::string_view type = content_type.substr(0, content_type.find(';'));
    fallback = fmt::format("The upstream answered HTTP {} with a body that is not JSON ({}, {} bytes).", status,
                           type.empty() ? "no Content-Type" : redact(type.substr(0, 100), upstream_key),
                           body.size());
  }
  json::object out;
  out["error"] = envelope(error, status, std::move(fallback), upstream_key);
  return json::serialize(out);
}

std::optional<std::string> upstream_error_event(std::string_view data, std::string_view upstream_key) {
  json::value doc = parse_or_null(data);
  json::object* o = doc.if_object();
  if (!o) return std::nullopt;
  json::value* e = o->if_contains("error");
  if (!e || e->is_null()) return std::nullopt;
  // OpenRouter's mid-stream `code` is the HTTP status the error would have had before the 200.
  int status = 500;
  if (const json::object* eo = e->if_object())
    if (const json::value* c = eo->if_contains("code"); c && c->is_int64() && c->get_int64() >= 400 && c->get_int64() <= 599)
      status = static_cast<int>(c->get_int64());
  json::value inner = envelope(*e, status, "The upstream failed mid-stream.", upstream_key);
  *e = std::move(inner);
  scrub(doc, upstream_key);  // the rest of the chunk (e.g. its usage) alike
  return json::serialize(doc);
}

std::string scrubbed(std::string_view json, std::string_view upstream_key) {
  json::error_code ec;
  json::value doc = json::parse(json::string_view(json.data(), json.size()), ec);
  if (ec) return redact(json, upstream_key);
  scrub(doc, upstream_key);
  return json::serialize(doc);
}

}  // namespace tollgate::wire
