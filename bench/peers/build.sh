#!/usr/bin/env bash
# Builds the peer servers the benchmarks compare wshub with, installing missing toolchains
# from the package registries first. A peer whose toolchain cannot be had is skipped, loudly;
# the script still exits 0 so the rest of the benchmark can run.
#
# Output: ${CARGO_TARGET_DIR:-<repo>/target}/bench-peers/<peer>/...
#   tokio-tungstenite/cargo/release/{echo,broadcast}
#   fastwebsockets/cargo/release/echo
#   gorilla/{echo,hub}
#   node-ws: bench/peers/node-ws/node_modules (run with node bench/peers/node-ws/server.js)
#
# With arguments, only the peers named (`build.sh node-ws gorilla` for the compression rows,
# which only those two peers have).
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
case "$target" in /*) ;; *) target="$root/$target" ;; esac
out="$target/bench-peers"
mkdir -p "$out"

skip() { echo "build.sh: SKIPPING peer $1: $2" >&2; }
only="$*"
want() { [ -z "$only" ] || [[ " $only " == *" $1 "* ]]; }
apt_updated=0
apt_install() {
    command -v apt-get >/dev/null || return 1
    [ "$(id -u)" = 0 ] || return 1
    if [ "$apt_updated" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 || true
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1
}

# Rust peers: standalone crates (each has its own [workspace]), own target dirs.
for peer in tokio-tungstenite fastwebsockets; do
    want "$peer" || continue
    echo "build.sh: building $peer" >&2
    if ! CARGO_TARGET_DIR="$out/$peer/cargo" cargo build --quiet --release --locked \
        --manifest-path "$here/$peer/Cargo.toml"; then
        skip "$peer" "cargo build failed"
    fi
done

# gorilla/websocket: Debian's Go and Debian's packaged library, GOPATH mode, offline.
gopath=/usr/share/gocode
build_gorilla() {
    if ! command -v go >/dev/null || [ ! -d "$gopath/src/github.com/gorilla/websocket" ]; then
        echo "build.sh: installing golang-go and golang-github-gorilla-websocket-dev" >&2
        apt_install golang-go golang-github-gorilla-websocket-dev || true
    fi
    if ! command -v go >/dev/null || [ ! -d "$gopath/src/github.com/gorilla/websocket" ]; then
        skip gorilla "no Go toolchain or no gorilla/websocket sources"
        return
    fi
    echo "build.sh: building gorilla" >&2
    mkdir -p "$out/gorilla"
    for prog in echo hub; do
        if ! (cd "$here/gorilla" && GO111MODULE=off GOPATH="$gopath" GOFLAGS= \
            GOCACHE="$out/gorilla/gocache" go build -o "$out/gorilla/$prog" "./$prog"); then
            skip "gorilla $prog" "go build failed"
        fi
    done
}
want gorilla && build_gorilla

# Node ws: node and npm from Debian if missing, ws from the npm registry.
want node-ws || exit 0
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "build.sh: installing nodejs and npm" >&2
    apt_install nodejs npm || true
fi
if command -v node >/dev/null && command -v npm >/dev/null; then
    echo "build.sh: installing ws for node-ws" >&2
    if [ ! -d "$here/node-ws/node_modules/ws" ] &&
        ! (cd "$here/node-ws" && npm ci --no-audit --no-fund --silent); then
        skip node-ws "npm ci failed"
    fi
else
    skip node-ws "no node/npm"
fi
exit 0
