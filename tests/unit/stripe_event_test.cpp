// What tollgate does with each Stripe event (proxy/stripe_event.hpp), from its JSON alone.
#include "proxy/stripe_event.hpp"

#include <catch2/catch.hpp>

#include <string>

using namespace tollgate::stripe;

namespace {
std::string session(const std::string& fields, const std::string& type = "checkout.session.completed") {
  return R"({"id":"evt_1","object":"event","type":")" + type + R"(","created":1700000000,"data":{"object":{)" +
         R"("id":"cs_1","object":"checkout.session",)" + fields + "}}}";
}
Event must(const std::string& body) {
  std::string err;
  auto e = interpret_event(body, err);
  INFO(err);
  REQUIRE(e);
  return *e;
}
}  // namespace

TEST_CASE("a paid Checkout Session credits amount_total or metadata.credits_usd") {
  auto e = must(session(R"("mode":"payment","payment_status":"paid","amount_total":1250,"currency":"usd",)"
                        R"("client_reference_id":"a@b.test","payment_intent":"pi_1","metadata":{})"));
  CHECK(e.id == "evt_1");
  CHECK(e.created == 1700000000);
  CHECK(e.action == Action::credit);
  CHECK(e.amount == 12'500'000);  // 1250 cents = 12.50 USD
  CHECK(e.account_ref == "a@b.test");
  CHECK(e.payment_intent == "pi_1");
  CHECK(e.object_id == "cs_1");

  auto m = must(session(R"("payment_status":"paid","amount_total":1000,"currency":"usd",)"
                        R"("metadata":{"tollgate_account":"0b5c1f1e-0000-4000-8000-000000000001","credits_usd":"12.345678"},)"
                        R"("payment_intent":{"id":"pi_2","object":"payment_intent"})"));
  CHECK(m.action == Action::credit);
  CHECK(m.amount == 12'345'678);
  CHECK(m.account_ref == "0b5c1f1e-0000-4000-8000-000000000001");  // metadata when no client_reference_id
  CHECK(m.payment_intent == "pi_2");                                 // an expanded object's id

  auto a = must(session(R"("payment_status":"paid","amount_total":500,"currency":"usd","client_reference_id":"x")",
                        "checkout.session.async_payment_succeeded"));
  CHECK(a.action == Action::credit);
  CHECK(a.amount == 5'000'000);
}

TEST_CASE("Checkout Sessions tollgate does not credit are recorded with a reason") {
  auto unpaid = must(session(R"("payment_status":"unpaid","amount_total":500,"currency":"usd")"));
  CHECK(unpaid.action == Action::record);
  CHECK(unpaid.outcome == "ignored");
  auto eur = must(session(R"("payment_status":"paid","amount_total":500,"currency":"eur","client_reference_id":"x")"));
  CHECK(eur.action == Action::record);
  CHECK(eur.outcome == "unhandled");
  auto sub = must(session(R"("mode":"subscription","payment_status":"paid","amount_total":500,"currency":"usd")"));
  CHECK(sub.outcome == "unhandled");
  for (const char* bad : {R"("1.0000001")", R"("-5")", R"("0")", R"("abc")", R"(12)", R"("")"}) {
    auto e = must(session(std::string(R"("payment_status":"paid","amount_total":500,"currency":"usd",)") +
                          R"("client_reference_id":"x","metadata":{"credits_usd":)" + bad + "}"));
    INFO(bad);
    CHECK(e.action == Action::record);
    CHECK(e.outcome == "invalid");
  }
  auto no_total = must(session(R"("payment_status":"paid","currency":"usd","client_reference_id":"x")"));
  CHECK(no_total.outcome == "invalid");
  auto negative = must(session(R"("payment_status":"paid","amount_total":-1,"currency":"usd")"));
  CHECK(negative.outcome == "invalid");
  // No account named: still a credit action; Postgres records it as unknown_account.
  auto anon = must(session(R"("payment_status":"paid","amount_total":500,"currency":"usd")"));
  CHECK(anon.action == Action::credit);
  CHECK(anon.account_ref.empty());
}

TEST_CASE("charge.refunded takes back the cumulative amount_refunded") {
  auto r = must(R"({"id":"evt_r","type":"charge.refunded","data":{"object":{"id":"ch_1","amount":1250,)"
                R"("amount_refunded":500,"currency":"usd","payment_intent":"pi_1"}}})");
  CHECK(r.action == Action::refund);
  CHECK(r.amount == 5'000'000);
  CHECK(r.charge_amount == 12'500'000);
  CHECK(r.payment_intent == "pi_1");
  CHECK(r.object_id == "ch_1");
  auto eur = must(R"({"id":"evt_r","type":"charge.refunded","data":{"object":{"amount_refunded":5,"currency":"eur","payment_intent":"pi_1"}}})");
  CHECK(eur.outcome == "unhandled");
  auto no_pi = must(R"({"id":"evt_r","type":"charge.refunded","data":{"object":{"amount_refunded":5,"currency":"usd","payment_intent":null}}})");
  CHECK(no_pi.outcome == "unmatched");
}

TEST_CASE("other events are recorded, bad bodies refused") {
  auto inv = must(R"({"id":"evt_i","type":"invoice.paid","data":{"object":{}}})");
  CHECK(inv.action == Action::record);
  CHECK(inv.outcome == "unhandled");
  auto other = must(R"({"id":"evt_o","type":"customer.created"})");
  CHECK(other.outcome == "unhandled");
  std::string err;
  CHECK_FALSE(interpret_event("not json", err));
  CHECK_FALSE(err.empty());
  CHECK_FALSE(interpret_event("[1,2]", err));
  CHECK_FALSE(interpret_event(R"({"type":"x"})", err));
  CHECK_FALSE(interpret_event(R"({"id":5,"type":"x"})", err));
  CHECK_FALSE(interpret_event(R"({"id":"evt","type":"x"} trailing)", err));
}
