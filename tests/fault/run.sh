#!/usr/bin/env bash
# The fault suite (issue 10, point 8): builds Release, starts its own PostgreSQL and Redis
# (deploy/local/services.sh, throwaway, free loopback ports), runs the scenarios against real
# tollgate instances and the stub upstream, prints each scenario's figures and invariants, and
# exits 1 if an invariant failed (2 if a scenario could not run). Not part of tests/run.sh: it
# takes a few minutes, most of it the 60 s PostgreSQL outage.
#
#   bash tests/fault/run.sh [--no-build] [--keep] [scenario...]     # default: every scenario
#   bash tests/fault/run.sh --list
#
# Scenarios: kill9 sigterm pg_down redis_restart redis_stall settle_retry overspend aborts slowloris hostile
# hostile_client emfile
# (tests/fault/README.md).
# --keep leaves the services running (their folder is printed). FAULT_VERBOSE=1 echoes the
# children's logs.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD

build=1 keep=0 args=()
for a in "$@"; do
  case "$a" in
    --no-build) build=0 ;;
    --keep) keep=1 ;;
    --list) exec node tests/fault/fault.mjs --list ;;
    *) args+=("$a") ;;
  esac
done

if ((build)); then
  bash deploy/install-deps.sh >/dev/null
  bash deploy/build.sh >/dev/null
fi
[[ -x build/bin/tollgate && -x build/bin/tollgate-stub ]] || { echo "run.sh: build/bin/tollgate missing; run without --no-build" >&2; exit 2; }

state=$(mktemp -d /tmp/tollgate-fault.XXXXXX)
cleanup() {
  if ((keep)); then echo "run.sh: services kept in $state (bash deploy/local/services.sh destroy $state)" >&2
  else bash "$root/deploy/local/services.sh" destroy "$state" >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT
bash deploy/local/services.sh start "$state" >/dev/null
# shellcheck disable=SC1091
source "$state/env"
export TOLLGATE_SERVICES_DIR=$state
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true  # 1,000 slowloris sockets and more
build/bin/tollgate migrate >/dev/null

node tests/fault/fault.mjs "${args[@]}"
