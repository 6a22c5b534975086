#include "keys/api_key.hpp"
#include "keys/key_filter.hpp"

#include <catch2/catch.hpp>

#include <string>

using namespace tollgate::keys;

namespace {
void fill_range(const KeyFilter::AddFn& add, int from, int to) {
  for (int i = from; i < to; ++i) add(hash_key("key-" + std::to_string(i)));
}
}  // namespace

TEST_CASE("KeyFilter: lets everything through until loaded") {
  KeyFilter f;
  CHECK_FALSE(f.ready());
  CHECK(f.might_contain(hash_key("anything")));
  CHECK(f.might_contain("not even a hash"));
  f.add(hash_key("before the load"));  // ignored: the load brings every key
  CHECK(f.size() == 0);
}

TEST_CASE("KeyFilter: every loaded key is found, no other key is") {
  KeyFilter f;
  const int n = 100'000;
  f.load(n, [&](const KeyFilter::AddFn& add) { fill_range(add, 0, n); }, 0);
  REQUIRE(f.ready());
  CHECK(f.size() == n);
  int missing = 0, false_positives = 0;
  for (int i = 0; i < n; ++i) missing += !f.might_contain(hash_key("key-" + std::to_string(i)));
  for (int i = 0; i < 200'000; ++i) false_positives += f.might_contain(hash_key("other-" + std::to_string(i)));
  CHECK(missing == 0);
  CHECK(false_positives == 0);  // n / 2^64 per probe
}

TEST_CASE("KeyFilter: more keys than expected, keys added later, malformed hashes, reload") {
  KeyFilter f;
  // Expected 10, loaded 5,000: the table grows while filling.
  f.load(10, [&](const KeyFilter::AddFn& add) { fill_range(add, 0, 5000); }, 0);
  CHECK(f.size() == 5000);
  for (int i = 0; i < 5000; ++i) REQUIRE(f.might_contain(hash_key("key-" + std::to_string(i))));
  // Added one by one (NOTIFY), past several doublings.
  for (int i = 5000; i < 40'000; ++i) f.add(hash_key("key-" + std::to_string(i)));
  CHECK(f.size() == 40'000);
  for (int i = 0; i < 40'000; ++i) REQUIRE(f.might_contain(hash_key("key-" + std::to_string(i))));
  f.add(hash_key("key-7"));  // again: no duplicate
  CHECK(f.size() == 40'000);
  const std::string h = hash_key("created-later");
  CHECK_FALSE(f.might_contain(h));
  CHECK_FALSE(f.might_contain("zz" + h.substr(2)));  // not hex: never a key
  CHECK_FALSE(f.might_contain(h.substr(1)));         // wrong length
  f.load(10, [&](const KeyFilter::AddFn& add) { fill_range(add, 0, 10); });
  CHECK(f.size() == 10);
  CHECK_FALSE(f.might_contain(hash_key("key-20")));  // deleted keys leave at the next load
  CHECK(f.might_contain(hash_key("key-3")));
}
