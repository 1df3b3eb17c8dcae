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
export PYTHONUNBUFFERED=1
LOG_TAG=run
# shellcheck source=scripts/procs.sh
. scripts/procs.sh

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

if [ -n "${REDIS_URL:-}" ]; then
    start "celery worker" "$BIN/celery" -A config worker -l info --concurrency 2
    start "celery beat" "$BIN/celery" -A config beat -l info --schedule var/celerybeat-schedule
fi

# Twisted endpoint syntax: colons in an IPv6 address are escaped.
start daphne "$BIN/python" -m config.server \
    -e "tcp:port=$PORT:interface=${HOST//:/\\:}:backlog=2048" \
    --websocket_timeout -1 \
    config.asgi:application

if [[ $HOST == *:* ]]; then url_host="[$HOST]"; else url_host=$HOST; fi
log "Natter on http://$url_host:$PORT/ (admin: /admin/); Ctrl-C stops it"

# Until one of them exits (or a signal arrives and its trap exits).
supervise
