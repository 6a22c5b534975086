#!/usr/bin/env bash
# The benchmark command (bench/README.md):
#
#   bash bench/run.sh [--quick|--full|--smoke] [options]
#
# Installs what is missing (nginx-light, wrk, gnuplot-nox, jq; npm ci for Portkey), builds
# Release (deploy/build.sh) and the bench tools, starts a throwaway PostgreSQL + Redis
# (deploy/local/services.sh, destroyed on exit), the stub upstreams and the four systems, runs
# the scenarios one load at a time, and writes bench/results/<timestamp>-<mode>/report.md with
# PNG plots (bench/results/latest points at it). Timings are reported, never asserted.
#
#   --quick      (default) a short pass over every scenario, < 3 minutes with a warm build
#   --full       the figures the README quotes: longer runs, more rates, 10,000 idle streams,
#                and a 2-thread tollgate
#   --smoke      a few seconds per scenario; exits non-zero if any system answers wrongly
#                (HTTP status, missing stub content, no usage rows). ctest runs this.
#   --no-build   use existing binaries (with --bin-dir DIR: tollgate, tollgate-stub and, if
#                present, tollgate-loadgen / tollgate-usagebench; else bench/.build/bin)
#   --bin-dir DIR --tools-dir DIR   where the binaries are
#   --no-portkey skip Portkey (--smoke skips it by itself when npm or the registry is missing)
#   --out DIR    write the results there instead of bench/results/<timestamp>-<mode>
#   --no-install do not apt-get/npm anything (fail if something is missing)
#   --systems 'direct tollgate'    run a subset (direct, nginx, portkey, tollgate, tollgate-2t)
#   --routes N   route by N rows of model_routes (1: `*` → one upstream row; 3: the model at
#                weights 3:1 on two upstreams plus a `*` fallback) instead of the configured
#                [upstream]; every upstream row is the profile's stub. Measures what routing costs.
#   --perf       record a CPU profile (linux-perf) of tollgate during its max-throughput run:
#                perf/*.txt in the results, top functions quoted in the report
set -euo pipefail
caller_pwd=$(pwd -P)
orig_args="$*"
cd "$(dirname "$0")/.."
ROOT=$(pwd -P)
started_at=$(date +%s)
# The full pipeline, whatever the caller's environment says.
unset TOLLGATE_ADMISSION TOLLGATE_LISTEN TOLLGATE_ADMIN_LISTEN TOLLGATE_UPSTREAM_URL TOLLGATE_UPSTREAM_KEY TOLLGATE_JOURNAL_DIR TOLLGATE_REDIS_SOCKET
abspath() { case $1 in /*) echo "$1" ;; *) echo "$caller_pwd/$1" ;; esac; }

mode=quick build=1 install=1 portkey=auto bin_dir="" tools_dir="" out="" only="" perf=0 routes=0
while (($#)); do
  case $1 in
    --quick) mode=quick ;;
    --full) mode=full ;;
    --smoke) mode=smoke ;;
    --no-build) build=0 ;;
    --no-install) install=0 ;;
    --no-portkey) portkey=no ;;
    --bin-dir) bin_dir=$(abspath "$2"); shift ;;
    --tools-dir) tools_dir=$(abspath "$2"); shift ;;
    --out) out=$(abspath "$2"); shift ;;
    --systems) only=$2; shift ;;
    --perf) perf=1 ;;
    --routes) routes=$2; shift ;;
    -h|--help) sed -n '2,30s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "bench: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

log() { printf '[bench %4ss] %s\n' "$(( $(date +%s) - started_at ))" "$*" >&2; }
die() { echo "bench: error: $*" >&2; exit 1; }

# ------------------------------------------------------------------ scenario sizes per mode
# D_*: seconds (D_MAX: whole seconds, for wrk). RATES: open-loop req/s (each system runs those ≤ 90 % of its closed-loop max).
case $mode in
  smoke)
    D_WARM=0.3 D_C1=0.5 D_MAX=1 D_RATE=0.5 W_RATE=0.1 RATES="200"
    STREAM_RATE=20 D_STREAM=0.6 STREAM_CHUNKS=8 STREAM_INTERVAL=5
    IDLE=50 HOLD=0.5 IDLE_INTERVAL=500 USAGE_ROWS=2000 CONNS=16 TWO_THREADS=0 KEYS_TOTAL=2000 D_FLOOD=1 ;;
  quick)
    D_WARM=1 D_C1=3 D_MAX=3 D_RATE=2.5 W_RATE=0.5 RATES="1000 2000 5000 10000"
    STREAM_RATE=50 D_STREAM=3 STREAM_CHUNKS=64 STREAM_INTERVAL=20
    IDLE=1000 HOLD=2 IDLE_INTERVAL=2000 USAGE_ROWS=20000 CONNS=64 TWO_THREADS=1 KEYS_TOTAL=100000 D_FLOOD=3 ;;
  full)
    D_WARM=2 D_C1=10 D_MAX=10 D_RATE=10 W_RATE=1 RATES="500 1000 2000 5000 10000 15000 20000 30000"
    STREAM_RATE=100 D_STREAM=10 STREAM_CHUNKS=64 STREAM_INTERVAL=20
    IDLE=10000 HOLD=10 IDLE_INTERVAL=5000 USAGE_ROWS=200000 CONNS=64 TWO_THREADS=1 KEYS_TOTAL=1000000 D_FLOOD=10 ;;
esac
MODEL=openai/gpt-4o-mini
STUB_KEY=stub-upstream-key

# ------------------------------------------------------------------ install
apt_install() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  ((install)) || die "missing Debian packages: ${missing[*]} (run without --no-install)"
  local sudo=""
  if [ "$(id -u)" != 0 ]; then command -v sudo >/dev/null || die "need root or sudo to install ${missing[*]}"; sudo=sudo; fi
  log "installing ${missing[*]}"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
if ((build && install)); then bash deploy/install-deps.sh; fi
apt_install nginx-light wrk gnuplot-nox jq curl
if ((perf)); then apt_install linux-perf; fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$NGINX" ] || die "nginx not found"

# ------------------------------------------------------------------ build
build_dir=${BUILD_DIR:-build}
if ((build)); then
  log "building Release (deploy/build.sh)"
  bash deploy/build.sh >/dev/null
  bin_dir=${bin_dir:-$build_dir/bin}
  if grep -Eq '^[[:space:]]*add_subdirectory\((bench|\$\{PROJECT_SOURCE_DIR\}/bench)\)' CMakeLists.txt \
     && [ -x "$bin_dir/tollgate-loadgen" ] && [ -x "$bin_dir/tollgate-usagebench" ]; then
    tools_dir=${tools_dir:-$bin_dir}
  else
    log "building the bench tools (bench/standalone → bench/.build; the top level does not add bench/)"
    cmake -S bench/standalone -B bench/.build -DCMAKE_BUILD_TYPE=Release >/dev/null
    cmake --build bench/.build -j "$(nproc)" --target tollgate-loadgen tollgate-usagebench >/dev/null
    tools_dir=${tools_dir:-bench/.build/bin}
  fi
else
  bin_dir=${bin_dir:-$build_dir/bin}
  if [ -z "$tools_dir" ]; then
    if [ -x "$bin_dir/tollgate-loadgen" ]; then tools_dir=$bin_dir; else tools_dir=bench/.build/bin; fi
  fi
fi
bin_dir=$(cd "$bin_dir" && pwd -P) tools_dir=$(cd "$tools_dir" && pwd -P)
TG=$bin_dir/tollgate STUB=$bin_dir/tollgate-stub LG=$tools_dir/tollgate-loadgen UB=$tools_dir/tollgate-usagebench
for b in "$TG" "$STUB" "$LG" "$UB"; do [ -x "$b" ] || die "$b is missing (build first, or pass --bin-dir/--tools-dir)"; done

# ------------------------------------------------------------------ Portkey (npm)
PORTKEY_DIR=$ROOT/bench/portkey
portkey_note=""
if [ "$portkey" != no ]; then
  ok=1
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    ok=0 portkey_note="node/npm not installed"
  else
    stamp=$(sha256sum "$PORTKEY_DIR/package-lock.json" | cut -c1-64)
    if [ "$(cat "$PORTKEY_DIR/node_modules/.bench-stamp" 2>/dev/null)" != "$stamp" ]; then
      if ((install)); then
        log "npm ci (bench/portkey: @portkey-ai/gateway 1.15.2)"
        if (cd "$PORTKEY_DIR" && timeout 300 npm ci --no-audit --no-fund --loglevel=error >/dev/null 2>&1); then
          echo "$stamp" >"$PORTKEY_DIR/node_modules/.bench-stamp"
        else ok=0 portkey_note="npm ci failed (no registry?)"; fi
      else ok=0 portkey_note="bench/portkey/node_modules missing (--no-install)"; fi
    fi
  fi
  if ((!ok)); then
    [ "$mode" = smoke ] || die "Portkey unavailable: $portkey_note (use --no-portkey to skip it)"
    log "skipping Portkey: $portkey_note"; portkey=no
  else portkey=yes; fi
else portkey_note="skipped (--no-portkey)"; fi

# ------------------------------------------------------------------ folders, limits, cleanup
stamp_dir=$(date -u +%Y%m%d-%H%M%S)-$mode
keep_out=1
if [ -z "$out" ]; then
  if [ "$mode" = smoke ]; then out=$(mktemp -d /tmp/tollgate-bench-smoke.XXXXXX); keep_out=0
  else out=$ROOT/bench/results/$stamp_dir; fi
fi
mkdir -p "$out/raw" "$out/logs"
out=$(cd "$out" && pwd -P)
state=$(mktemp -d /tmp/tollgate-bench.XXXXXX)
chmod 755 "$state"

# File descriptors: idle streams need two sockets per stream in a proxy.
ulimit -Hn 1048576 2>/dev/null || true
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
fds=$(ulimit -n) idle_note=""
if [ "$fds" != unlimited ] && ((fds < 2 * IDLE + 2000)); then
  idle_note="$IDLE open streams wanted, but the open-file limit is $fds (a proxy needs 2 per stream; raising it needs CAP_SYS_RESOURCE): $(( (fds - 2000) / 2 )) instead"
  IDLE=$(( (fds - 2000) / 2 )); ((IDLE > 0)) || IDLE=10
  log "$idle_note"
fi

pids_to_stop=()
cleanup() {
  local rc=$? p
  for p in "${pids_to_stop[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids_to_stop[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
  bash "$ROOT/deploy/local/services.sh" destroy "$state/svc" >/dev/null 2>&1 || true
  rm -rf "$state"
  if ((rc == 0 && !keep_out)); then rm -rf "$out"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port_free() {  # nothing listens on it and no socket in any state uses it locally
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 1
  [[ -z $(ss -Htan "sport = :$1" 2>/dev/null) ]]
}
# Listening ports for nginx and Portkey come from outside the kernel's ephemeral range, so an
# outgoing connection of some load cannot hold the port we are about to bind.
read -r eph_lo eph_hi </proc/sys/net/ipv4/ip_local_port_range
if ((eph_hi < 64000)); then port_lo=$((eph_hi + 1)) port_n=$((65000 - eph_hi)); else port_lo=20000 port_n=$((eph_lo - 20000)); fi
((port_n > 100)) || { port_lo=20000 port_n=10000; }
free_port() {
  local p
  for _ in $(seq 500); do p=$((port_lo + RANDOM % port_n)); port_free "$p" && { echo "$p"; return; }; done
  die "no free port"
}
wait_file() {  # wait_file FILE PID WHAT
  for _ in $(seq 200); do [ -s "$1" ] && return 0; kill -0 "$2" 2>/dev/null || break; sleep 0.05; done
  die "$3 did not start (see $out/logs)"
}
try_http() {  # try_http URL PID: 0 once the URL answers, 1 if the process died or 15 s passed
  for _ in $(seq 300); do curl -fsS -o /dev/null --max-time 1 "$1" 2>/dev/null && return 0; kill -0 "$2" 2>/dev/null || return 1; sleep 0.05; done
  return 1
}
wait_http() {  # wait_http URL PID WHAT
  try_http "$1" "$2" || die "$3 is not answering on $1 (see $out/logs)"
}
stop_pid() {  # stop one of our children and forget it (its pid may be reused later)
  local p=$1 q rest=()
  kill "$p" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
  kill -9 "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
  for q in "${pids_to_stop[@]}"; do [ "$q" = "$p" ] || rest+=("$q"); done
  pids_to_stop=("${rest[@]+"${rest[@]}"}")
}
# An unprivileged user for nginx and Portkey when we are root.
if [ "$(id -u)" = 0 ]; then
  drop=(setpriv --reuid=nobody --regid=nogroup --clear-groups --)
  id nobody >/dev/null 2>&1 || die "user nobody missing"
else drop=(); fi

# ------------------------------------------------------------------ PostgreSQL, Redis, seed
log "starting PostgreSQL and Redis (deploy/local/services.sh, $state/svc)"
bash deploy/local/services.sh start "$state/svc" >/dev/null
# shellcheck disable=SC1091
source "$state/svc/env"
# tollgate reaches the co-located Redis over its Unix socket (PostgreSQL over loopback TCP).
redis_via=tcp
if [ -n "${TOLLGATE_REDIS_SOCKET:-}" ]; then export TOLLGATE_REDIS_URL=unix://$TOLLGATE_REDIS_SOCKET; redis_via=unix; fi
svc_data=$state/svc; [ -L "$state/svc/data" ] && svc_data=$(readlink "$state/svc/data")
q() { psql -X -q -A -t -v ON_ERROR_STOP=1 "$TOLLGATE_DATABASE_URL" "$@"; }
"$TG" migrate >"$out/logs/migrate.log"
ACCOUNT=$("$TG" accounts create bench@tollgate.local)
"$TG" credits add "$ACCOUNT" 1000000 --note "benchmark credit" >/dev/null
API_KEY=$("$TG" keys create "$ACCOUNT" --name bench 2>/dev/null)
KEY_ID=$(q -c "SELECT id FROM api_keys WHERE user_id = '$ACCOUNT'")
"$TG" prices set "$MODEL" 0.00000015 0.0000006 --context-length 128000 >/dev/null
q -c "INSERT INTO pricing_rules (model_pattern, markup_percentage, min_cost_usd, priority) VALUES ('*', 20, 0, 0)" \
  -c "INSERT INTO rate_limits (user_id, requests_per_minute, requests_per_hour, requests_per_day, tokens_per_minute, max_tokens_per_request)
      VALUES ('$ACCOUNT', 0, 0, 0, 0, 0) ON CONFLICT (user_id) DO UPDATE SET requests_per_minute = 0,
      requests_per_hour = 0, requests_per_day = 0, tokens_per_minute = 0, max_tokens_per_request = 0"

# ------------------------------------------------------------------ request bodies
# Upstream behaviour comes from the stub's flags, not from body fields (Portkey drops unknown
# fields), so three stub upstreams run: plain (8 tokens), stream (N events, I ms apart), idle
# (an event every IDLE_INTERVAL ms, practically endless).
cat >"$state/plain.json" <<EOF
{"model":"$MODEL","messages":[{"role":"system","content":"You are a terse assistant."},{"role":"user","content":"Say hello to the benchmark."}],"max_tokens":16}
EOF
cat >"$state/stream.json" <<EOF
{"model":"$MODEL","messages":[{"role":"system","content":"You are a terse assistant."},{"role":"user","content":"Say hello to the benchmark."}],"stream":true}
EOF
cp "$state/stream.json" "$state/idle.json"   # the idle stub decides how long the stream lasts
cp "$state/plain.json" "$state/stream.json" "$out/"
EXPECT_PLAIN="tok7 "
EXPECT_STREAM="tok$((STREAM_CHUNKS - 1)) "

# ------------------------------------------------------------------ stubs
declare -A STUB_PORT STUB_PID
start_stub() {  # start_stub PROFILE ARGS...
  local name=$1; shift
  rm -f "$state/stub-$name.port"
  "$STUB" --listen 127.0.0.1:0 --threads 1 --require-key "$STUB_KEY" --port-file "$state/stub-$name.port" "$@" \
    >"$out/logs/stub-$name.log" 2>&1 &
  STUB_PID[$name]=$!; pids_to_stop+=("$!")
  wait_file "$state/stub-$name.port" "${STUB_PID[$name]}" "stub ($name)"
  STUB_PORT[$name]=$(cat "$state/stub-$name.port")
}
start_stub plain
start_stub stream --chunks "$STREAM_CHUNKS" --chunk-interval-ms "$STREAM_INTERVAL"
start_stub idle --chunks 1000000 --chunk-interval-ms "$IDLE_INTERVAL"
log "stubs: plain :${STUB_PORT[plain]}, stream :${STUB_PORT[stream]}, idle :${STUB_PORT[idle]}"

# ------------------------------------------------------------------ nginx (1 worker, keep-alive upstreams)
declare -A NGX_PORT
nginx_pid="" nginx_worker=""
start_nginx() {
  local attempt
  for attempt in 1 2 3; do
    launch_nginx
    if try_http "http://127.0.0.1:${NGX_PORT[plain]}/__stub/last" "$nginx_pid"; then
      nginx_worker=$(pgrep -P "$nginx_pid" | head -n1)
      [ -n "$nginx_worker" ] || die "nginx has no worker process"
      return 0
    fi
    log "nginx did not start (attempt $attempt): $(tail -n1 "$out/logs/nginx.log")"
    stop_pid "$nginx_pid"
  done
  die "nginx did not start (see $out/logs/nginx.log)"
}
launch_nginx() {
  local d=$state/nginx p used=" "
  mkdir -p "$d/tmp" "$d/logs"
  {
    echo "worker_processes 1;"
    echo "daemon off;"
    echo "pid $d/nginx.pid;"
    echo "error_log $d/logs/error.log warn;"
    echo "worker_rlimit_nofile $(( $(ulimit -n) > 200000 ? 200000 : $(ulimit -n) ));"
    echo "events { worker_connections $((2 * IDLE + 4096)); }"
    echo "http {"
    echo "  access_log off;"
    echo "  client_body_temp_path $d/tmp/body; proxy_temp_path $d/tmp/proxy; fastcgi_temp_path $d/tmp/fastcgi;"
    echo "  uwsgi_temp_path $d/tmp/uwsgi; scgi_temp_path $d/tmp/scgi;"
    echo "  keepalive_requests 1000000; keepalive_timeout 300s;"
    for p in plain stream idle; do
      NGX_PORT[$p]=$(free_port)
      while [[ $used == *" ${NGX_PORT[$p]} "* ]]; do NGX_PORT[$p]=$(free_port); done
      used+="${NGX_PORT[$p]} "
      echo "  upstream stub_$p { server 127.0.0.1:${STUB_PORT[$p]}; keepalive 256; keepalive_requests 1000000; keepalive_timeout 300s; }"
      echo "  server {"
      echo "    listen 127.0.0.1:${NGX_PORT[$p]} backlog=4096;"
      echo "    location / {"
      echo "      proxy_pass http://stub_$p;"
      echo "      proxy_http_version 1.1;"
      echo "      proxy_set_header Connection \"\";"
      echo "      proxy_buffering off;"
      echo "      proxy_read_timeout 600s;"
      echo "    }"
      echo "  }"
    done
    echo "}"
  } >"$d/nginx.conf"
  cp "$d/nginx.conf" "$out/nginx.conf"
  if [ "$(id -u)" = 0 ]; then chown -R nobody:nogroup "$d"; fi
  "${drop[@]}" "$NGINX" -p "$d" -c "$d/nginx.conf" -e "$d/logs/error.log" >>"$out/logs/nginx.log" 2>&1 &
  nginx_pid=$!; pids_to_stop+=("$nginx_pid")
}

# ------------------------------------------------------------------ Portkey
PK_PORT="" PK_PID=""
start_portkey() {
  local attempt
  for attempt in 1 2 3; do
    PK_PORT=$(free_port)
    (cd "$PORTKEY_DIR" && NODE_ENV=production exec "${drop[@]}" node start.mjs --port="$PK_PORT" --headless) \
      >>"$out/logs/portkey.log" 2>&1 &
    PK_PID=$!; pids_to_stop+=("$PK_PID")
    try_http "http://127.0.0.1:$PK_PORT/" "$PK_PID" && return 0
    log "Portkey did not start on port $PK_PORT (attempt $attempt)"
    stop_pid "$PK_PID"
  done
  die "Portkey did not start (see $out/logs/portkey.log)"
}

# ------------------------------------------------------------------ tollgate (one instance per upstream profile)
TG_PORT="" TG_ADMIN_PORT="" TG_PID=""
# --routes N: upstream rows and model routes to the profile's stub (replaced per profile).
set_routes() {  # set_routes PROFILE
  ((routes > 0)) || return 0
  local url="http://127.0.0.1:${STUB_PORT[$1]}/api/v1"
  q -c "DELETE FROM model_routes" -c "DELETE FROM upstreams" \
    -c "INSERT INTO upstreams (name, base_url, api_key_ref) VALUES ('bench-a', '$url', 'env:BENCH_STUB_KEY'),
        ('bench-b', '$url', 'env:BENCH_STUB_KEY'), ('bench-c', '$url', 'env:BENCH_STUB_KEY')"
  if ((routes == 1)); then
    q -c "INSERT INTO model_routes (model_pattern, upstream) VALUES ('*', 'bench-a')"
  else
    q -c "INSERT INTO model_routes (model_pattern, upstream, priority, weight) VALUES ('$MODEL', 'bench-a', 10, 3),
          ('$MODEL', 'bench-b', 10, 1), ('*', 'bench-c', 0, 1)"
  fi
}
start_tollgate() {  # start_tollgate PROFILE THREADS
  local name=tollgate-$1-t$2
  set_routes "$1"
  mkdir -p "$state/$name"
  cat >"$state/$name/tollgate.toml" <<EOF
[server]
threads = $2
[usage]
journal_dir = "$state/$name/journal"
EOF
  rm -f "$state/$name/port" "$state/$name/admin-port"
  TOLLGATE_LISTEN=127.0.0.1:0 TOLLGATE_ADMIN_LISTEN=127.0.0.1:0 \
    TOLLGATE_UPSTREAM_URL="http://127.0.0.1:${STUB_PORT[$1]}/api/v1" \
    TOLLGATE_UPSTREAM_KEY=$STUB_KEY BENCH_STUB_KEY=$STUB_KEY TOLLGATE_JOURNAL_DIR="$state/$name/journal" \
    "$TG" --config "$state/$name/tollgate.toml" serve --port-file "$state/$name/port" \
      --admin-port-file "$state/$name/admin-port" >>"$out/logs/$name.log" 2>&1 &
  TG_PID=$!; pids_to_stop+=("$TG_PID")
  wait_file "$state/$name/port" "$TG_PID" "tollgate ($name)"
  TG_PORT=$(cat "$state/$name/port")
  TG_ADMIN_PORT=$(cat "$state/$name/admin-port")
  wait_http "http://127.0.0.1:$TG_ADMIN_PORT/readyz" "$TG_PID" tollgate
}
stop_tollgate() {
  [ -n "$TG_PID" ] || return 0
  curl -fsS --max-time 2 "http://127.0.0.1:$TG_ADMIN_PORT/metrics" >"$out/logs/metrics-$1.txt" 2>/dev/null || true
  stop_pid "$TG_PID"; TG_PID=""
}

# ------------------------------------------------------------------ measurement helpers
cpu_ns() {  # summed on-CPU time (ns) of every thread of the given processes
  local total=0 p t v rest
  for p in "$@"; do
    for t in /proc/"$p"/task/*/schedstat; do
      [ -r "$t" ] || continue
      read -r v rest <"$t" 2>/dev/null || continue
      total=$((total + v))
    done
  done
  echo "$total"
}
mem_kib() {  # mem_kib FIELD PIDS: summed VmRSS/VmHWM
  local f=$1 total=0 p v; shift
  for p in "$@"; do
    v=$(sed -n "s/^$f:[[:space:]]*\([0-9]*\) kB/\1/p" "/proc/$p/status" 2>/dev/null)
    total=$((total + ${v:-0}))
  done
  echo "$total"
}
aux_pids() {  # Redis and PostgreSQL processes (the cost of tollgate's admission + recording)
  local pm
  cat "$svc_data/run/redis.pid" 2>/dev/null || true
  pm=$(head -n1 "$svc_data/pg/postmaster.pid" 2>/dev/null || true)
  if [ -n "$pm" ]; then echo "$pm"; pgrep -P "$pm" || true; fi
}

