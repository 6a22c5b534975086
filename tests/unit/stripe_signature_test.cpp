// Stripe-Signature verification (proxy/stripe_signature.hpp). The HMAC vectors were computed with
//   printf '%s' '<t>.<body>' | openssl dgst -sha256 -hmac '<secret>'
// and RFC 4231 test case 2.
#include "proxy/stripe_signature.hpp"

#include <catch2/catch.hpp>

#include <string>
#include <vector>

using namespace tollgate::stripe;

namespace {
constexpr std::int64_t t0 = 1'700'000'000;
const std::string body = R"({"id":"evt_test","object":"event"})";
const std::string secret = "whsec_test_secret";
const std::string rotated = "whsec_rotated";
// openssl dgst -sha256 -hmac whsec_test_secret over "1700000000.<body>"
const std::string sig = "8042376f6ca064adbe037642a718227dfd59047137eb49497a54c49eb0cfb724";
// the same with whsec_rotated
const std::string sig_rotated = "a266bb7202b24f898e7fc3e3deb48fd925d582c0b56f5f4c90b3d64bbec2472d";

std::string header(std::int64_t t, std::initializer_list<std::string> v1s) {
  std::string h = "t=" + std::to_string(t);
  for (const auto& s : v1s) h += ",v1=" + s;
  return h;
}
}  // namespace

