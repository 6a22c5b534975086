#!/usr/bin/env bash
# The test command (README): installs what is missing, builds, starts throwaway PostgreSQL and
# Redis on free loopback ports, runs every test with ctest, and stops them again.
#
#   bash tests/run.sh [--sanitize] [CTEST_ARGS...]
#
# --sanitize: the same tests on an AddressSanitizer + UndefinedBehaviorSanitizer build (g++,
# build-asan/; jemalloc is off there). The first error stops a process (halt_on_error), leaks
# are reported at exit, and the run fails on any report, also from the tollgate and stub
# processes the e2e tests start (whose test may pass on a closed connection): ASan's go to files,
# UBSan's (g++'s UBSan ignores log_path next to ASan) are looked for in ctest's log of every
# test's output, which holds the children's output too (E2E_VERBOSE=1).
set -euo pipefail
cd "$(dirname "$0")/.."

sanitize=0
if [ "${1:-}" = "--sanitize" ]; then sanitize=1; shift; fi

bash deploy/install-deps.sh
build_dir=build
if ((sanitize)); then
  build_dir=build-asan
  cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_CXX_FLAGS="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer" >/dev/null
  cmake --build "$build_dir" -j "$(nproc)"
else
  bash deploy/build.sh
fi
(cd tests/e2e && npm ci --no-audit --no-fund --loglevel=error)

state=$(mktemp -d /tmp/tollgate-test.XXXXXX)
root=$PWD
cleanup() { bash "$root/deploy/local/services.sh" destroy "$state" >/dev/null 2>&1 || true; }  # after `cd build` too
trap cleanup EXIT
bash deploy/local/services.sh start "$state" >/dev/null
# shellcheck disable=SC1091
source "$state/env"
export TOLLGATE_SERVICES_DIR=$state   # tests that stop and restart Redis
ulimit -n 65536 2>/dev/null || true   # thousands of concurrent test connections
"$build_dir/bin/tollgate" migrate

if ((sanitize)); then
  # ASan and LeakSanitizer reports land in $reports/asan.<pid>. LeakSanitizer works here (it
  # needs ptrace, which this machine allows).
  reports=$state/sanitizer
  mkdir -p "$reports"
  export ASAN_OPTIONS="halt_on_error=1:detect_leaks=1:log_path=$reports/asan"
  export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
  export E2E_VERBOSE=1
fi

cd "$build_dir"
status=0
ctest --output-on-failure --timeout 600 "$@" || status=$?
if ((sanitize)); then
  found=0
  for f in "$reports"/*; do
    [ -e "$f" ] || continue
    echo "== sanitizer report $f" >&2
    cat "$f" >&2
    found=1
  done
  if grep -n -A12 "runtime error:" Testing/Temporary/LastTest.log >&2; then found=1; fi  # every test's output
  if ((found)); then
    echo "tests/run.sh --sanitize: sanitizer reports above" >&2
    status=1
  else
    echo "tests/run.sh --sanitize: no sanitizer reports"
  fi
fi
exit "$status"
