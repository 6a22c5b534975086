#include "keys/api_key.hpp"

#include <catch2/catch.hpp>

#include <set>

using namespace tollgate::keys;

TEST_CASE("generated keys have the tollgate shape and a valid checksum") {
  std::set<std::string> seen;
  for (int i = 0; i < 200; ++i) {
    auto k = generate_key();
    REQUIRE(k.raw.size() == key_length);
    REQUIRE(k.raw.rfind("tg_", 0) == 0);
    REQUIRE(is_well_formed(k.raw));
    REQUIRE(k.hash_hex == hash_key(k.raw));
    REQUIRE(k.display_prefix == k.raw.substr(0, key_display_prefix_chars));
    REQUIRE(seen.insert(k.raw).second);
  }
}

TEST_CASE("a single changed character breaks the checksum") {
  auto k = generate_key().raw;
  for (std::size_t i = 3; i < k.size(); ++i) {
    std::string bad = k;
    bad[i] = bad[i] == 'a' ? 'b' : 'a';
    CHECK_FALSE(is_well_formed(bad));
  }
}

TEST_CASE("malformed keys are rejected") {
  auto k = generate_key().raw;
  CHECK_FALSE(is_well_formed(""));
  CHECK_FALSE(is_well_formed("sk-" + k.substr(3)));
  CHECK_FALSE(is_well_formed(k.substr(0, k.size() - 1)));
  CHECK_FALSE(is_well_formed(k + "0"));
  std::string with_symbol = k;
  with_symbol[10] = '-';
  CHECK_FALSE(is_well_formed(with_symbol));
}

TEST_CASE("SHA-256 hash is the standard digest in lowercase hex") {
  // Known vector: SHA-256("abc").
  CHECK(hash_key("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST_CASE("bearer token extraction") {
  CHECK(bearer_token("Bearer tg_abc") == std::optional<std::string_view>("tg_abc"));
  CHECK(bearer_token("bearer  tg_abc ") == std::optional<std::string_view>("tg_abc"));
  CHECK_FALSE(bearer_token("Basic dXNlcjpwYXNz"));
  CHECK_FALSE(bearer_token("Bearer "));
  CHECK_FALSE(bearer_token(""));
}
