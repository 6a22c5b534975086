#include "proxy/config.hpp"

#include <toml++/toml.h>

#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <limits>
#include <type_traits>
#include <utility>
#include <stdexcept>

namespace tollgate {

namespace {
void split_listen(std::string& host, std::uint16_t& port, const std::string& v) {
  auto colon = v.rfind(':');
  if (colon == std::string::npos) throw std::invalid_argument("listen address must be HOST:PORT: " + v);
  host = v.substr(0, colon);
  int p = std::atoi(v.c_str() + colon + 1);
  if (p < 0 || p > 65535) throw std::invalid_argument("bad listen port: " + v);
  port = static_cast<std::uint16_t>(p);
}

std::invalid_argument wrong_type(std::string_view path, std::string_view what) {
  return std::invalid_argument(fmt::format("{} must be {}", path, what));
}

/// Reads `path` into `out` when present; a value of another type (or out of T's range) is an
/// error, never silently ignored nor converted. (toml++'s value<integer>() of a float converts
/// with undefined behaviour when the float is out of range: found by fuzz_config.)
template <class T>
void get(const toml::table& t, std::string_view path, T& out) {
  auto node = t.at_path(path);
  if (!node) return;
  if constexpr (std::is_same_v<T, bool>) {
    if (!node.is_boolean()) throw wrong_type(path, "true or false");
    out = *node.value_exact<bool>();
  } else if constexpr (std::is_integral_v<T>) {
    if (!node.is_integer()) throw wrong_type(path, "an integer");
    std::int64_t v = *node.value_exact<std::int64_t>();
    if (!std::in_range<T>(v))
      throw wrong_type(path, fmt::format("an integer in [{}, {}]", std::numeric_limits<T>::min(), std::numeric_limits<T>::max()));
    out = static_cast<T>(v);
  } else {
    if (!node.is_string()) throw wrong_type(path, "a string");
    out = *node.value_exact<std::string>();
  }
}
void get_ms(const toml::table& t, std::string_view path, std::chrono::milliseconds& out) {
  std::int64_t ms = out.count();
  get(t, path, ms);
  out = std::chrono::milliseconds(ms);
}
}  // namespace

routing::DefaultUpstream Config::default_upstream() const {
  routing::DefaultUpstream d;
  d.base_url = upstream_url_text;
  if (!upstream_key.empty()) d.api_key = routing::Secret(upstream_key);
  d.connect_timeout = upstream_connect_timeout;
  d.response_timeout = upstream_response_timeout;
  d.idle_timeout = upstream_idle_timeout;
  d.max_connections = upstream_max_idle_connections;
  return d;
}

Config Config::load(const std::optional<std::string>& path) {
  Config c;
  if (path) {
    toml::table t = toml::parse_file(*path);
    std::string listen, admin_listen;
    get(t, "server.listen", listen);
    if (!listen.empty()) split_listen(c.listen_host, c.listen_port, listen);
    get(t, "server.admin_listen", admin_listen);
    if (!admin_listen.empty()) split_listen(c.admin_host, c.admin_port, admin_listen);
    get(t, "server.threads", c.threads);
    get(t, "server.max_body_bytes", c.max_body_bytes);
    get_ms(t, "server.client_idle_timeout_ms", c.keepalive_timeout);  // the name before 0.2
    get_ms(t, "server.keepalive_timeout_ms", c.keepalive_timeout);
    get_ms(t, "server.header_timeout_ms", c.header_timeout);
    get_ms(t, "server.body_idle_timeout_ms", c.body_idle_timeout);
    get(t, "server.max_requests_per_connection", c.max_requests_per_connection);
    get(t, "server.max_connections", c.max_connections);
    get(t, "server.max_connections_per_address", c.max_connections_per_address);
    get(t, "server.max_queued_requests", c.max_queued_requests);
    get_ms(t, "server.drain_timeout_ms", c.drain_timeout);
    get(t, "database.url", c.database_url);
    get(t, "database.lookup_threads", c.lookup_threads);
    get(t, "redis.url", c.redis_url);
    get(t, "admission.enabled", c.admission.enabled);
    get_ms(t, "admission.timeout_ms", c.admission.timeout);
    get_ms(t, "admission.hold_ttl_ms", c.admission.hold_ttl);
    std::string mode = "closed";
    get(t, "admission.failure_mode", mode);
    if (mode != "closed" && mode != "open")
      throw std::invalid_argument("admission.failure_mode must be \"closed\" or \"open\"");
    c.admission.failure_mode = mode == "open" ? ratelimit::FailureMode::fail_open : ratelimit::FailureMode::fail_closed;
    get(t, "upstream.url", c.upstream_url_text);
    get(t, "upstream.key", c.upstream_key);
    get_ms(t, "upstream.connect_timeout_ms", c.upstream_connect_timeout);
    get_ms(t, "upstream.response_timeout_ms", c.upstream_response_timeout);
    get_ms(t, "upstream.idle_timeout_ms", c.upstream_idle_timeout);
    get(t, "upstream.max_idle_connections", c.upstream_max_idle_connections);
    get(t, "upstream.max_response_bytes", c.upstream_max_response_bytes);
    get(t, "upstream.max_event_bytes", c.upstream_max_event_bytes);
    if (auto statuses = t.at_path("routing.retry_statuses")) {
      auto* list = statuses.as_array();
      if (!list) throw wrong_type("routing.retry_statuses", "a list of HTTP statuses");
      c.routing.retry_statuses.clear();
      for (const auto& s : *list) {
        if (!s.is_integer()) throw wrong_type("routing.retry_statuses", "a list of HTTP statuses");
        c.routing.retry_statuses.push_back(static_cast<int>(std::clamp<std::int64_t>(*s.value_exact<std::int64_t>(), 0, 1000)));
      }
    }
    get(t, "routing.max_attempts", c.routing.max_attempts);
    get(t, "routing.circuit_failure_threshold", c.routing.circuit.failure_threshold);
    get_ms(t, "routing.circuit_cooldown_ms", c.routing.circuit.cooldown);
    std::string cost_source = "prices";
    get(t, "billing.cost_source", cost_source);
    if (cost_source != "prices" && cost_source != "upstream")
      throw std::invalid_argument("billing.cost_source must be \"prices\" or \"upstream\"");
    c.cost_from_upstream = cost_source == "upstream";
    get(t, "billing.default_max_tokens", c.default_max_tokens);
    get(t, "billing.prompt_bytes_per_token", c.prompt_bytes_per_token);
    get(t, "keys.cache_capacity", c.key_cache_capacity);
    get_ms(t, "keys.cache_ttl_ms", c.key_cache_ttl);
    get_ms(t, "keys.negative_ttl_ms", c.key_cache_negative_ttl);
    get_ms(t, "keys.stale_if_error_ms", c.key_cache_stale_if_error);
    get(t, "usage.journal_dir", c.journal_dir);
    get(t, "usage.batch_rows", c.usage_batch_rows);
    get_ms(t, "usage.max_delay_ms", c.usage_max_delay);
    get(t, "usage.max_queued_records", c.usage_max_queued);
    if (auto secrets = t.at_path("stripe.webhook_secrets")) {
      auto* list = secrets.as_array();
      if (!list) throw wrong_type("stripe.webhook_secrets", "a list of strings");
      for (const auto& s : *list) {
        if (!s.is_string()) throw wrong_type("stripe.webhook_secrets", "a list of strings");
        c.stripe_webhook_secrets.push_back(*s.value_exact<std::string>());
      }
    }
    std::int64_t tolerance_s = c.stripe_tolerance.count();
    get(t, "stripe.tolerance_s", tolerance_s);
    c.stripe_tolerance = std::chrono::seconds(tolerance_s);
    get(t, "stripe.max_body_bytes", c.stripe_max_body_bytes);
    get(t, "alerts.url", c.alerts_url);
    get(t, "alerts.secret", c.alerts_secret);
    get_ms(t, "alerts.retry_base_ms", c.alerts_retry_base);
    get_ms(t, "alerts.poll_ms", c.alerts_poll);
    get_ms(t, "alerts.timeout_ms", c.alerts_timeout);
    get_ms(t, "alerts.max_age_ms", c.alerts_max_age);
  }
  if (const char* v = std::getenv("TOLLGATE_LISTEN")) split_listen(c.listen_host, c.listen_port, v);
  if (const char* v = std::getenv("TOLLGATE_ADMIN_LISTEN")) split_listen(c.admin_host, c.admin_port, v);
  if (const char* v = std::getenv("TOLLGATE_DATABASE_URL")) c.database_url = v;
  if (const char* v = std::getenv("TOLLGATE_REDIS_URL")) c.redis_url = v;
  if (const char* v = std::getenv("TOLLGATE_UPSTREAM_URL")) c.upstream_url_text = v;
  if (const char* v = std::getenv("TOLLGATE_UPSTREAM_KEY")) c.upstream_key = v;
  if (const char* v = std::getenv("TOLLGATE_JOURNAL_DIR")) c.journal_dir = v;
  if (const char* v = std::getenv("TOLLGATE_DRAIN_TIMEOUT_MS")) c.drain_timeout = std::chrono::milliseconds(std::atoll(v));
  if (const char* v = std::getenv("TOLLGATE_ADMISSION_TIMEOUT_MS")) c.admission.timeout = std::chrono::milliseconds(std::atoi(v));
  if (const char* v = std::getenv("TOLLGATE_ADMISSION")) {  // "off" | "closed" | "open"
    std::string m = v;
    c.admission.enabled = m != "off";
    if (m == "open") c.admission.failure_mode = ratelimit::FailureMode::fail_open;
    if (m == "closed") c.admission.failure_mode = ratelimit::FailureMode::fail_closed;
  }
  if (const char* v = std::getenv("TOLLGATE_STRIPE_WEBHOOK_SECRETS")) {
    // Comma-separated; spaces around each secret and empty elements are dropped.
    c.stripe_webhook_secrets.clear();
    std::string_view rest = v;
    while (!rest.empty()) {
      auto comma = rest.find(',');
      std::string_view s = rest.substr(0, comma);
      rest = comma == std::string_view::npos ? std::string_view{} : rest.substr(comma + 1);
      while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
      while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
      if (!s.empty()) c.stripe_webhook_secrets.emplace_back(s);
    }
  }
  if (const char* v = std::getenv("TOLLGATE_ALERTS_URL")) c.alerts_url = v;
  if (const char* v = std::getenv("TOLLGATE_ALERTS_SECRET")) c.alerts_secret = v;
  if (const char* v = std::getenv("TOLLGATE_ALERTS_RETRY_BASE_MS")) c.alerts_retry_base = std::chrono::milliseconds(std::atoll(v));
  if (const char* v = std::getenv("TOLLGATE_ALERTS_POLL_MS")) c.alerts_poll = std::chrono::milliseconds(std::atoll(v));
  c.upstream = parse_upstream_url(c.upstream_url_text);
  if (!c.alerts_url.empty()) {
    parse_upstream_url(c.alerts_url);  // throws naming the URL if it is not http(s)://host[:port][/path]
    if (c.alerts_secret.empty())
      throw std::invalid_argument("alerts.secret (or TOLLGATE_ALERTS_SECRET) is required with alerts.url: alerts are signed");
  }
  for (auto [name, ms] : {std::pair{"alerts.retry_base_ms", c.alerts_retry_base}, {"alerts.poll_ms", c.alerts_poll},
                          {"alerts.timeout_ms", c.alerts_timeout}, {"alerts.max_age_ms", c.alerts_max_age}})
    if (ms.count() < 1) throw std::invalid_argument(std::string(name) + " must be >= 1");
  if (c.upstream_key.find_first_of(std::string_view("\r\n\0", 3)) != std::string::npos)
    throw std::invalid_argument("upstream.key must not hold CR, LF or NUL (it goes into an HTTP header)");
  routing::check_routing_config(c.routing);
  if (c.prompt_bytes_per_token < 1) throw std::invalid_argument("billing.prompt_bytes_per_token must be >= 1");
  if (c.admission.timeout.count() < 1) throw std::invalid_argument("admission.timeout_ms must be >= 1");
  if (c.key_cache_stale_if_error.count() < 0) throw std::invalid_argument("keys.stale_if_error_ms must be >= 0");
  for (auto [name, ms] : {std::pair{"server.header_timeout_ms", c.header_timeout},
                          {"server.body_idle_timeout_ms", c.body_idle_timeout},
                          {"server.keepalive_timeout_ms", c.keepalive_timeout}})
    if (ms.count() < 1) throw std::invalid_argument(std::string(name) + " must be >= 1");
  if (c.max_requests_per_connection < 1) throw std::invalid_argument("server.max_requests_per_connection must be >= 1");
  if (c.max_connections < 1) throw std::invalid_argument("server.max_connections must be >= 1");
  if (c.drain_timeout.count() < 0) throw std::invalid_argument("server.drain_timeout_ms must be >= 0");
  if (c.upstream_max_event_bytes < 1024) throw std::invalid_argument("upstream.max_event_bytes must be >= 1024");
  if (c.usage_max_queued < 1) throw std::invalid_argument("usage.max_queued_records must be >= 1");
  if (c.max_queued_requests < 1) throw std::invalid_argument("server.max_queued_requests must be >= 1");
  for (const auto& s : c.stripe_webhook_secrets)  // the message never shows a secret
    if (s.empty() || s.find_first_of(" \t\r\n") != std::string::npos)
      throw std::invalid_argument("stripe.webhook_secrets: a secret is empty or holds whitespace");
  if (c.stripe_tolerance.count() < 1) throw std::invalid_argument("stripe.tolerance_s must be >= 1");
  if (c.stripe_max_body_bytes < 1024) throw std::invalid_argument("stripe.max_body_bytes must be >= 1024");
  if (c.default_max_tokens < 1) throw std::invalid_argument("billing.default_max_tokens must be >= 1");
  return c;
}

}  // namespace tollgate
