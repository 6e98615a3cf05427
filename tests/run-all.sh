#!/usr/bin/env bash
# Every test suite the project has, each installing what it needs by itself:
#   1. cargo: unit, property, integration (real binary on loopback), fuzz-corpus replay
#   2. Autobahn testsuite (fuzzingclient, sections 1-10) against `wshub --echo`, checked
#      against autobahn/expected-results.json
#   3. interop: Python `websockets` client against the echo mode and the hub protocol
#   4. browser: headless Chromium runs the JS client (recovery through cuts and a restart)
#      and the demo page
#   5. benchmark smoke: the load generator's smallest echo case once (no speed asserted)
# Stops at the first failing suite.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "cargo test (unit, property, integration, fuzz corpus replay)"
cargo test --workspace --all-targets

step "Autobahn testsuite"
autobahn/run.sh

step "interop: Python websockets"
tests/interop/run.sh

step "browser: headless Chromium, JS client and demo page"
tests/browser/run.sh

if [[ -x bench/run.sh ]]; then
    step "benchmark smoke"
    bench/run.sh smoke
fi

step "all suites passed"