# Current system under test: SYS, URL per profile, headers, process ids.
SYS="" ; declare -A URL; HDRS=(); PIDS=(); AUX=()
set_system() {
  SYS=$1; HDRS=(); AUX=(); PIDS=()
  case $1 in
    direct)
      for p in plain stream idle; do URL[$p]="http://127.0.0.1:${STUB_PORT[$p]}/v1/chat/completions"; done
      HDRS=("Authorization: Bearer $STUB_KEY") ;;
    nginx)
      for p in plain stream idle; do URL[$p]="http://127.0.0.1:${NGX_PORT[$p]}/v1/chat/completions"; done
      HDRS=("Authorization: Bearer $STUB_KEY"); PIDS=("$nginx_worker") ;;
    portkey)
      for p in plain stream idle; do URL[$p]="http://127.0.0.1:$PK_PORT/v1/chat/completions"; done
      HDRS=("Authorization: Bearer $STUB_KEY" "x-portkey-provider: openai"); PIDS=("$PK_PID") ;;
    tollgate*)
      for p in plain stream idle; do URL[$p]="http://127.0.0.1:$TG_PORT/v1/chat/completions"; done
      HDRS=("Authorization: Bearer $API_KEY"); PIDS=("$TG_PID")
      mapfile -t AUX < <(aux_pids) ;;
  esac
}
hdr_args() {  # hdr_args PROFILE → loadgen --header arguments
  local h
  for h in "${HDRS[@]}"; do printf '%s\0%s\0' --header "$h"; done
  if [ "$SYS" = portkey ]; then printf '%s\0%s\0' --header "x-portkey-custom-host: http://127.0.0.1:${STUB_PORT[$1]}/v1"; fi
}
# Direct: the process measured for CPU and RSS is the stub of the profile.
sys_pids() { if [ "$SYS" = direct ]; then echo "${STUB_PID[$1]}"; else printf '%s\n' "${PIDS[@]}"; fi; }

