#pragma once
// An upstream's API key, and where it comes from. The key is held in a Secret, whose every
// formatted form (fmt, spdlog, iostreams) is "[redacted]": a Secret that reaches a log line, a
// metric or an error message shows nothing. Only reveal() gives the value, for the one place that
// writes it to the upstream (the Authorization header).
#include <fmt/format.h>

#include <optional>
#include <ostream>
#include <string>
#include <string_view>

namespace tollgate::routing {

/// A secret string: formats as "[redacted]" everywhere.
class Secret {
 public:
  static constexpr std::string_view redacted = "[redacted]";
  Secret() = default;
  explicit Secret(std::string value) : value_(std::move(value)) {}
  /// The value itself: for the upstream request's Authorization header only.
  const std::string& reveal() const { return value_; }
  bool empty() const { return value_.empty(); }
  friend std::ostream& operator<<(std::ostream& o, const Secret&) { return o << redacted; }

 private:
  std::string value_;
};

/// The result of reading a key ref: the key, or why not (the message names the ref and never
/// holds the value).
struct KeyResolution {
  std::optional<Secret> key;
  std::string error;  ///< set when !key, e.g. "api_key_ref env:OPENROUTER_KEY is not set"
};

/// Checks the form of an `upstreams.api_key_ref`: `env:NAME` (NAME a shell variable name) or
/// `file:/absolute/path` (no whitespace). Throws std::invalid_argument naming the ref.
void check_key_ref(std::string_view ref);

/// Reads a key ref now: `env:NAME` from the process environment, `file:/path` from the file
/// (whole file, ASCII whitespace trimmed at both ends, at most 64 KiB). Unset, empty,
/// unreadable, too long, or a value holding a control character (it goes into an HTTP header)
/// give an error instead of a key. Never throws for a bad value; throws std::invalid_argument
/// for a malformed ref (as check_key_ref).
KeyResolution resolve_key_ref(std::string_view ref);

}  // namespace tollgate::routing

template <>
struct fmt::formatter<tollgate::routing::Secret> : fmt::formatter<std::string_view> {
  template <class Ctx>
  auto format(const tollgate::routing::Secret&, Ctx& ctx) const {
    return fmt::formatter<std::string_view>::format(tollgate::routing::Secret::redacted, ctx);
  }
};
