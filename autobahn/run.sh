#!/usr/bin/env bash
# Autobahn|Testsuite (fuzzingclient mode) against `wshub --echo`, then check.py compares the
# results with the committed baseline and with the conformance policy.
#
# Usage: autobahn/run.sh [--tls] [--write-baseline]
#   --tls                     the same cases over wss:// (wshub serving TLS itself, a throwaway
#                             certificate from tests/gencert.sh); same expected results, except
#                             that 12-13 are skipped (compression does not depend on the
#                             transport, and they are the slow part)
#   WSHUB_BIN=/path/to/wshub  test that binary instead of building target/release/wshub
#   AUTOBAHN_TIMEOUT=SECONDS  bound for the whole wstest run (default 3600). Sections 1-10 take
#                             ~20 s; sections 12-13 (permessage-deflate, 216 cases of 1000 messages
#                             up to 128 KiB each) took 36 min on a loaded 2-core machine, bound by the
#                             Python client's speed (wstest), not the server's
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
venv="$here/.venv"
reports="$here/reports"
spec_src="$here/fuzzingclient.json"
# Upstream's image; used only when no Python 2.7 exists on the machine.
docker_image="crossbario/autobahn-testsuite"
suite_pin="autobahntestsuite==25.10.1"

check_args=()
tls=false
for arg in "$@"; do
    case "$arg" in
        --write-baseline) check_args+=(--write-baseline) ;;
        --tls) tls=true ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "run.sh: unknown argument $arg" >&2; exit 2 ;;
    esac
done
# A TLS run keeps its reports apart, so both runs' results stay readable side by side.
$tls && reports="$here/reports/tls"
spec_gen="$reports/fuzzingclient.generated.json"

log() { echo "autobahn: $*" >&2; }

# --- Python 2.7 -------------------------------------------------------------------------------
# wstest is Python 2 only. pyenv's shim is asked explicitly because `python2.7` on PATH may be a
# shim that refuses to run when 2.7 is not the selected pyenv version.
find_python27() {
    if [[ -n "${PYTHON27:-}" ]]; then echo "$PYTHON27"; return 0; fi
    local p
    if command -v pyenv >/dev/null 2>&1 \
        && p="$(PYENV_VERSION=2.7.18 pyenv which python2.7 2>/dev/null)" && [[ -x "$p" ]]; then
        echo "$p"; return 0
    fi
    for p in python2.7 python2; do
        if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import sys; assert sys.version_info[:2] == (2, 7)' 2>/dev/null; then
            command -v "$p"; return 0
        fi
    done
    return 1
}

# The venv is rebuilt whenever the pins change: the stamp holds a hash of the requirements.
setup_venv() {
    local py27="$1"
    local stamp="$venv/.installed"
    local want
    want="$( (cat "$here/requirements-py27.txt"; echo "$suite_pin $py27") | sha256sum | cut -d' ' -f1)"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$venv/py27/bin/wstest" ]]; then
        return 0
    fi
    log "setting up the Python 2.7 environment in $venv (once)"
    rm -rf "$venv"
    mkdir -p "$venv"
    # virtualenv 20.22 dropped creating 2.7 environments; an older one runs from a Python 3 venv.
    timeout 300 python3 -m venv "$venv/boot"
    timeout 300 "$venv/boot/bin/pip" install -q --disable-pip-version-check 'virtualenv<20.22'
    timeout 300 "$venv/boot/bin/virtualenv" -q -p "$py27" "$venv/py27"
    # pip on 2.7 prints an end-of-life banner on every call; it is noise here.
    export PYTHONWARNINGS=ignore
    timeout 600 "$venv/py27/bin/pip" install -q --disable-pip-version-check --no-python-version-warning \
        -r "$here/requirements-py27.txt"
    # The sdist declares no requirements (they are all pinned above), so no resolver surprises.
    timeout 300 "$venv/py27/bin/pip" install -q --disable-pip-version-check --no-python-version-warning \
        --no-deps "$suite_pin"
    echo "$want" > "$stamp"
}

if py27="$(find_python27)"; then
    setup_venv "$py27"
    wstest=("$venv/py27/bin/wstest")
    in_docker=false
elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    # Host networking so the container reaches the server on loopback; the spec and the
    # reports live in this directory, mounted where the spec's relative outdir expects them.
    wstest=(docker run --rm --network host -v "$here:/autobahn" -w /autobahn "$docker_image" wstest)
    in_docker=true
else
    log "needs Python 2.7 (pyenv 2.7.18, or PYTHON27=/path/to/python2.7) or a docker engine"
    exit 1
fi

# --- the server -------------------------------------------------------------------------------
if [[ -n "${WSHUB_BIN:-}" ]]; then
    bin="$WSHUB_BIN"
