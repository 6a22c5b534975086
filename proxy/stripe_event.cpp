#include "proxy/stripe_event.hpp"

#include <boost/json.hpp>

#include <limits>

namespace tollgate::stripe {
namespace json = boost::json;

std::string_view to_string(Action a) noexcept {
  switch (a) {
    case Action::credit: return "credit";
    case Action::refund: return "refund";
    case Action::record: return "record";
  }
  return "record";
}

namespace {

constexpr pricing::Micros micros_per_cent = 10'000;

const json::value* field(const json::object* o, std::string_view name) {
  if (!o) return nullptr;
  return o->if_contains(name);
}

std::string string_of(const json::object* o, std::string_view name) {
  const json::value* v = field(o, name);
  return v && v->is_string() ? std::string(v->get_string()) : std::string();
}

/// An id that may be expanded into its object ({"id": …}), as Stripe's `expand[]` does.
std::string id_of(const json::object* o, std::string_view name) {
  const json::value* v = field(o, name);
  if (v && v->is_object()) return string_of(&v->get_object(), "id");
  return v && v->is_string() ? std::string(v->get_string()) : std::string();
}

/// A non-negative integer amount in cents, as credit units; nullopt when absent or not one.
std::optional<pricing::Micros> cents_of(const json::object* o, std::string_view name) {
  const json::value* v = field(o, name);
  if (!v) return std::nullopt;
  std::int64_t cents = 0;
  if (v->is_int64()) cents = v->get_int64();
  else if (v->is_uint64() && v->get_uint64() <= static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max()))
    cents = static_cast<std::int64_t>(v->get_uint64());
  else return std::nullopt;
  // Below 10^12 USD: what numeric(18,6) holds.
  if (cents < 0 || cents > pricing::max_request_micros / micros_per_cent * 100) return std::nullopt;
  return cents * micros_per_cent;
}

void record(Event& e, std::string outcome, std::string note) {
  e.action = Action::record;
  e.outcome = std::move(outcome);
  e.note = std::move(note);
}

void checkout_session(Event& e, const json::object* s) {
  e.object_id = string_of(s, "id");
  e.payment_intent = id_of(s, "payment_intent");
  const std::string mode = string_of(s, "mode");
  if (!mode.empty() && mode != "payment")
    return record(e, "unhandled", "a Checkout Session in mode " + mode.substr(0, 40) + ", not payment");
  if (e.type == "checkout.session.completed" && string_of(s, "payment_status") != "paid")
    return record(e, "ignored", "payment_status is not paid (an async payment is credited when it succeeds)");
  const std::string currency = string_of(s, "currency");
  if (currency != "usd") return record(e, "unhandled", "currency " + currency.substr(0, 16) + ", not usd");
  e.account_ref = string_of(s, "client_reference_id");
  const json::value* metadata = field(s, "metadata");
  const json::object* meta = metadata && metadata->is_object() ? &metadata->get_object() : nullptr;
  if (e.account_ref.empty()) e.account_ref = string_of(meta, "tollgate_account");
  if (e.account_ref.size() > 320) e.account_ref.resize(320);  // longer than any uuid or email
  if (const json::value* credits = field(meta, "credits_usd")) {
    // Metadata values are strings; a decimal USD amount with at most 6 decimals, above 0.
    const std::string text = credits->is_string() ? std::string(credits->get_string()) : std::string();
    auto micros = pricing::parse_decimal(text, 6);
    auto picos = pricing::parse_decimal(text, 12);
    if (!micros || !picos || *picos != *micros * pricing::picos_per_micro || *micros <= 0 ||
        *micros >= pricing::max_request_micros)
      return record(e, "invalid", "metadata.credits_usd is not a positive USD amount with at most 6 decimals");
    e.amount = *micros;
  } else {
    auto total = cents_of(s, "amount_total");
    if (!total) return record(e, "invalid", "no amount_total in cents");
    if (*total == 0) return record(e, "ignored", "amount_total is 0");
    e.amount = *total;
  }
  e.action = Action::credit;
}

void charge_refunded(Event& e, const json::object* c) {
  e.object_id = string_of(c, "id");
  e.payment_intent = id_of(c, "payment_intent");
  const std::string currency = string_of(c, "currency");
  if (currency != "usd") return record(e, "unhandled", "currency " + currency.substr(0, 16) + ", not usd");
  auto refunded = cents_of(c, "amount_refunded");
  if (!refunded) return record(e, "invalid", "no amount_refunded in cents");
  if (e.payment_intent.empty()) return record(e, "unmatched", "the charge has no payment_intent");
  e.amount = *refunded;
  e.charge_amount = cents_of(c, "amount").value_or(0);
  e.action = Action::refund;
}

}  // namespace

std::optional<Event> interpret_event(std::string_view body, std::string& error) {
  json::error_code ec;
  json::value doc = json::parse(body, ec);
  if (ec || !doc.is_object()) {
    error = "The body is not a JSON object.";
    return std::nullopt;
  }
  const json::object& root = doc.get_object();
  Event e;
  e.id = string_of(&root, "id");
  e.type = string_of(&root, "type");
  if (e.id.empty() || e.id.size() > 255 || e.type.empty() || e.type.size() > 255) {
    error = "The body is not a Stripe event: no string id and type.";
    return std::nullopt;
  }
  if (const json::value* c = root.if_contains("created"); c && c->is_int64()) e.created = c->get_int64();
  const json::value* data = root.if_contains("data");
  const json::value* object = data && data->is_object() ? data->get_object().if_contains("object") : nullptr;
  const json::object* obj = object && object->is_object() ? &object->get_object() : nullptr;
  if (e.type == "checkout.session.completed" || e.type == "checkout.session.async_payment_succeeded")
    checkout_session(e, obj);
  else if (e.type == "charge.refunded")
    charge_refunded(e, obj);
  else if (e.type == "invoice.paid")
    record(e, "unhandled", "plans and allowances are not built yet (issue 14 part 3)");
  else
    record(e, "unhandled", "tollgate does not act on this event type");
  return e;
}

}  // namespace tollgate::stripe
