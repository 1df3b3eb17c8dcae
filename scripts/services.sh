#!/usr/bin/env bash
# Postgres and Redis for Natter's test suite (`make test` calls `ensure`).
#
#   scripts/services.sh ensure    check that both answer; start a local one that is
#                                 installed but stopped; else say how to provide it
#   scripts/services.sh status    only report, start nothing
#   scripts/services.sh install   (root) apt-get install -y postgresql redis-server,
#                                 then start them as `ensure` does
#
# The servers checked are the ones DATABASE_URL and REDIS_URL name, defaulting (when
# unset) to the local ones the tests use:
#   postgres://postgres@127.0.0.1:5432/natter   redis://127.0.0.1:6379/1
# Set to the empty string, a URL is skipped (the embedded default: SQLite, or the
# in-memory channel layer). Only the local defaults are started by this script: a
# server of your own at another address must already be running.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEFAULT_DATABASE_URL=postgres://postgres@127.0.0.1:5432/natter
DEFAULT_REDIS_URL=redis://127.0.0.1:6379/1
PG_HOST=127.0.0.1
PG_PORT=5432
REDIS_HOST=127.0.0.1
REDIS_PORT=6379
# How long to wait for a server just started to answer.
WAIT_S=${SERVICES_WAIT_S:-30}

DB_URL=${DATABASE_URL-$DEFAULT_DATABASE_URL}
REDIS_URL_=${REDIS_URL-$DEFAULT_REDIS_URL}

say() { printf 'services: %s\n' "$*"; }
err() { printf 'services: %s\n' "$*" >&2; }
have() { command -v "$1" >/dev/null 2>&1; }

