#!/usr/bin/env bash
# `make run-cluster`: the scale-out profile on one host. nginx on http://$HOST:$PORT in
# front of $PROCESSES daphne processes (ports PORT+1…), two Celery workers and beat,
# all on one Postgres and one Redis. Metrics from every process are merged at
# /metrics (PROMETHEUS_MULTIPROC_DIR). Ctrl-C stops everything.
#
#   DATABASE_URL  (postgres://postgres@127.0.0.1:5432/natter)  created if missing
#   REDIS_URL     (redis://127.0.0.1:6379/0)
#   PROCESSES     (the number of CPUs)   daphne processes
#   HOST, PORT    (127.0.0.1, 8000)      where nginx listens
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

HOST=${HOST:-127.0.0.1}
PORT=${PORT:-8000}
PROCESSES=${PROCESSES:-$(nproc)}
export DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/natter}
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379/0}
export PYTHONUNBUFFERED=1
BIN=.venv/bin
CLUSTER=$(realpath -m "${CLUSTER_DIR:-var/cluster}")
LOG_TAG=run-cluster
# shellcheck source=scripts/procs.sh
. scripts/procs.sh

NGINX=$(command -v nginx || true)
if [ -z "$NGINX" ] && [ -x /usr/sbin/nginx ]; then NGINX=/usr/sbin/nginx; fi
if [ -z "$NGINX" ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        log "installing nginx from Debian's packages"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx-light >/dev/null \
            || DEBIAN_FRONTEND=noninteractive apt-get install -y -q nginx >/dev/null
        NGINX=/usr/sbin/nginx
    else
        log "nginx is needed: sudo apt-get install nginx-light"
        exit 1
    fi
fi

bash scripts/services.sh ensure
"$BIN/python" - <<'PY'
import os, subprocess
from urllib.parse import urlparse
url = urlparse(os.environ["DATABASE_URL"])
subprocess.run(["createdb", "-h", url.hostname or "127.0.0.1", "-p", str(url.port or 5432),
                "-U", url.username or "postgres", url.path.lstrip("/")], capture_output=True)
PY
"$BIN/python" manage.py migrate --noinput
"$BIN/python" manage.py collectstatic --noinput -v0

rm -rf "$CLUSTER"
mkdir -p "$CLUSTER/nginx" "$CLUSTER/prometheus"
export PROMETHEUS_MULTIPROC_DIR=$CLUSTER/prometheus

upstreams=""
for ((i = 1; i <= PROCESSES; i++)); do
    upstreams+="        server 127.0.0.1:$((PORT + i)) max_fails=0;"$'\n'
done
user_line=""
if [ "$(id -u)" -eq 0 ]; then user_line="user root;"; fi
sed -e "s|@USER@|$user_line|" -e "s|@PREFIX@|$CLUSTER/nginx|g" \
    -e "s|@LISTEN@|$HOST:$PORT|" deploy/nginx/natter.conf.template |
    awk -v ups="$upstreams" '{ if ($0 == "@UPSTREAMS@") printf "%s", ups; else print }' \
        >"$CLUSTER/nginx.conf"
"$NGINX" -t -q -c "$CLUSTER/nginx.conf" -p "$CLUSTER/nginx"

start "celery worker 1" "$BIN/celery" -A config worker -l info --concurrency 1 -n "w1-$$@%h"
start "celery worker 2" "$BIN/celery" -A config worker -l info --concurrency 1 -n "w2-$$@%h"
start "celery beat" "$BIN/celery" -A config beat -l info --schedule "$CLUSTER/celerybeat-schedule"
for ((i = 1; i <= PROCESSES; i++)); do
    start "daphne $i" "$BIN/python" -m config.server -e "tcp:port=$((PORT + i)):interface=127.0.0.1:backlog=4096" \
        --websocket_timeout -1 config.asgi:application
done
# nginx starts once every daphne accepts connections.
for ((i = 1; i <= PROCESSES; i++)); do
    for _ in $(seq 1 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$((PORT + i))") 2>/dev/null; then break; fi
        sleep 0.2
    done
done
start nginx "$NGINX" -c "$CLUSTER/nginx.conf" -p "$CLUSTER/nginx" -g "daemon off;"

log "Natter cluster on http://$HOST:$PORT/ — nginx, $PROCESSES daphne (ports $((PORT + 1))-$((PORT + PROCESSES))), 2 workers, beat"
supervise
