#pragma once
// Helpers shared by admission.cpp (scripts, settle) and admit.cpp (the admit path).
#include "ratelimit/redis_client.hpp"

#include <cstdint>

namespace tollgate::ratelimit::detail {

/// Wall-clock time in ms since the Unix epoch: the clock admit.lua's windows and the spend
/// limits' periods are cut on (plus the test offset below).
std::int64_t now_ms();
/// Tests only: moves now_ms() by `offset_ms` (a spend period boundary without waiting for
/// midnight). 0 in production; never set by tollgate itself.
void set_clock_offset_for_tests(std::int64_t offset_ms);
/// An integer reply's value; 0 for any other type.
std::int64_t as_int(const RedisReply& r);

}  // namespace tollgate::ratelimit::detail
