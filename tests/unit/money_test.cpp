#include "pricing/money.hpp"

#include <catch2/catch.hpp>

using namespace tollgate::pricing;

TEST_CASE("parse_decimal is exact and rounds finer digits up") {
  CHECK(parse_decimal("0.000015", 12) == 15'000'000);
  CHECK(parse_decimal("1", 6) == 1'000'000);
  CHECK(parse_decimal("5.25", 6) == 5'250'000);
  CHECK(parse_decimal("-1.5", 6) == -1'500'000);
  CHECK(parse_decimal("1e-5", 12) == 10'000'000);
  CHECK(parse_decimal("2.5E-06", 12) == 2'500'000);
  CHECK(parse_decimal("0.0000001", 6) == 1);          // 0.1 µUSD rounds up to 1
  CHECK(parse_decimal("0.0000010000", 6) == 1);       // trailing zeros are not rounding
  CHECK(parse_decimal("1.0000001", 6) == 1'000'001);
  CHECK(parse_decimal("-0.0000001", 6) == 0);         // toward +infinity
  CHECK(parse_decimal("123.456000000000", 12) == 123'456'000'000'000);
  CHECK_FALSE(parse_decimal("", 6));
  CHECK_FALSE(parse_decimal("abc", 6));
  CHECK_FALSE(parse_decimal("1.2.3", 6));
  CHECK_FALSE(parse_decimal("1e", 6));
  CHECK_FALSE(parse_decimal("99999999999999999999", 6));  // overflows int64 micros
}

TEST_CASE("format_micros and format_picos") {
  CHECK(format_micros(0) == "0.000000");
  CHECK(format_micros(1) == "0.000001");
  CHECK(format_micros(5'000'000) == "5.000000");
  CHECK(format_micros(-1'234'567) == "-1.234567");
  CHECK(format_picos(15'000'000) == "0.000015000000");
}

TEST_CASE("picos round up to micros") {
  CHECK(picos_to_micros_ceil(0) == 0);
  CHECK(picos_to_micros_ceil(1) == 1);
  CHECK(picos_to_micros_ceil(1'000'000) == 1);
  CHECK(picos_to_micros_ceil(1'000'001) == 2);
  CHECK(picos_to_micros_ceil(-1'500'000) == -1);
}
