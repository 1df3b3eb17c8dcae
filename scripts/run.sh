#!/usr/bin/env bash
# Serve Natter for development (`make run` calls this after `make install`):
# migrate, then daphne on http://$HOST:$PORT (web UI, API, WebSocket). With REDIS_URL
# set it also runs a Celery worker and beat. Ctrl-C, SIGTERM, or any one of them
# exiting stops all of them; nothing is left running.
#
#   HOST  (127.0.0.1)  interface daphne listens on
#   PORT  (8000)
#   DJANGO_DEBUG (unset: off)  set 1 for Django's debug pages
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8000}
BIN=.venv/bin
# Seconds a process gets to stop after SIGTERM before it is killed.
STOP_GRACE_S=${STOP_GRACE_S:-10}

export PYTHONUNBUFFERED=1

log() { printf 'run: %s\n' "$*" >&2; }

for tool in python daphne celery; do
    if [ ! -x "$BIN/$tool" ]; then
        log "$BIN/$tool not found: run 'make install' (or 'make run') first"
        exit 1
    fi
done
mkdir -p var

if [ -n "${DATABASE_URL:-}" ]; then
    log "database: DATABASE_URL"
else
    log "database: embedded SQLite, var/db.sqlite3"
fi
if [ -n "${REDIS_URL:-}" ]; then
    log "channel layer and Celery broker: REDIS_URL (starting a Celery worker and beat)"
else
    log "channel layer: in-memory; Celery: eager (tasks run in the web process)"
fi

"$BIN/python" manage.py migrate --noinput
"$BIN/python" manage.py collectstatic --noinput -v0

# Each process runs in its own process group (job control on while starting it), so
# that stopping it stops everything it forked (Celery's pool processes), and so that
# the terminal's Ctrl-C reaches only this script, which stops them in order.
PIDS=()
NAMES=()

start() {
    local name=$1
    shift
    set -m
    "$@" </dev/null &
    set +m
    PIDS+=("$!")
    NAMES+=("$name")
    log "started $name (pid $!)"
}

# shellcheck disable=SC2317 # called from the traps
alive() { kill -0 -- "-$1" 2>/dev/null; }

STOPPING=0
# shellcheck disable=SC2317 # called from the traps
stop_all() {
    [ "$STOPPING" -eq 0 ] || return 0
    STOPPING=1
    local i pid deadline
    # Stop in reverse order: daphne first, then beat, then the worker.
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        pid=${PIDS[i]}
        if alive "$pid"; then
            log "stopping ${NAMES[i]} (pid $pid)"
            kill -TERM -- "-$pid" 2>/dev/null || true
        fi
    done
    deadline=$((SECONDS + STOP_GRACE_S))
    for ((i = 0; i < ${#PIDS[@]}; i++)); do
        pid=${PIDS[i]}
        while alive "$pid" && [ "$SECONDS" -lt "$deadline" ]; do
            sleep 0.2
        done
        if alive "$pid"; then
            log "${NAMES[i]} did not stop within ${STOP_GRACE_S}s; killing it"
            kill -KILL -- "-$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
}

trap 'stop_all' EXIT
trap 'stop_all; exit 130' INT
trap 'stop_all; exit 143' TERM
trap 'stop_all; exit 129' HUP

if [ -n "${REDIS_URL:-}" ]; then
    start "celery worker" "$BIN/celery" -A config worker -l info --concurrency 2
    start "celery beat" "$BIN/celery" -A config beat -l info --schedule var/celerybeat-schedule
fi

# Twisted endpoint syntax: colons in an IPv6 address are escaped.
start daphne "$BIN/daphne" \
    -e "tcp:port=$PORT:interface=${HOST//:/\\:}:backlog=2048" \
    --websocket_timeout -1 \
    config.asgi:application

if [[ $HOST == *:* ]]; then url_host="[$HOST]"; else url_host=$HOST; fi
log "Natter on http://$url_host:$PORT/ (admin: /admin/); Ctrl-C stops it"

# Until one of them exits (or a signal arrives and its trap exits).
status=0
wait -n "${PIDS[@]}" || status=$?
for ((i = 0; i < ${#PIDS[@]}; i++)); do
    if ! kill -0 "${PIDS[i]}" 2>/dev/null; then
        log "${NAMES[i]} exited (status $status); stopping the others"
        break
    fi
done
exit "$status"
