#include "routing/secret.hpp"

#include <cstdlib>
#include <fstream>
#include <iterator>
#include <stdexcept>

namespace tollgate::routing {

namespace {
constexpr std::size_t max_key_file_bytes = 64 * 1024;

bool is_name_start(char c) { return c == '_' || (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'); }
bool is_name_char(char c) { return is_name_start(c) || (c >= '0' && c <= '9'); }
bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

std::string_view trim(std::string_view s) {
  while (!s.empty() && is_space(s.front())) s.remove_prefix(1);
  while (!s.empty() && is_space(s.back())) s.remove_suffix(1);
  return s;
}

KeyResolution fail(std::string_view ref, std::string_view why) {
  return KeyResolution{std::nullopt, fmt::format("api_key_ref {} {}", ref, why)};
}

/// A key goes into "Authorization: Bearer <key>": no control characters (CR/LF would split the
/// header) and no spaces.
bool usable_as_bearer(std::string_view key) {
  for (unsigned char c : key)
    if (c < 0x21 || c == 0x7f) return false;
  return true;
}
}  // namespace

void check_key_ref(std::string_view ref) {
  if (ref.starts_with("env:")) {
    auto name = ref.substr(4);
    bool ok = !name.empty() && is_name_start(name.front());
    for (char c : name) ok = ok && is_name_char(c);
    if (ok) return;
    throw std::invalid_argument(fmt::format("api_key_ref {}: env: needs a variable name ([A-Za-z_][A-Za-z0-9_]*)", ref));
  }
  if (ref.starts_with("file:/")) {
    for (char c : ref)
      if (is_space(c)) throw std::invalid_argument(fmt::format("api_key_ref {}: a file path without spaces", ref));
    return;
  }
  throw std::invalid_argument(fmt::format("api_key_ref {} must be env:NAME or file:/absolute/path", ref));
}

KeyResolution resolve_key_ref(std::string_view ref) {
  check_key_ref(ref);
  std::string value;
  if (ref.starts_with("env:")) {
    const char* v = std::getenv(std::string(ref.substr(4)).c_str());
    if (!v) return fail(ref, "is not set");
    value = trim(v);
  } else {
    std::ifstream in(std::string(ref.substr(5)), std::ios::binary);
    if (!in) return fail(ref, "cannot be read");
    std::string content;
    content.resize(max_key_file_bytes + 1);
    in.read(content.data(), static_cast<std::streamsize>(content.size()));
    if (in.bad()) return fail(ref, "cannot be read");
    content.resize(static_cast<std::size_t>(in.gcount()));
    if (content.size() > max_key_file_bytes) return fail(ref, "is longer than 64 KiB");
    value = trim(content);
  }
  if (value.empty()) return fail(ref, "is empty");
  if (!usable_as_bearer(value)) return fail(ref, "holds spaces or control characters");
  return KeyResolution{Secret(std::move(value)), {}};
}

}  // namespace tollgate::routing
