// Fuzz target: the configuration (proxy/config.hpp, Config::load): a TOML file and the
// environment overrides.
//
// Input: the TOML text up to the first NUL byte (written to a temporary file, as Config::load
// reads a path); after it, NUL-separated values for TOLLGATE_LISTEN, TOLLGATE_UPSTREAM_URL,
// TOLLGATE_UPSTREAM_KEY, TOLLGATE_ADMISSION_TIMEOUT_MS, TOLLGATE_ADMISSION, TOLLGATE_REDIS_URL,
// TOLLGATE_ADMIN_LISTEN in that order (missing ones are unset). Every other TOLLGATE_* variable
// is removed at start, so the replay is the same in any environment.
//
// Invariants: a refusal is std::invalid_argument or toml::parse_error, as documented (anything else
// escapes and is reported); an accepted configuration keeps the rules load() enforces: an upstream
// host, no CR/LF/NUL in the upstream key, prompt_bytes_per_token, default_max_tokens and the
// admission timeout >= 1.
#include "proxy/config.hpp"
#include "tests/fuzz/fuzz_check.hpp"

#include <toml++/toml.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

extern char** environ;

namespace {

constexpr const char* fuzzed_env[] = {
    "TOLLGATE_LISTEN",    "TOLLGATE_UPSTREAM_URL", "TOLLGATE_UPSTREAM_KEY",  "TOLLGATE_ADMISSION_TIMEOUT_MS",
    "TOLLGATE_ADMISSION", "TOLLGATE_REDIS_URL",    "TOLLGATE_ADMIN_LISTEN"};

std::string config_path;

void remove_config_file() { std::remove(config_path.c_str()); }

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  std::vector<std::string> names;
  for (char** e = environ; *e; ++e) {
    std::string_view var(*e);
    if (var.rfind("TOLLGATE_", 0) == 0) names.emplace_back(var.substr(0, var.find('=')));
  }
  for (const auto& n : names) unsetenv(n.c_str());
  char tmpl[] = "/tmp/tollgate-config-fuzz.XXXXXX";
  int fd = mkstemp(tmpl);
  if (fd < 0) {
    std::perror("mkstemp");
    std::abort();
  }
  close(fd);
  config_path = tmpl;
  std::atexit(remove_config_file);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  std::size_t nul = in.find('\0');
  std::string_view toml_text = in.substr(0, nul);
  std::string_view env = nul == std::string_view::npos ? std::string_view() : in.substr(nul + 1);
  bool more = nul != std::string_view::npos;
  for (const char* name : fuzzed_env) {
    if (!more) {
      unsetenv(name);
      continue;
    }
    std::size_t end = env.find('\0');
    setenv(name, std::string(env.substr(0, end)).c_str(), 1);
    more = end != std::string_view::npos;
    env = more ? env.substr(end + 1) : std::string_view();
  }
  FILE* f = std::fopen(config_path.c_str(), "wb");
  FUZZ_CHECK(f != nullptr);
  if (!toml_text.empty()) FUZZ_CHECK(std::fwrite(toml_text.data(), 1, toml_text.size(), f) == toml_text.size());
  std::fclose(f);

  tollgate::Config c;
  try {
    c = tollgate::Config::load(config_path);
  } catch (const std::invalid_argument& e) {
    FUZZ_CHECK(e.what()[0] != '\0');
    return 0;
  } catch (const toml::parse_error& e) {
    FUZZ_CHECK(e.what()[0] != '\0');
    return 0;
  }
  FUZZ_CHECK(!c.upstream.host.empty());
  FUZZ_CHECK(c.upstream_key.find_first_of(std::string_view("\r\n\0", 3)) == std::string::npos);
  FUZZ_CHECK(c.prompt_bytes_per_token >= 1);
  FUZZ_CHECK(c.default_max_tokens >= 1);
  FUZZ_CHECK(c.admission.timeout.count() >= 1);
  return 0;
}
