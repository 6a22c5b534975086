#!/usr/bin/env bash
# The run command (README): installs what is missing, builds, starts PostgreSQL and Redis as
# unprivileged processes under .run/local, migrates, seeds demo prices/rule/account/key, starts
# the stub upstream (or uses OpenRouter when TOLLGATE_UPSTREAM_KEY is set), and serves on
# 127.0.0.1:8080 (TOLLGATE_LISTEN to change), reaching Redis over its Unix socket. Ctrl-C stops
# tollgate and the stub; the databases keep running (deploy/local/services.sh stop .run/local
# stops them).
set -euo pipefail
cd "$(dirname "$0")/.."

bash deploy/install-deps.sh
bash deploy/build.sh
state=.run/local
bash deploy/local/services.sh start "$state" >/dev/null
unset TOLLGATE_REDIS_SOCKET   # only the one services.sh writes
# shellcheck disable=SC1091
source "$state/env"
# Redis runs on this machine: tollgate reaches it over its Unix socket (faster than loopback TCP)
# when services.sh made one, else over TCP.
if [ -n "${TOLLGATE_REDIS_SOCKET:-}" ]; then export TOLLGATE_REDIS_URL=unix://$TOLLGATE_REDIS_SOCKET; fi
tg=build/bin/tollgate
$tg migrate

stub_pid=""
cleanup() { [ -z "$stub_pid" ] || kill "$stub_pid" 2>/dev/null || true; }
trap cleanup EXIT
if [ -n "${TOLLGATE_UPSTREAM_KEY:-}" ]; then
  export TOLLGATE_UPSTREAM_URL=${TOLLGATE_UPSTREAM_URL:-https://openrouter.ai/api/v1}
  echo "run: upstream is $TOLLGATE_UPSTREAM_URL (your TOLLGATE_UPSTREAM_KEY)"
else
  rm -f "$state/stub.port"
  build/bin/tollgate-stub --listen 127.0.0.1:0 --port-file "$state/stub.port" \
    --require-key stub-upstream-key --chunk-interval-ms 20 >"$state/stub.log" 2>&1 &
  stub_pid=$!
  for _ in $(seq 100); do [ -s "$state/stub.port" ] && break; sleep 0.05; done
  [ -s "$state/stub.port" ] || { cat "$state/stub.log" >&2; exit 1; }
  export TOLLGATE_UPSTREAM_URL="http://127.0.0.1:$(cat "$state/stub.port")/api/v1"
  export TOLLGATE_UPSTREAM_KEY=stub-upstream-key
  echo "run: upstream is the local stub at $TOLLGATE_UPSTREAM_URL (set TOLLGATE_UPSTREAM_KEY for OpenRouter)"
fi

key_file=.run/demo-key.txt
bash deploy/local/seed.sh "$TOLLGATE_UPSTREAM_URL" "$TOLLGATE_UPSTREAM_KEY" "$key_file"
listen=${TOLLGATE_LISTEN:-127.0.0.1:8080}
export TOLLGATE_LISTEN=$listen TOLLGATE_JOURNAL_DIR=${TOLLGATE_JOURNAL_DIR:-.run/journal}
model=$(psql -X -A -t "$TOLLGATE_DATABASE_URL" -c "SELECT model FROM model_prices ORDER BY model = 'openai/gpt-4o-mini' DESC, model LIMIT 1")
cat <<MSG

tollgate is starting on http://$listen — your demo API key is in $key_file. Try:

  curl http://$listen/v1/chat/completions -H "Authorization: Bearer \$(cat $key_file)" \\
    -H 'Content-Type: application/json' \\
    -d '{"model":"$model","messages":[{"role":"user","content":"Hello!"}]}'

MSG
# Every client connection is a file descriptor: raise the soft open-file limit to the hard one
# (tollgate does so itself too; a systemd unit sets LimitNOFILE, deploy/systemd).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
# Ctrl-C reaches tollgate (the foreground process group): its graceful stop drains requests in flight
# (server.drain_timeout_ms) and flushes usage records before it exits.
$tg --config deploy/tollgate.example.toml serve
