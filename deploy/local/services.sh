#!/usr/bin/env bash
# Throwaway, unprivileged PostgreSQL 15 + Redis 7 for tests and local runs (Debian 12).
#
#   services.sh install            apt-get install postgresql redis-server (only if missing)
#   services.sh start DIR          start both on free 127.0.0.1 ports, write DIR/env, print URLs
#   services.sh stop DIR           stop both (idempotent)
#   services.sh stop-redis DIR     stop only Redis
#   services.sh start-redis DIR    start only Redis again, on the same port as before
#   services.sh stop-pg DIR        stop only PostgreSQL (fast shutdown: sessions are cut)
#   services.sh start-pg DIR       start only PostgreSQL again, on the same port as before
#   services.sh destroy DIR        stop both and delete their data
#
# DIR/env is sourceable: TOLLGATE_DATABASE_URL, TOLLGATE_REDIS_URL, TOLLGATE_PG_PORT,
# TOLLGATE_REDIS_PORT, TOLLGATE_PG_BIN, and TOLLGATE_REDIS_SOCKET: Redis also listens on the Unix
# socket DIR/redis/redis.sock (mode 700: the service user and root), for a co-located tollgate
# (unix://$TOLLGATE_REDIS_SOCKET); unset if that path is too long for a socket. Data lives in
# DIR/{pg,redis,log,run}. As root the servers run as system user "tollgate"; if that user cannot
# traverse DIR (e.g. under /root), the data goes to /tmp/tollgate-<hash of DIR> and DIR/data is
# a symlink to it.
set -euo pipefail

PGBIN=/usr/lib/postgresql/15/bin
SVC_USER=tollgate
TIMEOUT=30

die() { echo "services.sh: error: $*" >&2; exit 1; }
log() { echo "services.sh: $*" >&2; }
is_root() { [[ $(id -u) -eq 0 ]]; }
# run as the service user; fd 9 (our lock) must not leak into the daemons
as_svc() { if is_root; then runuser -u "$SVC_USER" -- "$@" 9>&-; else "$@" 9>&-; fi; }
have_pkgs() { [[ -x $PGBIN/initdb ]] && command -v redis-server >/dev/null && command -v redis-cli >/dev/null; }

cmd_install() {
  have_pkgs && { log "postgresql 15 and redis-server already installed"; return; }
  local sudo=()
  if ! is_root; then command -v sudo >/dev/null || die "not root and sudo not found"; sudo=(sudo); fi
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y postgresql redis-server
  have_pkgs || die "install finished but $PGBIN/initdb or redis-server is still missing"
}

