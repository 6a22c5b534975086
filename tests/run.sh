#!/usr/bin/env bash
# The test command (README): installs what is missing, builds, starts throwaway PostgreSQL and
# Redis on free loopback ports, runs every test with ctest, and stops them again.
set -euo pipefail
cd "$(dirname "$0")/.."

bash deploy/install-deps.sh
bash deploy/build.sh
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
build/bin/tollgate migrate

cd build
ctest --output-on-failure --timeout 600 "$@"
