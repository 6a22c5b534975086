#include "proxy/prices_sync.hpp"

#include "pricing/money.hpp"
#include "pricing/pricing.hpp"
#include "proxy/upstream.hpp"
#include "routing/upstream_url.hpp"

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ssl/host_name_verification.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>
#include <boost/json.hpp>

#include <optional>
#include <stdexcept>

namespace tollgate {
namespace http = beast::http;

namespace {

constexpr auto fetch_timeout = std::chrono::seconds(30);

template <class Stream>
std::string get(Stream& s, const routing::UpstreamUrl& u, const std::string& target) {
  http::request<http::empty_body> req{http::verb::get, target, 11};
  req.set(http::field::host, u.host);
  req.set(http::field::user_agent, "tollgate/0.1");
  req.set(http::field::accept, "application/json");
  http::write(s, req);
  beast::flat_buffer buf;
  http::response_parser<http::string_body> p;
  p.body_limit(64ull << 20);
  http::read(s, buf, p);
  if (p.get().result_int() != 200)
    throw std::runtime_error("GET " + target + " answered " + std::to_string(p.get().result_int()));
  return std::move(p.get().body());
}

std::string fetch_models(const std::string& base_url) {
  auto u = routing::parse_upstream_url(base_url);
  net::io_context ioc;
  net::ip::tcp::resolver resolver(ioc);
  beast::tcp_stream tcp(ioc);
  tcp.expires_after(fetch_timeout);
  tcp.connect(resolver.resolve(u.host, u.port));
  std::string target = u.base_path + "/models";
  if (!u.tls) return get(tcp, u, target);
  auto ctx = make_upstream_tls_context();
  beast::ssl_stream<beast::tcp_stream> tls(std::move(tcp), ctx);
  if (!SSL_set_tlsext_host_name(tls.native_handle(), u.host.c_str()))
    throw std::runtime_error("TLS: cannot set the server name");
  tls.set_verify_callback(net::ssl::host_name_verification(u.host));
  tls.handshake(net::ssl::stream_base::client);
  return get(tls, u, target);
}

/// A price string as stored (numeric(20,12)), or nullopt when it is absent, not a decimal, negative
/// or finer than 1e-12.
std::optional<std::string> price_of(const boost::json::object& pricing, const char* name) {
  auto* v = pricing.if_contains(name);
  if (!v || !v->is_string()) return std::nullopt;
  std::string text(v->as_string());
  auto picos = pricing::parse_decimal(text, 12);
  if (!picos || *picos < 0) return std::nullopt;
  return text;
}

}  // namespace

PricesSyncResult sync_prices(sql::PgConn& db, const std::string& base_url, const std::string& only) {
  std::string body = fetch_models(base_url);
  boost::json::value doc;
  try {
    doc = boost::json::parse(body);
  } catch (const std::exception& e) {
    throw std::runtime_error(std::string("the model list is not JSON: ") + e.what());
  }
  auto* data = doc.is_object() ? doc.as_object().if_contains("data") : nullptr;
  if (!data || !data->is_array()) throw std::runtime_error("the model list has no data[] (not an OpenRouter /models)");
  PricesSyncResult r;
  db.exec("BEGIN");
  try {
    for (const auto& m : data->as_array()) {
      const auto* o = m.if_object();
      const auto* id = o ? o->if_contains("id") : nullptr;
      const auto* pricing = o ? o->if_contains("pricing") : nullptr;
      if (!id || !id->is_string() || !pricing || !pricing->is_object()) {
        ++r.skipped;
        continue;
      }
      std::string model(id->as_string());
      if (!only.empty() && !pricing::glob_match(only, model)) continue;
      const auto& p = pricing->as_object();
      auto prompt = price_of(p, "prompt"), completion = price_of(p, "completion");
      if (!prompt || !completion) {
        ++r.skipped;
        continue;
      }
      auto separate = [&](const char* name) -> std::optional<std::string> {
        auto v = price_of(p, name);
        if (v && pricing::parse_decimal(*v, 12) == 0) return std::nullopt;  // "0": not priced separately
        return v;
      };
      auto sv = [](const std::optional<std::string>& v) -> std::optional<std::string_view> {
        if (!v) return std::nullopt;
        return std::string_view(*v);
      };
      std::int64_t context = 0;
      if (auto* c = o->if_contains("context_length"); c && c->is_int64() && c->as_int64() > 0 &&
                                                      c->as_int64() <= 2'000'000'000)
        context = c->as_int64();
      auto cache_read = separate("input_cache_read"), cache_write = separate("input_cache_write"),
           reasoning = separate("internal_reasoning"), image_output = separate("image_output"),
           request = price_of(p, "request"), image = price_of(p, "image"), web = price_of(p, "web_search");
      std::optional<std::string> name;
      if (auto* n = o->if_contains("name"); n && n->is_string() && !n->as_string().empty())
        name = std::string(n->as_string());
      std::string context_text = std::to_string(context);
      // image_generation_price is the operator's (OpenRouter lists no price per generated
      // image) and created_at says when the model was first priced: neither is touched here.
      // A model the list gives no name keeps the one it has.
      db.exec("INSERT INTO model_prices (model, prompt_price, completion_price, context_length,"
              " input_cache_read_price, input_cache_write_price, internal_reasoning_price, request_price,"
              " image_price, web_search_price, image_output_price, name)"
              " VALUES ($1, $2::numeric, $3::numeric, NULLIF($4::int, 0), $5::numeric, $6::numeric, $7::numeric,"
              " NULLIF($8::numeric, 0), NULLIF($9::numeric, 0), NULLIF($10::numeric, 0), $11::numeric, $12)"
              " ON CONFLICT (model) DO UPDATE SET prompt_price = EXCLUDED.prompt_price,"
              " completion_price = EXCLUDED.completion_price, context_length = EXCLUDED.context_length,"
              " input_cache_read_price = EXCLUDED.input_cache_read_price,"
              " input_cache_write_price = EXCLUDED.input_cache_write_price,"
              " internal_reasoning_price = EXCLUDED.internal_reasoning_price,"
              " request_price = EXCLUDED.request_price, image_price = EXCLUDED.image_price,"
              " web_search_price = EXCLUDED.web_search_price, image_output_price = EXCLUDED.image_output_price,"
              " name = coalesce(EXCLUDED.name, model_prices.name), updated_at = now()",
              {model, *prompt, *completion, context_text, sv(cache_read), sv(cache_write), sv(reasoning), sv(request),
               sv(image), sv(web), sv(image_output), sv(name)});
      ++r.upserted;
    }
    db.exec("COMMIT");
  } catch (...) {
    db.exec("ROLLBACK");
    throw;
  }
  return r;
}

}  // namespace tollgate
