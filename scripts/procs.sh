# Process supervision shared by run.sh and run_cluster.sh (sourced, not run).
#
# start NAME CMD...   runs CMD in its own process group (so stopping it stops what
#                     it forked) and remembers it;
# supervise           waits until any one exits, then stops all of them in reverse
#                     order (SIGTERM, then SIGKILL after STOP_GRACE_S), and exits.
# Ctrl-C, SIGTERM and SIGHUP stop everything the same way.

STOP_GRACE_S=${STOP_GRACE_S:-10}
PIDS=()
NAMES=()

log() { printf '%s: %s\n' "${LOG_TAG:-run}" "$*" >&2; }

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
    # Stop in reverse order of starting: the front first, the workers last.
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

supervise() {
    local status=0 i
    wait -n "${PIDS[@]}" || status=$?
    for ((i = 0; i < ${#PIDS[@]}; i++)); do
        if ! kill -0 "${PIDS[i]}" 2>/dev/null; then
            log "${NAMES[i]} exited (status $status); stopping the others"
            break
        fi
    done
    exit "$status"
}