# Host and port of scheme://[user[:password]@]host[:port][/path][?query], one a line
# (port empty when the URL has none). Handles [IPv6] hosts.
url_host_port() {
    local rest=${1#*://} host port
    rest=${rest%%/*}
    rest=${rest%%\?*}
    rest=${rest##*@}
    if [[ $rest == \[* ]]; then
        host=${rest%%]*}
        host=${host#[}
        port=${rest#*]}
    else
        host=${rest%%:*}
        port=${rest#"$host"}
    fi
    printf '%s\n%s\n' "$host" "${port#:}"
}

# True when URL $1 names the local default server at $2:$3 (127.0.0.1 or localhost,
# same port). Any other address is "a server of your own".
is_local_default() {
    local parts host port
    mapfile -t parts < <(url_host_port "$1")
    host=${parts[0]:-}
    port=${parts[1]:-$3}
    case $host in 127.0.0.1 | localhost) ;; *) return 1 ;; esac
    [ "$port" = "$3" ]
}

# Strips the password from a URL for messages.
redact() { sed -E 's#(://[^:/@]*):[^@/]*@#\1:***@#' <<<"$1"; }

# shellcheck disable=SC2016 # $0 and $1 expand in the inner bash
tcp_open() { timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1"' "$1" "$2" 2>/dev/null; }

# --- Postgres -------------------------------------------------------------------

pg_local_answers() {
    if have pg_isready; then
        pg_isready -q -h "$PG_HOST" -p "$PG_PORT" -t 3
    else
        tcp_open "$PG_HOST" "$PG_PORT"
    fi
}

pg_url_answers() {
    if have pg_isready; then
        pg_isready -q -d "$1" -t 3
    else
        local parts
        mapfile -t parts < <(url_host_port "$1")
        tcp_open "${parts[0]:-127.0.0.1}" "${parts[1]:-5432}"
    fi
}

# Versions of the Debian clusters named main, newest first.
pg_clusters() {
    local d
    for d in /etc/postgresql/*/main; do
        [ -d "$d" ] && basename "$(dirname "$d")"
    done | sort -rV
}

pg_installed() { have pg_ctlcluster && [ -n "$(pg_clusters)" ]; }

pg_start() {
    local ver
    ver=$(pg_clusters | head -n1)
    say "Postgres $ver is installed but stopped; starting it:"
    say "  pg_ctlcluster --skip-systemctl-redirect $ver main start"
    if ! pg_ctlcluster --skip-systemctl-redirect "$ver" main start; then
        err "could not start Postgres (see /var/log/postgresql/)"
        [ "$EUID" -eq 0 ] ||
            err "not root: try sudo pg_ctlcluster --skip-systemctl-redirect $ver main start"
        return 1
    fi
}

# After Postgres answers: can the URL's user log in without a prompt, and does the
# URL's database exist (create it if not; the tests themselves only need the server,
# pytest-django creates test_<name>)? psql is optional.
pg_check_login() {
    local url=$1 sep='?' dbname out
    have psql || return 0
    [[ $url == *\?* ]] && sep='&'
    if ! out=$(psql "${url}${sep}dbname=postgres" -w -X -q -tA -c 'SELECT 1' 2>&1); then
        err "Postgres answers but $(redact "$url") cannot log in:"
        err "  ${out//$'\n'/$'\n'services:   }"
        if [[ $out == *password* || $out == *authentication* ]]; then
            err "Let its user connect without a password from 127.0.0.1 (a 'trust' line in"
            err "pg_hba.conf; scripts/services.sh install adds one for postgres), or put the"
            err "password in the URL: DATABASE_URL=postgres://postgres:PASSWORD@127.0.0.1:5432/natter"
        fi
        return 1
    fi
    dbname=${url#*://}
    dbname=${dbname#*/}
    [ "$dbname" != "${url#*://}" ] || return 0
    dbname=${dbname%%\?*}
    [[ $dbname =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || return 0
    out=$(psql "${url}${sep}dbname=postgres" -w -X -q -tA \
        -c "SELECT 1 FROM pg_database WHERE datname = '$dbname'" 2>/dev/null) || return 0
    if [ "$out" != 1 ]; then
        if psql "${url}${sep}dbname=postgres" -w -X -q -c "CREATE DATABASE \"$dbname\"" >/dev/null 2>&1; then
            say "created database $dbname"
        else
            err "warning: could not create database $dbname (the tests do not need it)"
        fi
    fi
}

# --- Redis ----------------------------------------------------------------------

# Redis answers PING with PONG. Without redis-cli, speaks the protocol over /dev/tcp.
redis_ping() {
    local host=$1 port=$2 url=${3:-} out
    if have redis-cli; then
        # -u only when needed (credentials, TLS): redis-cli cannot parse [IPv6] URLs.
        if [[ $url == *@* || $url == rediss://* ]]; then
            out=$(timeout 5 redis-cli --no-auth-warning -u "$url" ping 2>&1) || true
        else
            out=$(timeout 5 redis-cli -h "$host" -p "$port" ping 2>&1) || true
        fi
    else
        # shellcheck disable=SC2016 # $0, $1 and $line expand in the inner bash
        out=$(timeout 3 bash -c 'exec 3<>"/dev/tcp/$0/$1" && printf "PING\r\n" >&3 &&
            IFS= read -r line <&3 && printf "%s" "${line#+}"' "$host" "$port" 2>/dev/null) || true
        out=${out%$'\r'}
    fi
    REDIS_REPLY=$out
    [ "$out" = PONG ]
}

redis_local_answers() { redis_ping "$REDIS_HOST" "$REDIS_PORT"; }

redis_url_answers() {
    local parts
    mapfile -t parts < <(url_host_port "$1")
    redis_ping "${parts[0]:-127.0.0.1}" "${parts[1]:-6379}" "$1"
}

redis_installed() { have redis-server; }

redis_start() {
    local dir=/var/lib/redis logdir=/var/log/redis
    if [ "$EUID" -eq 0 ]; then
        mkdir -p "$dir" "$logdir"
    elif [ ! -w "$dir" ] || [ ! -w "$logdir" ]; then
        # Not root: keep the (empty, nothing is saved) working dir and log in the repo.
        dir=$ROOT/var/redis
        logdir=$ROOT/var/redis
        mkdir -p "$dir"
    fi
    say "Redis is installed but stopped; starting it:"
    say "  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save \"\"" \
        "--appendonly no --dir $dir --logfile $logdir/ci.log"
    if ! redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" \
        --appendonly no --dir "$dir" --logfile "$logdir/ci.log"; then
        err "could not start Redis (see $logdir/ci.log)"
        return 1
    fi
}

# --- the checks -----------------------------------------------------------------

# wait_for SECONDS COMMAND...: true once COMMAND succeeds.
wait_for() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.5
    done
}

MISSING=()

# check_postgres MODE (ensure|status). Sets MISSING on "not installed".
check_postgres() {
    local mode=$1
    if [ -z "$DB_URL" ]; then
        say "Postgres: DATABASE_URL is empty, the embedded SQLite database is used; not checked"
        return 0
    fi
    case $DB_URL in
    postgres://* | postgresql://* | pgsql://*) ;;
    *)
        say "Postgres: DATABASE_URL is not a Postgres URL ($(redact "$DB_URL")); not checked"
        return 0
        ;;
    esac
    # libpq does not know the pgsql:// alias dj-database-url accepts.
    local url=${DB_URL/#pgsql:/postgres:}
    if ! is_local_default "$url" "$PG_HOST" "$PG_PORT"; then
        if pg_url_answers "$url"; then
            say "Postgres answers at $(redact "$url")"
            [ "$mode" = status ] || pg_check_login "$url"
            return
        fi
        err "Postgres does not answer at $(redact "$url") (DATABASE_URL). Start that server,"
        err "or unset DATABASE_URL to use the local one on $PG_HOST:$PG_PORT."
        return 1
    fi
    if pg_local_answers; then
        say "Postgres answers on $PG_HOST:$PG_PORT"
    elif [ "$mode" = status ]; then
        say "Postgres does not answer on $PG_HOST:$PG_PORT"
        return 1
    elif pg_installed; then
        pg_start || return 1
        if ! wait_for "$WAIT_S" pg_local_answers; then
            err "Postgres was started but does not answer on $PG_HOST:$PG_PORT after ${WAIT_S}s"
            err "(see /var/log/postgresql/)"
            return 1
        fi
        say "Postgres answers on $PG_HOST:$PG_PORT"
    else
        err "Postgres does not answer on $PG_HOST:$PG_PORT and is not installed here."
        MISSING+=(Postgres)
        return 1
    fi
    [ "$mode" = status ] || pg_check_login "$url"
}

check_redis() {
    local mode=$1
    if [ -z "$REDIS_URL_" ]; then
        say "Redis: REDIS_URL is empty, the in-memory channel layer is used; not checked"
        return 0
    fi
    if ! is_local_default "$REDIS_URL_" "$REDIS_HOST" "$REDIS_PORT"; then
        if redis_url_answers "$REDIS_URL_"; then
            say "Redis answers at $(redact "$REDIS_URL_")"
            return 0
        fi
        err "Redis does not answer PING at $(redact "$REDIS_URL_") (REDIS_URL)${REDIS_REPLY:+: $REDIS_REPLY}."
        err "Start that server, or unset REDIS_URL to use the local one on $REDIS_HOST:$REDIS_PORT."
        return 1
    fi
    if redis_local_answers; then
        say "Redis answers on $REDIS_HOST:$REDIS_PORT"
        return 0
    elif [ "$mode" = status ]; then
        say "Redis does not answer on $REDIS_HOST:$REDIS_PORT"
        return 1
    elif redis_installed; then
        redis_start || return 1
        if ! wait_for "$WAIT_S" redis_local_answers; then
            err "Redis was started but does not answer on $REDIS_HOST:$REDIS_PORT after ${WAIT_S}s" \
                "${REDIS_REPLY:+($REDIS_REPLY)}"
            return 1
        fi
        say "Redis answers on $REDIS_HOST:$REDIS_PORT"
    elif tcp_open "$REDIS_HOST" "$REDIS_PORT"; then
        err "something listens on $REDIS_HOST:$REDIS_PORT but does not answer PING like Redis" \
            "${REDIS_REPLY:+($REDIS_REPLY)}"
        return 1
    else
        err "Redis does not answer on $REDIS_HOST:$REDIS_PORT and is not installed here."
        MISSING+=(Redis)
        return 1
    fi
}

how_to_provide() {
    local what=${MISSING[*]}
    {
        echo
        echo "Natter's tests run against Postgres and Redis. Provide ${what// / and } in one of"
        echo "these ways:"
        echo "  1. Install Debian's packages and start them (needs root):"
        echo "       sudo scripts/services.sh install"
        echo "     which runs: apt-get install -y postgresql redis-server"
        echo "  2. Or point the tests at servers of your own:"
        echo "       DATABASE_URL=postgres://USER:PASSWORD@HOST:5432/natter \\"
        echo "       REDIS_URL=redis://HOST:6379/1 make test"
    } >&2
}

ensure() {
    local mode=${1:-ensure} status=0
    check_postgres "$mode" || status=1
    check_redis "$mode" || status=1
    if [ ${#MISSING[@]} -gt 0 ]; then
        how_to_provide
    fi
    return $status
}

# --- install (Debian) -------------------------------------------------------------

# A freshly installed Debian cluster asks for a password on 127.0.0.1; the tests log in
# as postgres without one. Let only that user in from loopback, as on the dev machines.
pg_allow_local_postgres() {
    local ver hba tmp marker='# natter: scripts/services.sh install'
    ver=$(pg_clusters | head -n1)
    hba=/etc/postgresql/$ver/main/pg_hba.conf
    if psql "postgres://postgres@$PG_HOST:$PG_PORT/postgres" -w -X -q -tA -c 'SELECT 1' \
        >/dev/null 2>&1; then
        return 0
    fi
    grep -qF "$marker" "$hba" && return 0
    say "letting user postgres log in from loopback without a password: $hba"
    tmp=$(mktemp)
    {
        echo "$marker: passwordless local login for the test suite"
        echo "host    all    postgres    127.0.0.1/32    trust"
        echo "host    all    postgres    ::1/128         trust"
        cat "$hba"
    } >"$tmp"
    cat "$tmp" >"$hba"
    rm -f "$tmp"
    pg_ctlcluster --skip-systemctl-redirect "$ver" main reload
}

install() {
    if [ "$EUID" -ne 0 ]; then
        err "install needs root: sudo scripts/services.sh install"
        exit 1
    fi
    if ! have apt-get; then
        err "no apt-get here: install Postgres and Redis with your system's package manager,"
        err "or set DATABASE_URL and REDIS_URL to servers of your own."
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    say "apt-get install -y postgresql redis-server"
    if ! apt-get install -y postgresql redis-server; then
        say "retrying after apt-get update"
        apt-get update
        apt-get install -y postgresql redis-server
    fi
    if [ -z "$(pg_clusters)" ]; then
        local ver
        ver=$(find /usr/lib/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -rV | head -n1)
        say "creating the Postgres cluster: pg_createcluster $ver main"
        pg_createcluster "$ver" main
    fi
    # Start the local servers and check them, whatever DATABASE_URL / REDIS_URL say.
    DB_URL=$DEFAULT_DATABASE_URL
    REDIS_URL_=$DEFAULT_REDIS_URL
    if ! pg_local_answers; then
        if pg_start; then wait_for "$WAIT_S" pg_local_answers || true; fi
    fi
    if pg_local_answers && have psql; then
        pg_allow_local_postgres
    fi
    ensure
}

usage() {
    sed -n '2,15s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
}

case ${1:-} in
ensure) ensure ensure ;;
status) ensure status ;;
install) install ;;
-h | --help | help) usage ;;
*)
    usage >&2
    exit 2
    ;;
esac
