#pragma once
// What a verified Stripe event asks tollgate to do (issue 14), decided from its JSON alone: a
// pure function, so the unit tests cover every branch. The fields read are Stripe's API
// objects (docs.stripe.com/api/events/object, …/checkout/sessions/object, …/charges/object):
//
//   event:             id "evt_…", type, created (Unix s), data.object
//   checkout.session:  id "cs_…", mode, payment_status ("paid" | "unpaid" | "no_payment_required"),
//                      amount_total (cents), currency ("usd"), client_reference_id,
//                      metadata.tollgate_account, metadata.credits_usd, payment_intent "pi_…"
//   charge:            id "ch_…", amount (cents), amount_refunded (cents, cumulative over the
//                      charge's refunds), currency, payment_intent "pi_…"
//
// The money moves in Postgres (tollgate_stripe_event(), sql/migrations/0011_stripe.sql), in the
// transaction that records the event id, so that a replay does nothing.
#include "pricing/money.hpp"

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace tollgate::stripe {

/// What to do with an event.
enum class Action {
  credit,  ///< a paid Checkout Session: add `amount` to the account named by `account_ref`
  refund,  ///< a refunded charge: take back what `amount_refunded` says, from its purchase
  record,  ///< nothing but the stripe_events row, with `outcome`
};

/// The SQL function's name for an action: "credit", "refund" or "record".
std::string_view to_string(Action a) noexcept;

struct Event {
  std::string id;            ///< "evt_…" (stripe_events.id: the idempotency key)
  std::string type;          ///< "checkout.session.completed", …
  std::int64_t created = 0;  ///< Unix seconds (Stripe's event.created); 0 when absent
  Action action = Action::record;
  /// For Action::record: 'unhandled' (a type, mode or currency tollgate does not act on),
  /// 'ignored' (a known event with nothing to do: an unpaid session), 'invalid' (a session
  /// whose metadata.credits_usd is not a positive USD amount with at most 6 decimals, or no
  /// amount in cents) or 'unmatched' (a refunded charge without a payment_intent).
  std::string outcome;
  std::string note;                  ///< why, in a few words (stripe_events.note)
  std::string account_ref;           ///< credit: a users.id uuid or an email; "" when none given
  /// credit: the credit units (1e-6 USD) to add — metadata.credits_usd, else amount_total cents
  /// × 10,000. refund: the charge's cumulative amount_refunded, in credit units.
  pricing::Micros amount = 0;
  pricing::Micros charge_amount = 0;  ///< refund: the charge's amount, in credit units (0: absent)
  std::string object_id;              ///< data.object.id ("cs_…", "ch_…")
  std::string payment_intent;         ///< "pi_…" of the session or the charge ("" when none)
};

/// Reads a verified event body. nullopt (and `error` set to a sentence) when it is not JSON, or
/// not an object with a string `id` and `type`: the webhook answers 400. Every other shape is an
/// Event, of Action::record when tollgate does not act on it. Never throws.
std::optional<Event> interpret_event(std::string_view body, std::string& error);

}  // namespace tollgate::stripe