functional_failures=() warnings=()
# problem fatal|soft MESSAGE: fatal problems fail every mode; soft ones (errors under load, idle
# streams that did not all open) fail --smoke and are listed in the report otherwise.
problem() {
  local kind=$1; shift
  log "  ! $*"
  if [ "$kind" = fatal ] || [ "$mode" = smoke ]; then functional_failures+=("$*"); else warnings+=("$*"); fi
}
# record SCENARIO PROFILE JSONFILE CPU0 CPU1 AUX0 AUX1 PIDS...: adds process figures to a result.
annotate() {
  local scen=$1 profile=$2 file=$3 c0=$4 c1=$5 a0=$6 a1=$7; shift 7
  local rss hwm
  rss=$(mem_kib VmRSS "$@"); hwm=$(mem_kib VmHWM "$@")
  jq --arg sys "$SYS" --arg scen "$scen" --arg profile "$profile" --argjson cpu "$((c1 - c0))" \
     --argjson aux "$((a1 - a0))" --argjson rss "$rss" --argjson hwm "$hwm" \
     '. + {system:$sys, scenario:$scen, profile:$profile, cpu_ns:$cpu, aux_cpu_ns:$aux, rss_kib:$rss, hwm_kib:$hwm}' \
     "$file" >"$file.tmp" && mv "$file.tmp" "$file"
}
check_result() {  # check_result FILE: record a functional failure if any request failed
  local f=$1 errs first
  errs=$(jq -r '.errors // 0' "$f")
  if [ "$errs" != 0 ]; then
    first=$(jq -r '.first_error // ""' "$f")
    problem soft "$SYS/$(jq -r .scenario "$f"): $errs error(s), first: $first"
  fi
}