TEST_CASE("hmac_sha256_hex matches RFC 4231 and openssl dgst") {
  CHECK(hmac_sha256_hex("Jefe", "what do ya want for nothing?") ==
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  CHECK(hmac_sha256_hex(secret, std::to_string(t0) + "." + body) == sig);
  CHECK(hmac_sha256_hex(rotated, std::to_string(t0) + "." + body) == sig_rotated);
}

TEST_CASE("parse_signature_header splits as stripe-node does") {
  auto h = parse_signature_header("t=1700000000,v1=aa,v0=bb,v1=cc,junk,x=y");
  REQUIRE(h.timestamp);
  CHECK(*h.timestamp == t0);
  CHECK(h.v1 == std::vector<std::string>{"aa", "cc"});  // v0 and unknown keys ignored

  CHECK(parse_signature_header("v1=aa").timestamp == std::nullopt);
  CHECK(parse_signature_header("t=,v1=aa").timestamp == std::nullopt);
  CHECK(parse_signature_header("t=12x,v1=aa").timestamp == std::nullopt);
  CHECK(parse_signature_header("t=-5,v1=aa").timestamp == std::nullopt);
  CHECK(parse_signature_header("t=9999999999999999,v1=aa").timestamp == std::nullopt);  // 16 digits
  CHECK(parse_signature_header("t=1700000000").v1.empty());
  CHECK(parse_signature_header("").v1.empty());
  // A value holding '=' keeps everything after the first one.
  CHECK(parse_signature_header("t=1,v1=a=b").v1 == std::vector<std::string>{"a=b"});
  // Keys are exact: " v1" (a space after the comma) is another key.
  CHECK(parse_signature_header("t=1, v1=aa").v1.empty());
  // The last t wins, as in stripe-node's reduce.
  CHECK(*parse_signature_header("t=1,t=2,v1=aa").timestamp == 2);
}

TEST_CASE("verify_signature accepts a valid delivery and refuses a wrong one") {
  const std::vector<std::string> secrets{secret};
  CHECK(verify_signature(header(t0, {sig}), body, secrets, t0) == SignatureError::none);
  CHECK(verify_signature(std::nullopt, body, secrets, t0) == SignatureError::missing_header);
  CHECK(verify_signature(std::string_view(""), body, secrets, t0) == SignatureError::missing_header);
  CHECK(verify_signature("v1=" + sig, body, secrets, t0) == SignatureError::no_timestamp);
  CHECK(verify_signature("t=1700000000,v0=" + sig, body, secrets, t0) == SignatureError::no_v1);
  // Tampered body, wrong secret, another timestamp signed with the same bytes, upper-case hex.
  CHECK(verify_signature(header(t0, {sig}), body + " ", secrets, t0) == SignatureError::no_match);
  CHECK(verify_signature(header(t0, {sig}), body, std::vector<std::string>{"whsec_other"}, t0) ==
        SignatureError::no_match);
  CHECK(verify_signature(header(t0 + 1, {sig}), body, secrets, t0) == SignatureError::no_match);
  std::string upper = sig;
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  CHECK(verify_signature(header(t0, {upper}), body, secrets, t0) == SignatureError::no_match);
  CHECK(verify_signature(header(t0, {sig.substr(0, 63)}), body, secrets, t0) == SignatureError::no_match);
  CHECK(verify_signature(header(t0, {sig}), body, std::vector<std::string>{}, t0) == SignatureError::no_match);
}

TEST_CASE("verify_signature: any of several v1 may match") {
  const std::vector<std::string> secrets{secret};
  std::string wrong(64, '0');
  CHECK(verify_signature(header(t0, {wrong, sig}), body, secrets, t0) == SignatureError::none);
  CHECK(verify_signature(header(t0, {sig, wrong}), body, secrets, t0) == SignatureError::none);
  CHECK(verify_signature(header(t0, {wrong, wrong}), body, secrets, t0) == SignatureError::no_match);
  // A v0 carrying the right value does not count.
  CHECK(verify_signature("t=1700000000,v0=" + sig + ",v1=" + wrong, body, secrets, t0) == SignatureError::no_match);
}

TEST_CASE("verify_signature: the timestamp must be within the tolerance, both ways") {
  const std::vector<std::string> secrets{secret};
  auto at = [&](std::int64_t now, std::chrono::seconds tol = default_tolerance) {
    return verify_signature(header(t0, {sig}), body, secrets, now, tol);
  };
  CHECK(at(t0 + 300) == SignatureError::none);
  CHECK(at(t0 + 301) == SignatureError::timestamp_too_old);
  CHECK(at(t0 - 300) == SignatureError::none);
  CHECK(at(t0 - 301) == SignatureError::timestamp_in_future);
  CHECK(at(t0 + 10, std::chrono::seconds(5)) == SignatureError::timestamp_too_old);
  CHECK(at(t0 - 10, std::chrono::seconds(5)) == SignatureError::timestamp_in_future);
  CHECK(at(t0 + 5, std::chrono::seconds(5)) == SignatureError::none);
  // A bad signature is reported as such whatever its time (nothing learned from the clock).
  CHECK(verify_signature(header(t0, {std::string(64, 'a')}), body, secrets, t0 + 1000) == SignatureError::no_match);
}

TEST_CASE("verify_signature: secret rotation accepts each configured secret") {
  const std::vector<std::string> both{secret, rotated};
  CHECK(verify_signature(header(t0, {sig}), body, both, t0) == SignatureError::none);
  CHECK(verify_signature(header(t0, {sig_rotated}), body, both, t0) == SignatureError::none);
  // During a roll Stripe signs with both; either secret alone verifies that header.
  CHECK(verify_signature(header(t0, {sig_rotated, sig}), body, std::vector<std::string>{secret}, t0) ==
        SignatureError::none);
  CHECK(verify_signature(header(t0, {sig_rotated}), body, std::vector<std::string>{secret}, t0) ==
        SignatureError::no_match);
}

TEST_CASE("verify_signature compares with the constant-time comparison, every candidate") {
  CHECK(constant_time_equal(sig, sig));
  CHECK_FALSE(constant_time_equal(sig, sig_rotated));
  CHECK_FALSE(constant_time_equal(sig, sig.substr(0, 63)));
  CHECK_FALSE(constant_time_equal("", "a"));
  CHECK(constant_time_equal("", ""));
  // The default comparison is constant_time_equal: with a comparison that records its calls,
  // every (secret, v1) pair is compared, even after a match (no early exit revealing which).
  int calls = 0;
  CompareFn counting = [&](std::string_view a, std::string_view b) {
    ++calls;
    return constant_time_equal(a, b);
  };
  const std::vector<std::string> both{secret, rotated};
  std::string wrong(64, '0');
  CHECK(verify_signature(header(t0, {sig, wrong, sig_rotated}), body, both, t0, default_tolerance, counting) ==
        SignatureError::none);
  CHECK(calls == 6);
  // A comparison that never matches makes a valid header fail: the verdict comes from it.
  CompareFn never = [](std::string_view, std::string_view) { return false; };
  CHECK(verify_signature(header(t0, {sig}), body, both, t0, default_tolerance, never) == SignatureError::no_match);
}
