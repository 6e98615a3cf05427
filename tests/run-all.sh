#!/usr/bin/env bash
# Every test suite the project has, each installing what it needs by itself:
#   1. cargo: unit, property, integration (real binary on loopback; the backplane tests against
#      private redis-server instances), fuzz-corpus replay
#   2. Autobahn testsuite (fuzzingclient, sections 1-10 and 12-13) against
#      `wshub --echo --compression`, checked against autobahn/expected-results.json, over ws://
#      and again over wss:// (sections 1-10 only: compression does not depend on the transport)
#   3. interop: Python `websockets` client against the echo mode and the hub protocol, and over
#      wss:// with curl for https:// /healthz
#   4. browser: headless Chromium runs the JS client (recovery through cuts and a restart, token refresh)
#      and the demo page
#   5. benchmark smoke: the load generator's smallest echo case once (no speed asserted)
# Stops at the first failing suite.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "redis-server for the backplane tests (Debian package, installed when missing)"
# tests/backplane.rs starts its own private instances on free loopback ports; it only needs the
# binaries (redis-server, and redis-cli from the same package set).
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
    sudo=""
    [[ $(id -u) -ne 0 ]] && sudo="sudo"
    $sudo apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq redis-server >/dev/null
fi
redis-server --version

step "cargo test (unit, property, integration, fuzz corpus replay)"
cargo test --workspace --all-targets

step "Autobahn testsuite"
autobahn/run.sh

step "Autobahn testsuite over wss:// (same expected results)"
autobahn/run.sh --tls

step "interop: Python websockets"
tests/interop/run.sh

step "browser: headless Chromium, JS client and demo page"
tests/browser/run.sh

if [[ -x bench/run.sh ]]; then
    step "benchmark smoke"
    bench/run.sh smoke
fi

step "all suites passed"