# loadgen SCENARIO PROFILE ARGS...: one loadgen run with CPU and memory accounting.
loadgen() {
  local scen=$1 profile=$2; shift 2
  local f=$out/raw/$SYS.$scen.json c0 c1 a0 a1 pids hargs=()
  mapfile -t pids < <(sys_pids "$profile")
  mapfile -d '' -t hargs < <(hdr_args "$profile")
  c0=$(cpu_ns "${pids[@]}"); a0=$(cpu_ns "${AUX[@]}")
  "$LG" --url "${URL[$profile]}" --body "$state/$profile.json" "${hargs[@]}" --json --label "$SYS/$scen" "$@" >"$f" 2>>"$out/logs/loadgen.log" \
    || die "tollgate-loadgen failed for $SYS/$scen (see $out/logs/loadgen.log)"
  c1=$(cpu_ns "${pids[@]}"); a1=$(cpu_ns "${AUX[@]}")
  annotate "$scen" "$profile" "$f" "$c0" "$c1" "$a0" "$a1" "${pids[@]}"
}

# wrk -t1 -c16 closed loop with a POST script; its done() prints one JSON line.
cat >"$state/post.lua" <<'EOF'
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/json"
for line in (os.getenv("BENCH_HEADERS") or ""):gmatch("[^\n]+") do
  local k, v = line:match("^([^:]+):%s*(.*)$")
  if k then wrk.headers[k] = v end
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"wrk_errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%.1f,"p90":%.1f,"p99":%.1f,"p999":%.1f,"max":%.1f,"mean":%.1f}}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9),
    latency.max, latency.mean))
