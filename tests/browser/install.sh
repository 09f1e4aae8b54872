#!/usr/bin/env bash
# Installs what the browser test (tests/e2e_browser.rs, driver.js) needs,
# skipping what is there: Debian's chromium, nodejs and npm, and sip-tester
# (SIPp); with --kamailio also kamailio and kamailio-websocket-modules (the
# stand-in edge); then the npm packages of package-lock.json (npm ci), again
# only when the lockfile changed since the last install.
set -euo pipefail
cd "$(dirname "$0")"

need=()
command -v chromium >/dev/null || need+=(chromium)
# A Node.js from elsewhere may bring its own npm (and conflict with Debian's).
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    need+=(nodejs npm)
fi
command -v sipp >/dev/null || need+=(sip-tester)
if [ "${1:-}" = --kamailio ]; then
    command -v kamailio >/dev/null || need+=(kamailio)
    [ -e /usr/lib/x86_64-linux-gnu/kamailio/modules/websocket.so ] || need+=(kamailio-websocket-modules)
fi
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

stamp=node_modules/.installed-lock.sha256
if ! sha256sum --status -c "$stamp" 2>/dev/null; then
    npm ci --no-audit --no-fund
    sha256sum package-lock.json >"$stamp"
fi
