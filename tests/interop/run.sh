#!/usr/bin/env bash
# Interop tests: the Python `websockets` client against target/release/wshub.
#
# Usage: tests/interop/run.sh [pytest args, default tests/interop]
#   WSHUB_BIN=/path/to/wshub   test that binary instead of building target/release/wshub
#   INTEROP_TIMEOUT=SECONDS    bound for the pytest run (default 300; a run takes a few seconds)
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="$root/.ci/venv"

# curl checks /healthz over https (test_tls.py); openssl makes the test certificate.
for tool in curl openssl; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        timeout 600 apt-get update -qq >/dev/null
        timeout 600 apt-get install -y -qq "$tool" >/dev/null
    fi
done

if [[ ! -x "$venv/bin/python" ]]; then
    timeout 300 python3 -m venv "$venv"
fi
timeout 300 "$venv/bin/pip" install -q --disable-pip-version-check -r "$here/requirements.txt"

if [[ -z "${WSHUB_BIN:-}" ]]; then
    # cargo decides whether anything needs rebuilding; conftest.py finds the binary the same way
    # (CARGO_TARGET_DIR if set, else target/).
    (cd "$root" && timeout 1200 cargo build --release --quiet --bin wshub)
fi

cd "$root"
# No __pycache__ left in the tree (it is not gitignored).
export PYTHONDONTWRITEBYTECODE=1
# -p no:cacheprovider: keep pytest from writing .pytest_cache into the tree.
# Arguments, if any, replace the default selection (the whole directory).
args=("$@")
[[ ${#args[@]} -gt 0 ]] || args=(tests/interop)
exec timeout "${INTEROP_TIMEOUT:-300}" "$venv/bin/python" -m pytest -p no:cacheprovider -q -rfEs "${args[@]}"