end
EOF
run_wrk() {  # run_wrk SCENARIO PROFILE SECONDS
  local scen=$1 profile=$2 secs=$3 f=$out/raw/$SYS.$1.json c0 c1 a0 a1 pids hdrs h
  mapfile -t pids < <(sys_pids "$profile")
  hdrs=$(printf '%s\n' "${HDRS[@]}")
  [ "$SYS" = portkey ] && hdrs+=$'\n'"x-portkey-custom-host: http://127.0.0.1:${STUB_PORT[$profile]}/v1"
  local perf_pid=""
  if ((perf)) && [[ $SYS == tollgate* ]]; then
    mkdir -p "$out/perf"
    perf record -F 1999 -p "$(IFS=,; echo "${pids[*]}")" -o "$out/perf/$SYS.$scen.data" -- sleep "$secs" \
      >"$out/logs/perf.log" 2>&1 &
    perf_pid=$!
  fi
  c0=$(cpu_ns "${pids[@]}"); a0=$(cpu_ns "${AUX[@]}")
  BENCH_BODY=$state/$profile.json BENCH_HEADERS=$hdrs \
    timeout $(( ${secs%.*} + 30 )) wrk -t1 -c16 -d"${secs}s" --timeout 10s --latency -s "$state/post.lua" "${URL[$profile]}" \
    >"$state/wrk.out" 2>&1 || die "wrk failed for $SYS/$scen: $(cat "$state/wrk.out")"
  c1=$(cpu_ns "${pids[@]}"); a1=$(cpu_ns "${AUX[@]}")
  if [ -n "$perf_pid" ]; then
    wait "$perf_pid" 2>/dev/null || true
    perf report -i "$out/perf/$SYS.$scen.data" --stdio --no-children --sort dso,symbol -g none --percent-limit 0.4 \
      2>/dev/null | grep -E '^ +[0-9]' | cut -c1-150 | sed 's/ *$//' | head -n 40 >"$out/perf/$SYS.$scen.txt" || true
    perf report -i "$out/perf/$SYS.$scen.data" --stdio --no-children --sort dso -g none \
      2>/dev/null | grep -E '^ +[0-9]' | sed 's/ *$//' | head -n 12 >"$out/perf/$SYS.$scen.dso.txt" || true
    rm -f "$out/perf/$SYS.$scen.data"
  fi
  cat "$state/wrk.out" >>"$out/logs/wrk.log"
  sed -n 's/^WRKJSON //p' "$state/wrk.out" | jq --arg lbl "$SYS/$scen" '
    . as $w | ($w.wrk_errors.connect + $w.wrk_errors.read + $w.wrk_errors.write + $w.wrk_errors.status + $w.wrk_errors.timeout) as $e |
    {"label":$lbl, mode:"closed", tool:"wrk -t1 -c16", concurrency:16, duration_s:($w.duration_us / 1e6),
     completed:$w.requests, ok:($w.requests - $w.wrk_errors.status), errors:$e,
     first_error:(if $e > 0 then "wrk errors: \($w.wrk_errors)" else "" end),
     throughput_rps:(($w.requests - $w.wrk_errors.status) / ($w.duration_us / 1e6)),
     latency_us:$w.latency_us, wrk_errors:$w.wrk_errors}' >"$f"
  [ -s "$f" ] || die "no result from wrk for $SYS/$scen"
  annotate "$scen" "$profile" "$f" "$c0" "$c1" "$a0" "$a1" "${pids[@]}"
}

