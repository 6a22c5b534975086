#pragma once
// Helpers shared by admission.cpp (scripts, settle) and admit.cpp (the admit path).
#include "ratelimit/redis_client.hpp"

#include <cstdint>

namespace tollgate::ratelimit::detail {

/// Wall-clock time in ms since the Unix epoch: the clock admit.lua's windows are cut on.
std::int64_t now_ms();
/// An integer reply's value; 0 for any other type.
std::int64_t as_int(const RedisReply& r);

}  // namespace tollgate::ratelimit::detail