# Sets DIR (absolute), R (real data root), and creates the layout owned by the service user.
setup() {
  [[ -n ${1:-} ]] || die "missing DIR argument"
  have_pkgs || die "postgresql 15 / redis-server not installed; run: $0 install"
  mkdir -p "$1" && DIR=$(cd "$1" && pwd -P) || die "cannot create state folder $1"
  cd /   # the service user may not be able to access the caller's cwd
  if is_root && ! id -u "$SVC_USER" >/dev/null 2>&1; then
    useradd --system --no-create-home --shell /usr/sbin/nologin "$SVC_USER" 2>/dev/null \
      || id -u "$SVC_USER" >/dev/null 2>&1 || die "could not create system user $SVC_USER"
  fi
  exec 9>"$DIR/.lock"; flock -w 120 9 || die "another services.sh holds $DIR/.lock"
  if [[ -L $DIR/data ]]; then R=$(readlink "$DIR/data")
  elif as_svc test -x "$DIR"; then R=$DIR
  else
    R=/tmp/tollgate-$(printf %s "$DIR" | sha256sum | cut -c1-16)
    log "user $SVC_USER cannot reach $DIR; keeping data in $R (symlink $DIR/data)"
    ln -sfn "$R" "$DIR/data"
  fi
  if [[ ! -d $R ]]; then mkdir -m 700 "$R"; fi
  mkdir -p "$R"/{redis,log,run}
  if is_root; then chown "$SVC_USER:" "$R"/{redis,log,run}; [[ $R == "$DIR" ]] || chown "$SVC_USER:" "$R"; fi
  local me; me=$(as_svc id -un)
  [[ $(stat -c %U "$R/run") == "$me" && ( $R == "$DIR" || $(stat -c %U "$R") == "$me" ) ]] \
    || die "$R or $R/run is not owned by $me; remove it"
  PGD=$R/pg; PGLOG=$R/log/postgres.log; RLOG=$R/log/redis.log; RPID=$R/run/redis.pid
  # Redis' Unix socket, in its data folder: the service user creates it there; root, or the same
  # user when not root, connects. sun_path holds 107 bytes.
  RSOCK=$R/redis/redis.sock
  if (( ${#RSOCK} > 107 )); then log "$RSOCK is too long for a Unix socket; redis listens on TCP only"; RSOCK=""; fi
  OLD_PG=""; OLD_REDIS=""
  if [[ -f $DIR/env ]]; then
    OLD_PG=$(sed -n 's/^export TOLLGATE_PG_PORT=\([0-9]*\)$/\1/p' "$DIR/env")
    OLD_REDIS=$(sed -n 's/^export TOLLGATE_REDIS_PORT=\([0-9]*\)$/\1/p' "$DIR/env")
  fi
}

port_free() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 1
  if command -v ss >/dev/null; then [[ -z $(ss -Hltn "sport = :$1") ]]; fi
}
# pick_port PREFERRED AVOID: PREFERRED if free, else a random free port in 20000-31999.
pick_port() {
  if [[ -n $1 ]] && port_free "$1"; then echo "$1"; return; fi
  local p i
  for i in $(seq 200); do
    p=$((20000 + RANDOM % 12000))
    [[ $p != "${2:-}" ]] && port_free "$p" && { echo "$p"; return; }
  done
  die "no free TCP port found"
}
live_comm() {  # print the command name of pid $1 if it is alive (zombies count as dead)
  [[ $(sed -n 's/^State:[[:space:]]*\(.\).*/\1/p' "/proc/$1/status" 2>/dev/null) == [^ZX] ]] && cat "/proc/$1/comm"
}
diag() { log "$1"; for f in "${@:2}"; do [[ -f $f ]] && { echo "--- tail $f" >&2; tail -n 40 "$f" >&2; }; done; return 0; }

# ---------------- PostgreSQL ----------------
pg_running() {  # 0 if our postmaster is alive; drops a stale postmaster.pid
  [[ -f $PGD/postmaster.pid ]] || return 1
  local pid; pid=$(head -n1 "$PGD/postmaster.pid")
  if [[ $(live_comm "$pid") != postgres || $(readlink "/proc/$pid/cwd") != "$PGD" ]]; then
    log "removing stale $PGD/postmaster.pid (pid $pid is gone)"
    rm -f "$PGD/postmaster.pid" "$R/run/.s.PGSQL."*; return 1
  fi
  as_svc "$PGBIN/pg_ctl" status -D "$PGD" >/dev/null
}
pg_init() {
  [[ -f $PGD/PG_VERSION ]] && return
  rm -rf "$PGD.tmp"; mkdir -m 700 "$PGD.tmp"; if is_root; then chown "$SVC_USER:" "$PGD.tmp"; fi
  as_svc "$PGBIN/initdb" -D "$PGD.tmp" -U tollgate -A trust -E UTF8 --locale=C >"$R/log/initdb.log" 2>&1 \
    || { diag "initdb failed" "$R/log/initdb.log"; exit 1; }
  local sock=$R/run; (( ${#sock} < 90 )) || sock=""   # unix socket paths are limited to ~107 bytes
  cat >>"$PGD.tmp/postgresql.conf" <<EOF
# --- tollgate services.sh ---
listen_addresses = '127.0.0.1'
unix_socket_directories = '$sock'
max_connections = 200
fsync = on
synchronous_commit = on
EOF
  printf '%s\n' "local all all trust" "host all all 127.0.0.1/32 trust" >"$PGD.tmp/pg_hba.conf"
  mv "$PGD.tmp" "$PGD"
}
pg_start() {
  local try port
  if pg_running; then PGPORT=$(sed -n 4p "$PGD/postmaster.pid"); return; fi
  pg_init
  for try in 1 2 3 4; do
    port=$(pick_port "$OLD_PG" "${OLD_REDIS:-}")
    if as_svc "$PGBIN/pg_ctl" start -D "$PGD" -l "$PGLOG" -w -t "$TIMEOUT" -o "-p $port" >/dev/null; then
      PGPORT=$port; return
    fi
    diag "postgres failed to start on port $port (attempt $try)" "$PGLOG"; OLD_PG=$port; sleep 1
  done
  die "could not start postgres; see $PGLOG"
}
pg_start_same_port() {  # PostgreSQL again on $OLD_PG (clients keep their URL)
  if pg_running; then PGPORT=$(sed -n 4p "$PGD/postmaster.pid"); return; fi
  port_free "$OLD_PG" || die "postgres port $OLD_PG is taken by another process"
  as_svc "$PGBIN/pg_ctl" start -D "$PGD" -l "$PGLOG" -w -t "$TIMEOUT" -o "-p $OLD_PG" >/dev/null \
    || { diag "postgres failed to start on port $OLD_PG" "$PGLOG"; exit 1; }
  PGPORT=$OLD_PG
}
pg_wait_and_db() {
  local i
  for ((i = 0; i < TIMEOUT * 2; i++)); do
    "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PGPORT" -U tollgate -d postgres && break; sleep 0.5
  done
  "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PGPORT" -U tollgate -d postgres || { diag "postgres not ready after ${TIMEOUT}s" "$PGLOG"; exit 1; }
  local q=(env PGCONNECT_TIMEOUT=10 "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PGPORT" -U tollgate -d postgres -tA)
  [[ $("${q[@]}" -c "select 1 from pg_database where datname = 'tollgate'") == 1 ]] \
    || "${q[@]}" -c "create database tollgate" || die "could not create database tollgate"
}
pg_stop() {
  pg_running || return 0
  as_svc "$PGBIN/pg_ctl" stop -D "$PGD" -m fast -w -t "$TIMEOUT" >/dev/null \
    || { diag "postgres did not stop within ${TIMEOUT}s" "$PGLOG"; exit 1; }
}

# ---------------- Redis ----------------
redis_ours() {  # 0 if a redis answering on port $1 is the one serving our data folder
  [[ -n ${1:-} ]] || return 1
  [[ $(timeout 3 redis-cli -p "$1" config get dir 2>/dev/null | sed -n 2p) == "$R/redis" ]]
}
redis_start() {  # redis_start PREFERRED_PORT STRICT(1 = must use that port)
  local try port i
  if redis_ours "$1"; then REDISPORT=$1; return; fi
  if redis_alive; then log "redis is running but not answering; restarting it"; redis_stop; fi
  for try in 1 2 3 4; do
    if [[ $2 == 1 ]]; then port_free "$1" || die "redis port $1 is taken by another process"; port=$1
    else port=$(pick_port "$1" "${PGPORT:-}"); fi
    rm -f "$RPID"
    local sock=(); [[ -z $RSOCK ]] || sock=(--unixsocket "$RSOCK" --unixsocketperm 700)
    as_svc redis-server --bind 127.0.0.1 --port "$port" "${sock[@]}" --save '' --appendonly no --daemonize yes \
      --pidfile "$RPID" --logfile "$RLOG" --dir "$R/redis" >/dev/null 2>&1 || true
    for ((i = 0; i < TIMEOUT * 2; i++)); do
      redis_ours "$port" && { REDISPORT=$port; return; }
      (( i > 6 )) && ! redis_alive && break   # it exited (e.g. port taken meanwhile)
      sleep 0.5
    done
    diag "redis failed to start on port $port (attempt $try)" "$RLOG"; set -- "" "$2"
    [[ $2 == 1 ]] && break
  done
  die "could not start redis; see $RLOG"
}
redis_alive() {  # 0 if the pidfile names a live process working in our redis dir
  local pid; pid=$(cat "$RPID" 2>/dev/null) || return 1
  [[ -n $pid && $(live_comm "$pid") == redis-server && $(readlink "/proc/$pid/cwd") == "$R/redis" ]]
}
redis_stop() {
  local i
  if redis_ours "$OLD_REDIS"; then timeout 10 redis-cli -p "$OLD_REDIS" shutdown nosave >/dev/null 2>&1 || true
  elif redis_alive; then kill -TERM "$(cat "$RPID")" || true; fi   # not answering: signal it
  for ((i = 0; i < TIMEOUT * 2; i++)); do
    redis_alive || { rm -f "$RPID"; return 0; }
    sleep 0.5
  done
  log "redis (pid $(cat "$RPID")) ignored shutdown; killing it"; kill -9 "$(cat "$RPID")" || true; rm -f "$RPID"
}

# The Unix socket the running Redis listens on (none if it was started by an older services.sh).
redis_socket() {
  local s; s=$(timeout 3 redis-cli -p "$REDISPORT" config get unixsocket 2>/dev/null | sed -n 2p)
  if [[ -n $RSOCK && $s == "$RSOCK" && -S $RSOCK ]]; then echo "$RSOCK"; return; fi
  [[ -z $RSOCK ]] || log "redis on port $REDISPORT has no socket $RSOCK (started by an older services.sh?); to get one: $0 stop-redis $DIR && $0 start-redis $DIR"
}
write_env() {
  local db="postgresql://tollgate@127.0.0.1:$PGPORT/tollgate" rd="redis://127.0.0.1:$REDISPORT" sock
  sock=$(redis_socket)
  {
    cat <<EOF
export TOLLGATE_DATABASE_URL=$db
export TOLLGATE_REDIS_URL=$rd
export TOLLGATE_PG_PORT=$PGPORT
export TOLLGATE_REDIS_PORT=$REDISPORT
export TOLLGATE_PG_BIN=$PGBIN
EOF
    [[ -z $sock ]] || printf 'export TOLLGATE_REDIS_SOCKET=%q\n' "$sock"
  } >"$DIR/env.tmp"
  mv "$DIR/env.tmp" "$DIR/env"
  echo "TOLLGATE_DATABASE_URL=$db"; echo "TOLLGATE_REDIS_URL=$rd"
  [[ -z $sock ]] || echo "TOLLGATE_REDIS_SOCKET=$sock"
}

# stop-like commands on a DIR that does not exist are a no-op
if [[ ${1:-} == @(stop|stop-redis|stop-pg|destroy) && -n ${2:-} && ! -d ${2:-} ]]; then log "$2 does not exist; nothing to do"; exit 0; fi
case "${1:-}" in
  install) cmd_install ;;
  start) setup "${2:-}"; pg_start; pg_wait_and_db; redis_start "$OLD_REDIS" 0; write_env ;;
  stop) setup "${2:-}"; redis_stop; pg_stop; log "stopped services in $DIR" ;;
  stop-redis) setup "${2:-}"; redis_stop; log "stopped redis in $DIR" ;;
  start-redis)
    setup "${2:-}"; [[ -n $OLD_REDIS ]] || die "$DIR/env has no redis port; run: $0 start $DIR"
    redis_start "$OLD_REDIS" 1; log "redis is up on 127.0.0.1:$REDISPORT" ;;
  stop-pg) setup "${2:-}"; pg_stop; log "stopped postgres in $DIR" ;;
  start-pg)
    setup "${2:-}"; [[ -n $OLD_PG ]] || die "$DIR/env has no postgres port; run: $0 start $DIR"
    pg_start_same_port; pg_wait_and_db; log "postgres is up on 127.0.0.1:$PGPORT" ;;
  destroy)
    setup "${2:-}"; redis_stop; pg_stop
    rm -rf "$R"/{pg,pg.tmp,redis,log,run} "$DIR/env"
    if [[ $R == /tmp/tollgate-* ]]; then rm -rf "$R" "$DIR/data"; fi
    rm -f "$DIR/.lock"; rmdir "$DIR" 2>/dev/null || true; log "destroyed $DIR" ;;
  *) sed -n '2,19s/^# \{0,1\}//p' "$0" >&2; exit 2 ;;
esac
