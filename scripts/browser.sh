#!/usr/bin/env bash
# The browser the web UI's tests drive (tests/e2e/test_web_*.py): Debian's Chromium.
#
#   scripts/browser.sh ensure   install it (root, apt-get) when /usr/bin/chromium is
#                               missing; without it the web tests would only skip,
#                               so under CI=true a browser that cannot be had fails
#                               the run instead of passing it untested.
set -euo pipefail

CHROMIUM=/usr/bin/chromium
log() { echo "browser: $*" >&2; }

if [ -x "$CHROMIUM" ]; then
    exit 0
fi
if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    log "installing chromium from Debian's packages (the web UI's tests need it)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q chromium >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } \
        || true
fi
if [ -x "$CHROMIUM" ]; then
    exit 0
fi
if [ "${CI:-}" = "true" ]; then
    log "error: $CHROMIUM is missing and could not be installed; the web UI cannot be tested"
    exit 1
fi
log "warning: $CHROMIUM is missing (apt-get install chromium): the web UI's tests will skip"
