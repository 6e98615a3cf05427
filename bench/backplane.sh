#!/usr/bin/env bash
# Cross-node benchmark: wshub processes joined by a private redis-server (--redis).
#   bench/backplane.sh [quick|full]
# Rows (RESULT lines, also written to bench/results/backplane-raw.txt):
#   1. broadcast 100x100 on one node (no Redis): the baseline
#   2. broadcast 100x100 with the 100 clients spread over two nodes joined by Redis: every
#      message reaches 50 clients locally and 50 through Redis
#   3. publish-to-receive latency across nodes at light load (10 clients, 2 publishers, two
#      nodes): cross_p50_us / cross_p99_us count only deliveries to a client on the other node
# Every process runs on this machine; with 2 cores the nodes, Redis and the load generator share
# them, so the two-node row measures the backplane's cost, not a gain from a second core.
set -euo pipefail
mode="${1:-quick}"
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
results="$here/results"
mkdir -p "$results/tmp"
raw="$results/backplane-raw.txt"

case "$mode" in
quick) timing=(--warmup 0.5 --duration 3 --windows 3) ;;
full) timing=(--warmup 1 --duration 5 --windows 5) ;;
*)
    echo "usage: $0 [quick|full]" >&2
    exit 2
    ;;
esac
command -v redis-server >/dev/null || {
    echo "backplane.sh: needs redis-server (apt-get install redis-server)" >&2
    exit 1
}

(cd "$root" && cargo build --quiet --release -p wshub -p wshub-bench)
wshub="$target/release/wshub"
loadgen="$target/release/loadgen"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

wait_port() {
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "backplane.sh: nothing listens on $1" >&2
    return 1
}

redis_port=9479
redis-server --port $redis_port --bind 127.0.0.1 --save '' --appendonly no >"$results/tmp/redis.log" 2>&1 &
pids+=($!)
wait_port $redis_port

node() { # PORT [extra flags...]
    local port=$1
    shift
    RUST_LOG=warn "$wshub" --listen "127.0.0.1:$port" --send-queue 4096 "$@" >"$results/tmp/node-$port.log" 2>&1 &
    pids+=($!)
    wait_port "$port"
}
node 9410
node 9411 --redis "redis://127.0.0.1:$redis_port"
node 9412 --redis "redis://127.0.0.1:$redis_port"
# Both nodes report the backplane up before measuring.
for port in 9411 9412; do
    for _ in $(seq 1 100); do
        curl -sf "http://127.0.0.1:$port/healthz" | grep -q '"backplane":"up"' && break
        sleep 0.05
    done
done

: >"$raw"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$raw"
run() {
    echo "backplane.sh: $*" >&2
    nice timeout 120 "$loadgen" broadcast "${timing[@]}" "$@" | tee -a "$raw"
}
run --server wshub-1node --clients 100 --url ws://127.0.0.1:9410/ws
run --server wshub-2nodes-redis --clients 100 --url ws://127.0.0.1:9411/ws,ws://127.0.0.1:9412/ws
run --server wshub-2nodes-redis --clients 10 --publishers 2 --url ws://127.0.0.1:9411/ws,ws://127.0.0.1:9412/ws
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$raw"
