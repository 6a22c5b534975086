#pragma once
// Stripe webhook signatures (issue 14), pure and without I/O so that the unit tests drive every
// case. The wire format (Stripe docs "Check the webhook signatures", stripe-node
// src/Webhooks.ts parseHeader/verifyHeader; ../shared/reference/WIRE.md "Stripe webhooks"):
//
//   Stripe-Signature: t=<unix seconds>,v1=<hex HMAC>[,v1=<hex HMAC>…][,v0=…]
//
// The header is split on ',' and each element on its first '='. `t` is the time Stripe signed
// the delivery; every `v1` is hex(HMAC-SHA256(key = the endpoint secret "whsec_…" as its bytes,
// message = "<t>.<raw body>")). Stripe sends several v1 while an endpoint's secret is rolled;
// other schemes (v0: test mode's legacy scheme) are ignored. Stripe's libraries reject only old
// timestamps; tollgate rejects |now − t| > tolerance in both directions (a signature from the
// future is as suspect as a replayed one).
#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace tollgate::stripe {

/// Stripe's default tolerance (stripe-node Webhook.DEFAULT_TOLERANCE): 300 s.
inline constexpr std::chrono::seconds default_tolerance{300};

/// The parts of a Stripe-Signature header tollgate uses.
struct SignatureHeader {
  std::optional<std::int64_t> timestamp;  ///< `t`, Unix seconds (the last `t` if several, as stripe-node)
  std::vector<std::string> v1;            ///< every `v1` value, in order (hex as sent)
};

/// Splits a Stripe-Signature value as stripe-node does (',' then the first '='; unknown keys
/// and elements without '=' are skipped). `t` must be 1–15 decimal digits, else the header has
/// no timestamp. Never throws.
SignatureHeader parse_signature_header(std::string_view header);

/// hex(HMAC-SHA256(key, message)), lower case, 64 characters (OpenSSL).
std::string hmac_sha256_hex(std::string_view key, std::string_view message);

/// Equal length and bytes, in time independent of where they differ (OpenSSL's CRYPTO_memcmp;
/// only the length, which is public — 64 hex digits — can end it early).
bool constant_time_equal(std::string_view a, std::string_view b) noexcept;

/// Why a delivery was refused.
enum class SignatureError {
  none,
  missing_header,     ///< no Stripe-Signature
  no_timestamp,       ///< no (valid) t=
  no_v1,              ///< no v1= signature
  no_match,           ///< no v1 matches any configured secret
  timestamp_too_old,  ///< now − t > tolerance
  timestamp_in_future ///< t − now > tolerance
};

/// A short English sentence for an error (the 400 reply's message; never names a secret).
std::string_view describe(SignatureError e) noexcept;

/// The comparison used on every candidate signature; replaceable in tests to check that the
/// constant-time one is what runs and that every v1 is tried.
using CompareFn = std::function<bool(std::string_view, std::string_view)>;

/// Verifies a delivery: some v1 equals hmac_sha256_hex(secret, "<t>.<body>") for some of
/// `secrets` (rotation: any configured secret is accepted), compared with `compare`, and
/// |now − t| ≤ tolerance (seconds). The signature is checked before the time, as Stripe's
/// libraries do. `now_unix`: the current Unix time in seconds.
SignatureError verify_signature(std::optional<std::string_view> header, std::string_view body,
                                std::span<const std::string> secrets, std::int64_t now_unix,
                                std::chrono::seconds tolerance = default_tolerance,
                                const CompareFn& compare = constant_time_equal);

}  // namespace tollgate::stripe
