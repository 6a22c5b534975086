#!/usr/bin/env bash
# Builds the libFuzzer targets (clang, ASan + UBSan, in build-fuzz/) and runs each for a bounded
# time, one after the other, then prints executions and coverage per target.
#
#   bash tests/fuzz/run.sh [--merge] [SECONDS_PER_TARGET] [TARGET...]
#
# SECONDS_PER_TARGET defaults to 60; TARGET defaults to all (tests/fuzz/CMakeLists.txt). Each run
# starts from the committed corpus tests/fuzz/corpus/<target> and keeps what it finds in
# build-fuzz/corpus/<target> (later runs continue from there). --merge then adds to the committed
# corpus only the found inputs that reach new coverage (libFuzzer -merge=1), to be committed.
# A crash or failed invariant stops that target; its input is saved as
# build-fuzz/crashes/<target>/crash-* and the script exits 1 at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
build=$root/build-fuzz

merge=0
if [ "${1:-}" = "--merge" ]; then merge=1; shift; fi
seconds=${1:-60}
shift || true
targets=("$@")
if ((${#targets[@]} == 0)); then
  read -r -a targets < <(sed -n 's/^set(TOLLGATE_FUZZ_TARGETS \(.*\))$/\1/p' tests/fuzz/CMakeLists.txt)
fi

if [ ! -f "$build/CMakeCache.txt" ]; then  # the compiler is chosen once per build directory
  clang=$(command -v clang++ || command -v clang++-14 || true)
  if [ -z "$clang" ]; then
    echo "fuzz: clang++ is needed (Debian: apt-get install clang)" >&2
    exit 1
  fi
  cmake -S . -B "$build" -DCMAKE_CXX_COMPILER="$clang" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTOLLGATE_FUZZ=ON >/dev/null
fi
cmake --build "$build" -j "$(nproc)" --target "${targets[@]/#/fuzz_}"

# A longest input per target: the request parser must be able to cross its 8 and 16 KiB limits.
max_len() {
  case $1 in
    request_parser) echo 20000 ;;
    *) echo 8192 ;;
  esac
}

export ASAN_OPTIONS=${ASAN_OPTIONS:-halt_on_error=1:detect_leaks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
mkdir -p "$build/logs"
failed=()
summary=()
for t in "${targets[@]}"; do
  corpus=$build/corpus/$t crashes=$build/crashes/$t log=$build/logs/$t.log
  mkdir -p "$corpus" "$crashes"
  dict=()
  [ -f "tests/fuzz/dict/$t.dict" ] && dict=(-dict="tests/fuzz/dict/$t.dict")
  echo "fuzz: $t for ${seconds}s (log: ${log#"$root"/})"
  status=0
  "$build/bin/fuzz_$t" "$corpus" "tests/fuzz/corpus/$t" "${dict[@]}" -max_total_time="$seconds" \
    -max_len="$(max_len "$t")" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$crashes/" >"$log" 2>&1 || status=$?
  # The last status line, e.g. "#1234567 DONE cov: 812 ft: 3301 corp: 402/61Kb ... exec/s: 20576".
  last=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n 1)
  cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
  ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
  corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9A-Za-z]*\).*/\1/p' <<<"$last")
  result=ok
  if [ "$status" != 0 ]; then
    result="FAILED (exit $status): $(ls "$crashes" | head -n 3 | tr '\n' ' ')"
    failed+=("$t")
    grep -E 'ERROR|invariant failed|runtime error|SUMMARY' "$log" | head -n 5 >&2 || true
  fi
  summary+=("$(printf '%-15s %12s execs %8s/s  cov: %-6s ft: %-7s corpus: %-12s %s' \
    "$t" "${runs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "${corp:-?}" "$result")")
  if ((merge)) && [ "$status" = 0 ]; then
    "$build/bin/fuzz_$t" -merge=1 "tests/fuzz/corpus/$t" "$corpus" -max_len="$(max_len "$t")" \
      >>"$log" 2>&1
    echo "fuzz: $t merged: $(ls "tests/fuzz/corpus/$t" | wc -l) files in tests/fuzz/corpus/$t"
  fi
done

echo
printf '%s\n' "${summary[@]}"
if ((${#failed[@]})); then
  echo "fuzz: failed: ${failed[*]} (inputs in build-fuzz/crashes/<target>/; replay one with" \
       "build-fuzz/bin/fuzz_<target> FILE)" >&2
  exit 1
fi
