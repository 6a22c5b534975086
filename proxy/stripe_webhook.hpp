#pragma once
// POST /webhooks/stripe (issue 14): Stripe top-ups. A row of the endpoint table
// (proxy/endpoints.cpp) with AuthPolicy::none: the Stripe-Signature header is its
// authentication (proxy/stripe_signature.hpp), checked against stripe.webhook_secrets.
#include "proxy/phase.hpp"

namespace tollgate {

/// The handler. Reads the body (at most stripe.max_body_bytes, else 413), verifies the
/// signature and its timestamp (400), reads the event (400 when not a JSON event), then applies
/// it on the lookup pool — never on the event loop — with tollgate_stripe_event()
/// (sql/migrations/0011_stripe.sql): the stripe_events row and any ledger row and balance change
/// in one transaction, so a replay does nothing. Answers 200 {"received":true} for every
/// recorded event and every replay; 503 when Postgres cannot (Stripe retries); 404 when no
/// secret is configured (the route is off, as an unknown URL is). Logs the event id, type and
/// outcome; never a secret, the signature or the payload.
net::awaitable<Step> stripe_webhook(Pipe& p, RequestCtx& ctx);

}  // namespace tollgate
