#pragma once
// FUZZ_CHECK(cond): an invariant of a fuzz target. When it fails, prints the condition and aborts,
// which libFuzzer reports as a crash (with the input saved) and the replay ctest as a failure.
// Unlike assert(), it is active in Release builds.
#include <cstdio>
#include <cstdlib>

namespace tollgate::fuzz {

[[noreturn]] inline void invariant_failed(const char* what, const char* file, int line) {
  std::fprintf(stderr, "%s:%d: fuzz invariant failed: %s\n", file, line, what);
  std::abort();
}

}  // namespace tollgate::fuzz

#define FUZZ_CHECK(cond) ((cond) ? (void)0 : ::tollgate::fuzz::invariant_failed(#cond, __FILE__, __LINE__))
