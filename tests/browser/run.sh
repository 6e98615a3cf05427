#!/usr/bin/env bash
# Browser tests: Debian's headless Chromium, driven by playwright-core (npm), against real wshub
# processes (the recovery of the JS client through connection cuts and a restart, its token
# refresh, the demo page).
# Installs what is missing (chromium via apt, playwright-core via npm), quietly and idempotently.
#
#   WSHUB_BIN=/path/to/wshub   test that binary instead of building target/release/wshub
#   SCREENSHOT=out.png         also save the demo page's screenshot
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo -n "$@"; fi; }

if [[ ! -x /usr/bin/chromium ]]; then
    echo "installing chromium (apt)"
    as_root env DEBIAN_FRONTEND=noninteractive timeout 600 apt-get update -qq >/dev/null
    as_root env DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq chromium >/dev/null
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "installing nodejs and npm (apt)"
    as_root env DEBIAN_FRONTEND=noninteractive timeout 600 apt-get update -qq >/dev/null
    as_root env DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y -qq nodejs npm >/dev/null
fi
if [[ ! -f "$here/node_modules/playwright-core/package.json" ]]; then
    (cd "$here" && timeout 300 npm ci --no-audit --no-fund --silent)
fi

if [[ -z "${WSHUB_BIN:-}" ]]; then
    (cd "$root" && timeout 1200 cargo build --release --quiet --bin wshub)
fi

cd "$root"
exec timeout 300 node "$here/test.mjs"
