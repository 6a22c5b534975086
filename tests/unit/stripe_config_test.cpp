// [stripe] in the TOML file and TOLLGATE_STRIPE_WEBHOOK_SECRETS (proxy/config.hpp).
#include "proxy/config.hpp"

#include <catch2/catch.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <unistd.h>

using tollgate::Config;

namespace {
/// A TOML file with `text`, removed at scope exit; the environment variable unset meanwhile.
struct TomlFile {
  std::filesystem::path path;
  explicit TomlFile(const std::string& text) {
    path = std::filesystem::temp_directory_path() / ("tollgate-stripe-config-" + std::to_string(::getpid()) + ".toml");
    std::ofstream(path) << text;
    ::unsetenv("TOLLGATE_STRIPE_WEBHOOK_SECRETS");
  }
  ~TomlFile() {
    std::filesystem::remove(path);
    ::unsetenv("TOLLGATE_STRIPE_WEBHOOK_SECRETS");
  }
};
}  // namespace

TEST_CASE("stripe config: defaults, TOML list, environment override") {
  {
    TomlFile f("");
    Config c = Config::load(f.path.string());
    CHECK(c.stripe_webhook_secrets.empty());
    CHECK(c.stripe_tolerance == std::chrono::seconds(300));
    CHECK(c.stripe_max_body_bytes == 1u << 20);
  }
  {
    TomlFile f("[stripe]\nwebhook_secrets = [\"whsec_a\", \"whsec_b\"]\ntolerance_s = 60\n");
    Config c = Config::load(f.path.string());
    CHECK(c.stripe_webhook_secrets == std::vector<std::string>{"whsec_a", "whsec_b"});
    CHECK(c.stripe_tolerance == std::chrono::seconds(60));
    ::setenv("TOLLGATE_STRIPE_WEBHOOK_SECRETS", " whsec_env1 ,,whsec_env2", 1);
    Config e = Config::load(f.path.string());
    CHECK(e.stripe_webhook_secrets == std::vector<std::string>{"whsec_env1", "whsec_env2"});  // replaces the list
    ::setenv("TOLLGATE_STRIPE_WEBHOOK_SECRETS", "", 1);
    CHECK(Config::load(f.path.string()).stripe_webhook_secrets.empty());
  }
}

TEST_CASE("stripe config: bad values are refused without showing a secret") {
  for (const char* text : {"[stripe]\nwebhook_secrets = \"whsec_a\"\n", "[stripe]\nwebhook_secrets = [1]\n",
                           "[stripe]\nwebhook_secrets = [\"whsec_a b\"]\n", "[stripe]\nwebhook_secrets = [\"\"]\n",
                           "[stripe]\ntolerance_s = 0\n", "[stripe]\nmax_body_bytes = 10\n"}) {
    TomlFile f(text);
    INFO(text);
    try {
      Config::load(f.path.string());
      FAIL("accepted");
    } catch (const std::exception& e) {
      CHECK(std::string(e.what()).find("whsec_a") == std::string::npos);
    }
  }
}
