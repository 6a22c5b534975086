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
}

TEST_CASE("KeyFilter: no false negatives, about 1 % false positives at capacity") {
  KeyFilter f;
  const int n = 50'000;
  // Sized for exactly 2n keys; filled to capacity (2n) to check the design bound.
  f.load(n, [&](const KeyFilter::AddFn& add) { fill_range(add, 0, 2 * n); }, 0);
  REQUIRE(f.ready());
  CHECK(f.capacity() == 2 * n);
  for (int i = 0; i < 2 * n; ++i) REQUIRE(f.might_contain(hash_key("key-" + std::to_string(i))));
  int false_positives = 0;
  const int probes = 100'000;
  for (int i = 0; i < probes; ++i) false_positives += f.might_contain(hash_key("other-" + std::to_string(i)));
  CHECK(false_positives < probes * 2 / 100);  // theory: 0.82 % with 10 bits and 7 probes per key
  CHECK(false_positives > 0);                 // it is a Bloom filter, not a set
}

TEST_CASE("KeyFilter: keys added after the load are found; a reload starts over") {
  KeyFilter f;
  f.load(10, [&](const KeyFilter::AddFn& add) { fill_range(add, 0, 10); });
  const std::string fresh = hash_key("created-later");
  CHECK_FALSE(f.might_contain(fresh));
  f.add(fresh);
  CHECK(f.might_contain(fresh));
  CHECK_FALSE(f.might_contain("zz" + fresh.substr(2)));  // not hex: never a key
  CHECK_FALSE(f.might_contain(fresh.substr(1)));         // wrong length
  f.load(10, [&](const KeyFilter::AddFn& add) { fill_range(add, 0, 10); });
  CHECK_FALSE(f.might_contain(fresh));  // deleted keys leave at the next load
  CHECK(f.might_contain(hash_key("key-3")));
}

