#include "proxy/stripe_signature.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <algorithm>
#include <cstdlib>

namespace tollgate::stripe {

SignatureHeader parse_signature_header(std::string_view header) {
  SignatureHeader h;
  while (!header.empty()) {
    auto comma = header.find(',');
    std::string_view item = header.substr(0, comma);
    header = comma == std::string_view::npos ? std::string_view{} : header.substr(comma + 1);
    auto eq = item.find('=');
    if (eq == std::string_view::npos) continue;
    std::string_view key = item.substr(0, eq), value = item.substr(eq + 1);
    if (key == "t") {
      // Digits only (no sign, no spaces): a header whose t is not a plain number has none.
      bool digits = !value.empty() && value.size() <= 15 &&
                    std::all_of(value.begin(), value.end(), [](char c) { return c >= '0' && c <= '9'; });
      h.timestamp = digits ? std::optional<std::int64_t>(std::strtoll(std::string(value).c_str(), nullptr, 10))
                           : std::nullopt;
    } else if (key == "v1") {
      h.v1.emplace_back(value);
    }
  }
  return h;
}

std::string hmac_sha256_hex(std::string_view key, std::string_view message) {
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(message.data()),
       message.size(), mac, &len);
  static constexpr char hex[] = "0123456789abcdef";
  std::string out;
  out.reserve(2 * len);
  for (unsigned int i = 0; i < len; ++i) {
    out.push_back(hex[mac[i] >> 4]);
    out.push_back(hex[mac[i] & 0xf]);
  }
  return out;
}

bool constant_time_equal(std::string_view a, std::string_view b) noexcept {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

std::string_view describe(SignatureError e) noexcept {
  switch (e) {
    case SignatureError::none: return "The signature is valid.";
    case SignatureError::missing_header: return "No Stripe-Signature header was provided.";
    case SignatureError::no_timestamp: return "Unable to extract the timestamp (t=) from the Stripe-Signature header.";
    case SignatureError::no_v1: return "No signatures found with the expected scheme (v1) in the Stripe-Signature header.";
    case SignatureError::no_match: return "No signatures found matching the expected signature for the payload.";
    case SignatureError::timestamp_too_old: return "The Stripe-Signature timestamp is outside the tolerance zone (too old).";
    case SignatureError::timestamp_in_future:
      return "The Stripe-Signature timestamp is outside the tolerance zone (in the future).";
  }
  return "Invalid Stripe-Signature.";
}

SignatureError verify_signature(std::optional<std::string_view> header, std::string_view body,
                                std::span<const std::string> secrets, std::int64_t now_unix,
                                std::chrono::seconds tolerance, const CompareFn& compare) {
  if (!header || header->empty()) return SignatureError::missing_header;
  SignatureHeader h = parse_signature_header(*header);
  if (!h.timestamp) return SignatureError::no_timestamp;
  if (h.v1.empty()) return SignatureError::no_v1;
  std::string signed_payload = std::to_string(*h.timestamp);
  signed_payload.push_back('.');
  signed_payload.append(body);
  bool match = false;
  // Every secret against every v1, without stopping at the first match: the time taken does not
  // tell which secret or which candidate matched.
  for (const std::string& secret : secrets) {
    const std::string expected = hmac_sha256_hex(secret, signed_payload);
    for (const std::string& candidate : h.v1) match = compare(expected, candidate) | match;
  }
  if (!match) return SignatureError::no_match;
  const std::int64_t age = now_unix - *h.timestamp;
  if (age > tolerance.count()) return SignatureError::timestamp_too_old;
  if (-age > tolerance.count()) return SignatureError::timestamp_in_future;
  return SignatureError::none;
}

}  // namespace tollgate::stripe