# A curl round trip that must answer 200 with the stub's content.
functional_check() {  # functional_check PROFILE EXPECT
  local profile=$1 expect=$2 hargs=() h body code
  for h in "${HDRS[@]}"; do hargs+=(-H "$h"); done
  [ "$SYS" = portkey ] && hargs+=(-H "x-portkey-custom-host: http://127.0.0.1:${STUB_PORT[$profile]}/v1")
  body=$(curl -sS -N --max-time 20 -o - -w '\n%{http_code}' "${hargs[@]}" -H 'Content-Type: application/json' \
         --data-binary @"$state/$profile.json" "${URL[$profile]}" 2>&1) || true
  code=${body##*$'\n'}
  if [ "$code" != 200 ] || [[ $body != *"$expect"* ]]; then
    problem fatal "$SYS $profile check: HTTP $code, expected '$expect' in: ${body:0:300}"
    return 1
  fi
}

# --perf: syscalls per request under strace -c at a light open-loop rate (C/C++ systems only).
syscall_census() {
  local pids spid f=$out/raw/$SYS.syscalls.json ok
  command -v strace >/dev/null || { log "  (strace not installed: no syscall census)"; return 0; }
  mapfile -t pids < <(sys_pids plain)
  mkdir -p "$out/perf"
  strace -c -f -o "$out/perf/$SYS.strace.txt" $(printf -- '-p %s ' "${pids[@]}") 2>/dev/null &
  spid=$!
  sleep 0.5
  loadgen strace plain --rate 500 --duration 2 --connections "$CONNS" --expect "$EXPECT_PLAIN"
  kill -INT "$spid" 2>/dev/null || true; wait "$spid" 2>/dev/null || true
  ok=$(jq -r .ok "$out/raw/$SYS.strace.json")
  awk -v sys="$SYS" -v ok="$ok" '
    /^-+/ || /% time/ || /total$/ || NF < 5 { next }
    { name = $NF; calls = $4; errs = (NF == 6 ? $5 : 0); n[name] = calls; e[name] = errs; total += calls }
    END {
      printf "{\"system\":\"%s\",\"scenario\":\"syscalls\",\"requests\":%d,\"total\":%d,\"calls\":{", sys, ok, total
      sep = ""; for (k in n) { printf "%s\"%s\":[%d,%d]", sep, k, n[k], e[k]; sep = "," }
      print "}}"
    }' "$out/perf/$SYS.strace.txt" >"$f"
}

max_rps() { jq -r '.throughput_rps // 0 | floor' "$out/raw/$SYS.max.json" 2>/dev/null || echo 0; }

# The whole scenario set for the current system. Plain scenarios use the plain profile.
run_plain_scenarios() {
  local r cap
  functional_check plain "$EXPECT_PLAIN" || return 0
  log "$SYS: warm-up, concurrency 1, max throughput, open loop"
  loadgen warmup plain --concurrency 16 --duration "$D_WARM" --expect "$EXPECT_PLAIN"
  loadgen c1 plain --concurrency 1 --duration "$D_C1" --warmup 0.2 --expect "$EXPECT_PLAIN"
  check_result "$out/raw/$SYS.c1.json"
  run_wrk max plain "$D_MAX"
  check_result "$out/raw/$SYS.max.json"
  cap=$(max_rps)
  for r in $RATES; do
    if ((r * 10 > cap * 9)); then
      log "  $SYS: skipping $r req/s (closed-loop max is $cap req/s)"
      echo "{\"system\":\"$SYS\",\"scenario\":\"rate-$r\",\"rate\":$r,\"skipped\":true,\"max_rps\":$cap}" >"$out/raw/$SYS.rate-$r.json"
      continue
    fi
    loadgen "rate-$r" plain --rate "$r" --duration "$D_RATE" --warmup "$W_RATE" --connections "$CONNS" --expect "$EXPECT_PLAIN"
    check_result "$out/raw/$SYS.rate-$r.json"
  done
  if ((perf)) && [ "$SYS" != portkey ]; then syscall_census; fi
}
run_stream_scenarios() {
  local conns
  functional_check stream "$EXPECT_STREAM" || return 0
  log "$SYS: streams ($STREAM_RATE/s, $STREAM_CHUNKS events ${STREAM_INTERVAL} ms apart)"
  conns=$(( STREAM_RATE * (STREAM_CHUNKS * STREAM_INTERVAL / 1000 + 2) * 2 + 16 ))
  loadgen stream stream --rate "$STREAM_RATE" --duration "$D_STREAM" --warmup 0.2 --connections "$conns" \
    --stream --expect "$EXPECT_STREAM" --timeout 30
  check_result "$out/raw/$SYS.stream.json"
}
run_idle_scenario() {
  local pids f opened
  log "$SYS: $IDLE concurrent open streams, held ${HOLD}s"
  mapfile -t pids < <(sys_pids idle)
  local pid_args=() p
  for p in "${pids[@]}"; do pid_args+=(--pid "$p"); done
  loadgen idle idle --idle-streams "$IDLE" --hold "$HOLD" --ramp-timeout 90 "${pid_args[@]}"
  f=$out/raw/$SYS.idle.json
  opened=$(jq -r '.idle.opened' "$f")
  if [ "$opened" != "$IDLE" ]; then
    problem soft "$SYS/idle: only $opened of $IDLE streams opened ($(jq -r .first_error "$f"))"
  fi
}

# Many keys, and floods of invalid keys (tollgate only). KEYS_TOTAL filler keys (other keys, as
# far as the request path can tell) go into api_keys, tollgate restarts with a cold cache, and
# concurrency 1 + max throughput run again: the bench key is looked up once, then cached. Then
# two floods of keys that do not exist, a new key per request: "garbage" (random, so the checksum
# is wrong) and "forged" (random with a valid CRC32 checksum: what an attacker who read our
# source sends; tollgate's key filter refuses those after a 25 ms grace for keys whose creation
# NOTIFY is in flight, so this flood runs slower). Each must be answered 401; what reaches
# PostgreSQL is counted by tollgate_key_lookups_total (one query per lookup).
cat >"$state/flood.lua" <<'EOF'
-- wrk: a POST with a new, non-existent API key per request. BENCH_FLOOD=garbage|forged.
local alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
local forged = os.getenv("BENCH_FLOOD") == "forged"
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
local body = f:read("*a")
f:close()
local crc_table = {}
for i = 0, 255 do
  local c = i
  for _ = 1, 8 do
    if bit.band(c, 1) == 1 then c = bit.bxor(bit.rshift(c, 1), 0xEDB88320) else c = bit.rshift(c, 1) end
  end
  crc_table[i] = c
end
local function crc32(s)
  local c = 0xFFFFFFFF
  for i = 1, #s do
    c = bit.bxor(bit.rshift(c, 8), crc_table[bit.band(bit.bxor(c, s:byte(i)), 0xFF)])
  end
  c = bit.bxor(c, 0xFFFFFFFF)
  if c < 0 then c = c + 4294967296 end
  return c
end
local function base62(n, width)
  local out = {}
  for i = width, 1, -1 do
    local d = n % 62
    out[i] = alphabet:sub(d + 1, d + 1)
    n = (n - d) / 62
  end
  return table.concat(out)
end
math.randomseed(os.time())
request = function()
  local r = {}
  for i = 1, 32 do
    local d = math.random(0, 61)
    r[i] = alphabet:sub(d + 1, d + 1)
  end
  local random_part = table.concat(r)
  local sum = forged and base62(crc32(random_part), 6) or base62(math.random(0, 56800235583), 6)
  return wrk.format("POST", nil, {["Content-Type"] = "application/json",
                                  ["Authorization"] = "Bearer tg_" .. random_part .. sum}, body)
end
function done(summary, latency, requests)
  io.write(string.format('WRKJSON {"requests":%d,"duration_us":%d,"non2xx":%d,"p50":%.1f,"p99":%.1f}\n',
    summary.requests, summary.duration, summary.errors.status, latency:percentile(50), latency:percentile(99)))
end
EOF
metric() { curl -fsS --max-time 2 "http://127.0.0.1:$TG_ADMIN_PORT/metrics" | awk -v m="$1" '$1 == m {print $2}'; }
run_keys_scenarios() {
  local t0 t1 kind m0 m1 f
  # The same two measurements just before the insert, so that the comparison is not skewed by
  # how this shared machine drifts over the minutes since the plain scenarios.
  log "tollgate: concurrency 1 and max throughput just before the keys go in"
  start_tollgate plain 1; set_system tollgate
  functional_check plain "$EXPECT_PLAIN" || return 0
  loadgen c1-before-keys plain --concurrency 1 --duration "$D_C1" --warmup 0.2 --expect "$EXPECT_PLAIN"
  check_result "$out/raw/$SYS.c1-before-keys.json"
  run_wrk max-before-keys plain "$D_MAX"
  check_result "$out/raw/$SYS.max-before-keys.json"
  stop_tollgate before-keys-t1
  log "tollgate: $KEYS_TOTAL more keys in api_keys"
  t0=$(date +%s%N)
  # The insert trigger would NOTIFY cache invalidations nobody needs: these keys are new.
  q -c "ALTER TABLE api_keys DISABLE TRIGGER api_keys_notify_insert_delete" \
    -c "INSERT INTO api_keys (user_id, key_hash, key_prefix, name)
        SELECT '$ACCOUNT', encode(sha256(('bench-filler-' || g)::text::bytea), 'hex'), 'tg_filler', 'bench filler'
        FROM generate_series(1, $KEYS_TOTAL) g" \
    -c "ALTER TABLE api_keys ENABLE TRIGGER api_keys_notify_insert_delete"
  t1=$(date +%s%N)
  echo "{\"keys_total\":$(q -c 'SELECT count(*) FROM api_keys'),\"insert_ms\":$(( (t1 - t0) / 1000000 ))}" >"$out/raw/keys.json"
  # Vacuum and checkpoint now, so that PostgreSQL's upkeep after a million inserts (autovacuum,
  # a checkpoint) does not run during the measurements below and pass for a hot-path cost.
  q -c "VACUUM (ANALYZE) api_keys" -c "CHECKPOINT"
  local tlog=$out/logs/tollgate-plain-t1.log loaded
  loaded=$(grep -c "key filter: .* loaded" "$tlog" 2>/dev/null || true)
  start_tollgate plain 1; set_system tollgate
  # Measure once the key filter holds every key (~1 s for a million): the goal is the hot path
  # with a million keys, not the start-up load running under the measurement.
  for _ in $(seq 600); do
    (( $(grep -c "key filter: .* loaded" "$tlog" 2>/dev/null || true) > ${loaded:-0} )) && break
    sleep 0.1
  done
  log "tollgate: $(grep -o "key filter: .* loaded in [0-9]* ms" "$tlog" | tail -n1)"
  functional_check plain "$EXPECT_PLAIN" || return 0
  loadgen c1-keys plain --concurrency 1 --duration "$D_C1" --warmup 0.2 --expect "$EXPECT_PLAIN"
  check_result "$out/raw/$SYS.c1-keys.json"
  run_wrk max-keys plain "$D_MAX"
  check_result "$out/raw/$SYS.max-keys.json"
  for kind in garbage forged; do
    log "tollgate: flood of $kind keys (${D_FLOOD}s)"
    m0=$(metric tollgate_key_lookups_total)
    f=$out/raw/tollgate.flood-$kind.json
    BENCH_BODY=$state/plain.json BENCH_FLOOD=$kind timeout $((D_FLOOD + 30)) \
      wrk -t1 -c16 -d"${D_FLOOD}s" --timeout 10s -s "$state/flood.lua" "${URL[plain]}" >"$state/wrk.out" 2>&1 \
      || die "wrk failed for the $kind flood: $(cat "$state/wrk.out")"
    m1=$(metric tollgate_key_lookups_total)
    sed -n 's/^WRKJSON //p' "$state/wrk.out" | jq --argjson lookups "$((m1 - m0))" --arg kind "$kind" \
      '. + {kind:$kind, rps:(.requests / (.duration_us / 1e6)), pg_lookups:$lookups}' >"$f"
    [ -s "$f" ] || die "no result from the $kind flood"
    [ "$(jq -r '.non2xx == .requests' "$f")" = true ] || problem soft "tollgate/flood-$kind: some invalid keys were not refused"
  done
  stop_tollgate keys-t1
}

# ------------------------------------------------------------------ run
ulimit -c 0
systems=(direct nginx)
[ "$portkey" = yes ] && systems+=(portkey)
systems+=(tollgate)
[ "$TWO_THREADS" = 1 ] && systems+=(tollgate-2t)
if [ -n "$only" ]; then
  keep=()
  for s in "${systems[@]}"; do [[ " $only " == *" $s "* ]] && keep+=("$s"); done
  systems=("${keep[@]}")
  ((${#systems[@]})) || die "--systems '$only' selects nothing"
fi
log "mode $mode: systems ${systems[*]}; results in $out"

[[ " ${systems[*]} " == *" nginx "* ]] && start_nginx
[[ " ${systems[*]} " == *" portkey "* ]] && start_portkey

for s in "${systems[@]}"; do
  case $s in
    tollgate)
      start_tollgate plain 1; set_system tollgate; run_plain_scenarios
      stop_tollgate plain-t1
      start_tollgate stream 1; set_system tollgate; run_stream_scenarios; stop_tollgate stream-t1
      start_tollgate idle 1; set_system tollgate; run_idle_scenario; stop_tollgate idle-t1
      run_keys_scenarios ;;
    tollgate-2t)
      start_tollgate plain 2; set_system tollgate-2t
      if [ "$mode" = full ]; then run_plain_scenarios
      else
        functional_check plain "$EXPECT_PLAIN" || true
        log "tollgate-2t: max throughput (2 event-loop threads)"
        loadgen warmup plain --concurrency 16 --duration "$D_WARM" --expect "$EXPECT_PLAIN"
        run_wrk max plain "$D_MAX"; check_result "$out/raw/$SYS.max.json"
      fi
      stop_tollgate plain-t2 ;;
    *)
      set_system "$s"; run_plain_scenarios; run_stream_scenarios; run_idle_scenario ;;
  esac
done

# Usage recording: rows the proxy runs recorded, then the writer's capacity on its own.
recorded=$(q -c "SELECT count(*) FROM usage_logs WHERE user_id = '$ACCOUNT'")
((recorded > 0)) || problem fatal "tollgate: no usage rows in PostgreSQL after the runs"
log "usage recording: $recorded rows recorded by the runs; writer capacity with $USAGE_ROWS rows"
pg_cpu_ns() {  # PostgreSQL: live processes + what the postmaster reaped (ended backends)
  local pm reaped
  pm=$(head -n1 "$svc_data/pg/postmaster.pid")
  reaped=$(awk '{print $16 + $17}' "/proc/$pm/stat")
  echo $(( $(cpu_ns "$pm" $(pgrep -P "$pm")) + reaped * 1000000000 / $(getconf CLK_TCK) ))
}
pg0=$(pg_cpu_ns)
"$UB" --database-url "$TOLLGATE_DATABASE_URL" --journal-dir "$state/usagebench" --user "$ACCOUNT" --key "$KEY_ID" \
  --rows "$USAGE_ROWS" --json >"$out/raw/usage.json" 2>>"$out/logs/usagebench.log" \
  || problem fatal "usage bench: not every record was committed (see logs/usagebench.log)"
sleep 0.3   # let the postmaster reap the bench's backend
pg1=$(pg_cpu_ns)
jq --argjson rec "$recorded" --argjson pg "$((pg1 - pg0))" '. + {recorded_by_runs:$rec, pg_cpu_ns:$pg}' \
  "$out/raw/usage.json" >"$out/raw/usage.json.tmp" && mv "$out/raw/usage.json.tmp" "$out/raw/usage.json"

# A Redis round trip on its own, the floor under admission's latency: redis-benchmark PING at
# concurrency 1 (its latency buckets are 8 µs wide), over TCP and over the socket if there is one.
redis_rtt() { redis-benchmark "$@" -c 1 -n "$([ "$mode" = smoke ] && echo 2000 || echo 20000)" -t ping_mbulk --csv 2>/dev/null |
  awk -F'"' 'NR == 2 { print $10 * 1000 }'; }
rtt_tcp=$(redis_rtt -h 127.0.0.1 -p "$TOLLGATE_REDIS_PORT"); rtt_unix=null
if [ -n "${TOLLGATE_REDIS_SOCKET:-}" ]; then rtt_unix=$(redis_rtt -s "$TOLLGATE_REDIS_SOCKET"); fi
jq -n --argjson tcp "${rtt_tcp:-null}" --argjson unix "${rtt_unix:-null}" --arg via "$redis_via" \
  '{redis_rtt: {tcp_p50_us: $tcp, unix_p50_us: $unix, via: $via}}' >"$out/raw/redis_rtt.json"

# ------------------------------------------------------------------ metadata, report
elapsed=$(( $(date +%s) - started_at ))
failures_json=$(printf '%s\n' "${functional_failures[@]+"${functional_failures[@]}"}" "${warnings[@]+"${warnings[@]}"}" | jq -R . | jq -s 'map(select(length > 0))')
jq -n --arg mode "$mode" --arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" --arg cpu "$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -n1)" \
  --argjson cores "$(nproc)" --arg kernel "$(uname -r)" --arg nginx "$("$NGINX" -v 2>&1 | sed 's/.*version: //')" \
  --arg wrk "$(wrk -v 2>&1 | head -n1 | awk '{print $2}')" --arg node "$(node -v 2>/dev/null || echo none)" \
  --arg portkey "$([ "$portkey" = yes ] && jq -r .version "$PORTKEY_DIR/node_modules/@portkey-ai/gateway/package.json" || echo "not run: $portkey_note")" \
  --arg rates "$RATES" --argjson stream_rate "$STREAM_RATE" --argjson stream_chunks "$STREAM_CHUNKS" \
  --argjson stream_interval "$STREAM_INTERVAL" --argjson idle "$IDLE" --argjson hold "$HOLD" --argjson conns "$CONNS" \
  --argjson d_c1 "$D_C1" --argjson d_max "$D_MAX" --argjson d_rate "$D_RATE" --argjson d_stream "$D_STREAM" \
  --argjson elapsed "$elapsed" --argjson failures "$failures_json" --arg systems "${systems[*]}" \
  --arg load "$(cut -d' ' -f1-3 /proc/loadavg)" --arg idle_note "$idle_note" --arg args "${orig_args:---quick}" --arg redis "$redis_via" \
  '{mode:$mode, date:$date, cpu:$cpu, cores:$cores, kernel:$kernel, nginx:$nginx, wrk:$wrk, node:$node,
    portkey:$portkey, rates:($rates | split(" ") | map(tonumber)), stream_rate:$stream_rate,
    stream_chunks:$stream_chunks, stream_interval_ms:$stream_interval, idle_streams:$idle, hold_s:$hold,
    connections:$conns, d_c1:$d_c1, d_max:$d_max, d_rate:$d_rate, d_stream:$d_stream,
    elapsed_s:$elapsed, functional_failures:$failures, systems:($systems | split(" ")), loadavg_end:$load, idle_note:$idle_note, args:$args,
    redis:$redis}' >"$out/meta.json"
bash "$ROOT/bench/report.sh" "$out" >/dev/null || die "report generation failed"
if [ "$mode" != smoke ] && [[ $out == "$ROOT/bench/results/"* ]]; then ln -sfn "$(basename "$out")" "$ROOT/bench/results/latest"; fi

# The goals and the main table on the terminal too (the ctest log keeps them).
sed -n '/^## Goals/,/^## Streaming/p' "$out/report.md" | sed '$d' >&2
log "done in $(( $(date +%s) - started_at ))s: $out/report.md"
if ((${#functional_failures[@]})); then
  printf 'bench: FUNCTIONAL FAILURE: %s\n' "${functional_failures[@]}" >&2
  keep_out=1
  echo "bench: results kept in $out" >&2
  exit 1
fi
[ "$mode" = smoke ] && echo "bench: smoke OK: every system answered correctly" >&2
exit 0