else
    log "building wshub (release)"
    (cd "$root" && timeout 1200 cargo build --release --quiet --bin wshub)
    target_dir="${CARGO_TARGET_DIR:-target}"
    [[ "$target_dir" = /* ]] || target_dir="$root/$target_dir"
    bin="$target_dir/release/wshub"
fi
[[ -x "$bin" ]] || { log "no executable at $bin"; exit 1; }

# Port 0 lets the kernel pick a free one; the tiny window before wshub binds it is acceptable.
port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"

rm -rf "$reports/servers"
mkdir -p "$reports"

# Flags for the server live in fuzzingclient.json ("wshub_args", ignored by wstest) so the
# limits that section 9 needs sit next to the cases that need them.
scheme=ws
$tls && scheme=wss
mapfile -t server_args < <(python3 - "$spec_src" "$spec_gen" "$port" "$scheme" "./${reports#"$here"/}/servers" <<'EOF'
import json, sys
src, dst, port, scheme, outdir = sys.argv[1:6]
with open(src) as f:
    spec = json.load(f)
args = spec.pop("wshub_args", ["--echo"])
for server in spec["servers"]:
    server["url"] = "%s://127.0.0.1:%s/ws" % (scheme, port)
spec["outdir"] = outdir
if scheme == "wss":
    # permessage-deflate does not depend on the transport, and 12-13 are most of the run time.
    spec["exclude-cases"] = spec.get("exclude-cases", []) + ["12.*", "13.*"]
with open(dst, "w") as f:
    json.dump(spec, f, indent=2)
print("\n".join(args))
EOF
)
# mapfile hides the generator's exit status; an empty list means it failed.
[[ ${#server_args[@]} -gt 0 && -s "$spec_gen" ]] || { log "cannot read $spec_src"; exit 1; }
if $tls; then
    check_args+=(--skip 12. --skip 13.)
    "$root/tests/gencert.sh" "$reports/certs"
    server_args+=(--tls-cert "$reports/certs/cert.pem" --tls-key "$reports/certs/key.pem")
fi

server_pid=""
cleanup() {
    if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        # Graceful shutdown is bounded by wshub itself; this bound is for a hung server.
        for _ in $(seq 50); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "starting $bin ${server_args[*]} --listen 127.0.0.1:$port"
RUST_LOG="${RUST_LOG:-warn}" "$bin" "${server_args[@]}" --listen "127.0.0.1:$port" \
    > "$reports/wshub.log" 2>&1 &
server_pid=$!

ready=false
for _ in $(seq 100); do
    if ! kill -0 "$server_pid" 2>/dev/null; then
        log "wshub exited before accepting connections:"; cat "$reports/wshub.log" >&2; exit 1
    fi
    if python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 1).close()' "$port" 2>/dev/null; then
        ready=true; break
    fi
    sleep 0.1
done
$ready || { log "wshub did not accept on port $port within 10 s"; exit 1; }

log "running wstest -m fuzzingclient against $scheme:// (log: ${reports#"$root"/}/wstest.log)"
if $in_docker; then spec_arg="/autobahn/${reports#"$here"/}/$(basename "$spec_gen")"; else spec_arg="$spec_gen"; fi
start=$SECONDS
set +e
(cd "$here" && PYTHONWARNINGS=ignore timeout "${AUTOBAHN_TIMEOUT:-3600}" \
    "${wstest[@]}" -m fuzzingclient -s "$spec_arg") > "$reports/wstest.log" 2>&1
rc=$?
set -e
log "wstest finished in $((SECONDS - start)) s (exit $rc)"
# A server that died mid-run shows up below only as a pile of failed and missing cases; say so
# here. Status 0 with 1001 closes means it shut down gracefully on a signal from outside.
if ! kill -0 "$server_pid" 2>/dev/null; then
    set +e; wait "$server_pid"; status=$?; set -e
    server_pid=""
    log "wshub exited during the run (status $status); its log:"
    tail -n 30 "$reports/wshub.log" >&2
    rc=1
fi
if [[ $rc -ne 0 ]]; then
    tail -n 30 "$reports/wstest.log" >&2
    [[ $rc -eq 124 ]] && log "wstest timed out"
    # Reports of a partial run still say which cases went wrong.
    if [[ -f "$reports/servers/index.json" ]]; then
        python3 "$here/check.py" --reports "$reports/servers" --baseline "$here/expected-results.json" || true
    fi
    exit 1
fi

cleanup
server_pid=""
if [[ -s "$reports/wshub.log" ]]; then
    log "wshub log: ${reports#"$root"/}/wshub.log ($(wc -l < "$reports/wshub.log") lines)"
fi

python3 "$here/check.py" --reports "$reports/servers" --baseline "$here/expected-results.json" "${check_args[@]}"
