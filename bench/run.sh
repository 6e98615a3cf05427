#!/usr/bin/env bash
# Benchmarks wshub against peer servers on this machine, over loopback.
#
#   bench/run.sh smoke   build wshub + loadgen, one small echo run against wshub and a 20 s
#                        bench/soak (no speed asserted; CI calls this)
#   bench/run.sh quick   every scenario once against every server (about 2 minutes after builds)
#   bench/run.sh full    every scenario 3 times, servers alternating, longer windows (~12 min)
#                        (BENCH_SERVERS="wshub tokio-tungstenite" BENCH_CASES="echo-16 echo-1k"
#                        re-runs some rows only; results then go to bench/results/*-subset.*)
#   bench/run.sh instr   user-space instructions per echoed message and per hub delivery
#                        (broadcast 100x100, fan-out 1 to 10k) under callgrind, wshub and
#                        tokio-tungstenite side by side (several minutes; the figure that does
#                        not move with the machine's noise)
#   bench/run.sh tls     the TLS rows: wshub serving wss:// itself against tokio-tungstenite +
#                        tokio-rustls, same certificate (tests/gencert.sh), ring on both sides:
#                        echo 16 B and 1 KiB at depth 16, connect+close with a full handshake,
#                        idle RSS at 10k; results in bench/results/tls-latest.* (~2 min)
#   bench/run.sh deflate the permessage-deflate rows: wshub --compression against Node `ws`
#                        (perMessageDeflate) and gorilla (EnableCompression), each next to its own
#                        uncompressed run: echo of 1 KiB JSON, broadcast 100x100 of ~1 KiB JSON,
#                        bytes on the wire per message, server CPU per message, idle RSS at 10k;
#                        results in bench/results/deflate-latest.* (~1.5 min a repetition;
#                        REPS=3 for medians of three)
#
# Each server runs pinned to core 0 and the load generator to core 1 (when there are two
# cores), a fresh server process per run. Results: RESULT lines in bench/results/latest-raw.txt,
# medians in bench/results/latest.csv, a Markdown table on stdout and in
# bench/results/latest.md, and a chart in bench/results/latest.svg. Every RESULT line also gets
# server_cpu_ns_per_msg: the server process's CPU time (user + system, all its threads, from
# /proc/PID/stat) over the whole loadgen run divided by the messages it echoed or delivered, a
# cost that other load on the machine slows down but does not inflate.
set -euo pipefail
mode="${1:-quick}"
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
case "$target" in /*) ;; *) target="$root/$target" ;; esac
peers="$target/bench-peers"
results="$here/results"
tmp="$results/tmp"
mkdir -p "$tmp"

case "$mode" in
smoke | quick | full | instr | tls | deflate) ;;
*)
    echo "usage: $0 [smoke|quick|full|instr|tls|deflate]" >&2
    exit 2
    ;;
esac

log() { echo "run.sh: $*" >&2; }

log "building wshub and loadgen (release)"
(cd "$root" && cargo build --quiet --release -p wshub -p wshub-bench)
wshub_bin="$target/release/wshub"
loadgen="$target/release/loadgen"

# Use every open file the hard limit allows (idle runs hold 10,000 connections; servers that
# do not raise their own limit inherit this).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

if [ "$(nproc)" -ge 2 ]; then
    pin_server=(taskset -c 0)
    pin_load=(taskset -c 1)
else
    pin_server=()
    pin_load=()
    log "fewer than 2 cores: not pinning"
fi

# ---- servers ---------------------------------------------------------------------------
# server_cmd NAME MODE ADDR -> prints nothing, sets the array `cmd` (empty: not available).
server_cmd() {
    local name=$1 mode=$2 addr=$3
    cmd=()
    case "$name/$mode" in
    wshub/echo) cmd=(env RUST_LOG=warn "$wshub_bin" --echo --listen "$addr" --max-connections 19000) ;;
    wshub/echo-tls) cmd=(env RUST_LOG=warn "$wshub_bin" --echo --listen "$addr" --max-connections 19000
        --tls-cert "$certs/cert.pem" --tls-key "$certs/key.pem") ;;
    wshub/hub) cmd=(env RUST_LOG=warn "$wshub_bin" --listen "$addr" --max-connections 19000 --send-queue 4096) ;;
    wshub/echo-deflate) cmd=(env RUST_LOG=warn "$wshub_bin" --echo --compression --listen "$addr"
        --max-connections 19000) ;;
    wshub/hub-deflate) cmd=(env RUST_LOG=warn "$wshub_bin" --compression --listen "$addr"
        --max-connections 19000 --send-queue 4096) ;;
    tokio-tungstenite/echo) cmd=("$peers/tokio-tungstenite/cargo/release/echo" "$addr") ;;
    tokio-tungstenite/echo-tls) cmd=("$peers/tokio-tungstenite/cargo/release/echo_tls" "$addr"
        "$certs/cert.pem" "$certs/key.pem") ;;
    tokio-tungstenite/hub) cmd=("$peers/tokio-tungstenite/cargo/release/broadcast" "$addr") ;;
    fastwebsockets/echo) cmd=("$peers/fastwebsockets/cargo/release/echo" "$addr") ;;
    gorilla/echo) cmd=(env GOMAXPROCS=1 "$peers/gorilla/echo" "$addr") ;;
    gorilla/hub) cmd=(env GOMAXPROCS=1 "$peers/gorilla/hub" "$addr") ;;
    gorilla/echo-deflate) cmd=(env GOMAXPROCS=1 PEER_DEFLATE=1 "$peers/gorilla/echo" "$addr") ;;
    gorilla/hub-deflate) cmd=(env GOMAXPROCS=1 PEER_DEFLATE=1 "$peers/gorilla/hub" "$addr") ;;
    node-ws/echo) cmd=(node "$here/peers/node-ws/server.js" "$addr") ;;
    node-ws/echo-deflate) cmd=(env PEER_DEFLATE=1 node "$here/peers/node-ws/server.js" "$addr") ;;
    *) return 0 ;;
    esac
    # Only if the program exists (the first word after `env` and its VAR=value words).
    local prog=${cmd[0]} i=1
    if [ "$prog" = env ]; then
        while [[ ${cmd[i]} == *=* ]]; do i=$((i + 1)); done
        prog=${cmd[i]}
    fi
    if [ "$prog" = node ]; then
        command -v node >/dev/null && [ -d "$here/peers/node-ws/node_modules/ws" ] || cmd=()
    elif [ ! -x "$prog" ]; then
        cmd=()
    fi
}

server_pid=""
start_server() { # NAME MODE PORT; sets server_pid or returns 1
    local name=$1 mode=$2 port=$3
    server_cmd "$name" "$mode" "127.0.0.1:$port"
    [ ${#cmd[@]} -gt 0 ] || return 1
    # exec: $! is the server itself (env and taskset exec too), so its RSS is the server's.
    (exec "${pin_server[@]}" "${cmd[@]}") >"$tmp/server-$name-$mode.log" 2>&1 &
    server_pid=$!
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            sleep 0.1
            return 0
        fi
        if ! kill -0 "$server_pid" 2>/dev/null; then
            log "$name ($mode) exited at start; see $tmp/server-$name-$mode.log"
            server_pid=""
            return 1
        fi
        sleep 0.05
    done
    log "$name ($mode) did not listen on $port"
    stop_server
    return 1
}

stop_server() {
    [ -n "$server_pid" ] || return 0
    kill "$server_pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
        kill -0 "$server_pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
}
trap stop_server EXIT

# ---- smoke -------------------------------------------------------------------------------
if [ "$mode" = smoke ]; then
    port=9400
    start_server wshub echo $port || {
        log "wshub did not start"
        exit 1
    }
    "${pin_load[@]}" timeout 60 "$loadgen" echo --server wshub --url "ws://127.0.0.1:$port/ws" \
        --conns 10 --size 16 --depth 16 --warmup 0.2 --duration 1 --windows 1
    stop_server
    # The soak with churn, shortened: exactly-once in-order delivery under churn, descriptors
    # back to their level afterwards (bench/soak; 30 minutes by default).
    timeout 300 "$here/soak" --duration 20 --sample 1
    log "smoke: ok"
    exit 0
fi

# ---- instr -------------------------------------------------------------------------------
# Each server runs under callgrind twice, for N1 and N2 units of a fixed-work loadgen run:
# echoed messages (`echo --messages`) or messages per publisher (`broadcast --messages`, every
# client subscribed, the run ends when all deliveries arrived). Instructions per message (per
# delivery for the hub) = (I(N2) - I(N1)) / (extra messages or deliveries): start-up,
# handshakes, subscribes and shutdown cancel out, what is left is the steady state. Counts are
# of the whole server process in user space (the kernel's share is the same syscalls for every
# server). INSTR_ONLY=echo|hub runs one half; INSTR_SERVERS="wshub" skips the peer.
if [ "$mode" = instr ]; then
    log "building the tokio-tungstenite peer"
    CARGO_TARGET_DIR="$peers/tokio-tungstenite/cargo" cargo build --quiet --release --locked \
        --manifest-path "$here/peers/tokio-tungstenite/Cargo.toml" || log "tokio-tungstenite did not build"
    command -v valgrind >/dev/null || {
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null 2>&1 ||
            { log "valgrind is needed for instr"; exit 1; }
    }
    n1=${INSTR_N1:-32000}
    n2=${INSTR_N2:-160000}
    only=${INSTR_ONLY:-all}
    read -ra instr_servers <<<"${INSTR_SERVERS:-wshub tokio-tungstenite}"
    out="$results/instr.md"
    total_instr() { sed -n 's/^\(summary\|totals\): *\([0-9]*\).*/\2/p' "$1" | head -1; }
    # profile_diff A B UNITS: the top functions of callgrind profile B minus A (exclusive, code
    # inlined into a function counted in it), in instructions per unit: where the steady-state
    # cost of one message or delivery goes, without start-up and handshakes.
    profile_diff() {
        ann() {
            callgrind_annotate --inclusive=no --threshold=100 --auto=no "$1" 2>/dev/null |
                grep -E '^ *[0-9,]+ \( *[0-9.]+%\) ' | grep -v 'PROGRAM TOTALS' |
                sed -E 's/^ *([0-9,]+) \( *[0-9.]+%\) +/\1\t/; s/ \[[^]]*\]$//' | tr -d ',' |
                awk -F'\t' '{ f = $2; sub(/^[^:]*:/, "", f); s[f] += $1 } END { for (f in s) print s[f] "\t" f }' |
                sort -t $'\t' -k2,2
        }
        join -t $'\t' -1 2 -2 2 -a 1 -a 2 -e 0 -o 0,1.1,2.1 <(ann "$1") <(ann "$2") |
            awk -F'\t' -v u="$3" '{ d = ($3 - $2) / u; if (d >= 0.5) printf "%8.1f  %s\n", d, $1 }' |
            sort -rn | head -14
    }
    # Cases: label | server mode | N1 | N2 | units per N (messages, or deliveries per message
    # per publisher) | loadgen arguments.
    instr_cases=()
    if [ "$only" != hub ]; then
        instr_cases+=(
            "echo 16 B text|echo|$n1|$n2|1|echo --conns 100 --size 16 --depth 16 --text"
            "echo 1 KiB text|echo|$n1|$n2|1|echo --conns 100 --size 1024 --depth 16 --text"
            "echo 16 B binary|echo|$n1|$n2|1|echo --conns 100 --size 16 --depth 16"
        )
    fi
    if [ "$only" != echo ]; then
        # Per message each publisher sends, 100x100 makes 100 x 100 deliveries and 1 to 10k
        # makes 10,000. Small counts: callgrind runs the server some 50 times slower.
        instr_cases+=(
            "broadcast 100x100 (per delivery)|hub|${INSTR_HUB_N1:-10}|${INSTR_HUB_N2:-30}|10000|broadcast --clients 100"
            "fan-out 1 to 10k (per delivery)|hub|${INSTR_FANOUT_N1:-3}|${INSTR_FANOUT_N2:-9}|10000|broadcast --clients 10000 --publishers 1"
        )
    fi
    rows=()
    port=9500
    # callgrind_run NAME SMODE N WANT OUTFILE LOADGEN-ARGS...: the server under callgrind for
    # one fixed-work run; sets `total` to its instructions (empty if the run fell short of WANT
    # echoes or deliveries).
    callgrind_run() {
        local name=$1 smode=$2 n=$3 want=$4 cg=$5
        shift 5
        total=""
        port=$((port + 1))
        server_cmd "$name" "$smode" "127.0.0.1:$port"
        # No heartbeat: its timers fire by wall-clock time, which differs between the N1 and N2
        # runs under valgrind, and a silent subscriber would be closed after --pong-wait (the
        # peers have no heartbeat either).
        [ "$name/$smode" = wshub/hub ] && cmd+=(--ping-interval 0 --pong-wait 0)
        rm -f "$cg"
        # valgrind goes right before the program (after `env VAR=...` if any).
        if [ "${cmd[0]}" = env ]; then
            cmd=("${cmd[@]:0:2}" valgrind --tool=callgrind --callgrind-out-file="$cg" "${cmd[@]:2}")
        else
            cmd=(valgrind --tool=callgrind --callgrind-out-file="$cg" "${cmd[@]}")
        fi
        ("${cmd[@]}") >"$tmp/server-$name-instr.log" 2>&1 &
        server_pid=$!
        for _ in $(seq 1 300); do
            (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
            sleep 0.1
        done
        # Generous budgets: 10,000 handshakes under valgrind on a shared machine take a while.
        if ! "$loadgen" "$@" --messages "$n" --stall 60 --setup 300 --duration 300 --windows 1 \
            --server "$name" --url "ws://127.0.0.1:$port/ws" >"$tmp/loadgen-instr.txt" 2>&1; then
            log "$* against $name failed: $(tail -c 300 "$tmp/loadgen-instr.txt")"
        fi
        kill -TERM "$server_pid" 2>/dev/null || true
        for _ in $(seq 1 300); do
            kill -0 "$server_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=""
        local got
        got=$(sed -n 's/.* \(received\|delivered\)=\([0-9]*\).*/\2/p' "$tmp/loadgen-instr.txt")
        if [ -f "$cg" ] && [ "$got" = "$want" ]; then
            total=$(total_instr "$cg")
        else
            log "$name/$n: no profile or short run (got ${got:-0} of $want)"
        fi
    }
    for case in "${instr_cases[@]}"; do
        IFS='|' read -r label smode c1 c2 units args <<<"$case"
        for name in "${instr_servers[@]}"; do
            server_cmd "$name" "$smode" x
            [ ${#cmd[@]} -gt 0 ] || { log "$name ($smode): not built, skipped"; continue; }
            slug="${label%% (*}"
            slug="${slug// /_}"
            # shellcheck disable=SC2086
            callgrind_run "$name" "$smode" "$c1" $((c1 * units)) "$tmp/callgrind-$name-$slug-$c1.out" $args
            t1=$total
            # shellcheck disable=SC2086
            callgrind_run "$name" "$smode" "$c2" $((c2 * units)) "$tmp/callgrind-$name-$slug-$c2.out" $args
            t2=$total
            [ -n "$t1" ] && [ -n "$t2" ] || continue
            per=$(awk -v a="$t1" -v b="$t2" -v d="$(((c2 - c1) * units))" 'BEGIN { printf "%.0f", (b - a) / d }')
            log "$label $name: $per instructions"
            rows+=("$label|$name|$per")
            if [ "$name" = wshub ]; then
                profile_diff "$tmp/callgrind-$name-$slug-$c1.out" "$tmp/callgrind-$name-$slug-$c2.out" \
                    $(((c2 - c1) * units)) >"$tmp/profile-$slug.txt" || true
            fi
        done
    done
    {
        echo "bench/run.sh instr, $(date -u '+%Y-%m-%d %H:%M UTC'): user-space instructions per echoed message / per hub delivery"
        echo "(callgrind, whole server process, (I(N2) - I(N1)) / (extra messages or deliveries); echo: N1=$n1, N2=$n2"
        echo "messages, 100 connections, depth 16; hub: \`loadgen broadcast --messages N\`, N messages per publisher)"
        echo
        echo "| case | wshub | tokio-tungstenite | ratio |"
        echo "|---|---:|---:|---:|"
        for case in "${instr_cases[@]}"; do
            IFS='|' read -r label _ <<<"$case"
            w=$(printf '%s\n' "${rows[@]}" | awk -F'|' -v l="$label" '$1 == l && $2 == "wshub" { print $3 }')
            t=$(printf '%s\n' "${rows[@]}" | awk -F'|' -v l="$label" '$1 == l && $2 == "tokio-tungstenite" { print $3 }')
            r=$(awk -v w="$w" -v t="$t" 'BEGIN { if (w > 0 && t > 0) printf "%.2fx", t / w; else print "-" }')
            echo "| $label | ${w:--} | ${t:--} | $r |"
        done
        for case in "${instr_cases[@]}"; do
            IFS='|' read -r label _ <<<"$case"
            slug="${label%% (*}"
            f="$tmp/profile-${slug// /_}.txt"
            [ -s "$f" ] || continue
            echo
            echo "wshub profile, $slug: instructions per message or delivery by function (N2 run minus N1, exclusive):"
            echo '```'
            cat "$f"
            echo '```'
            rm -f "$f"
        done
    } >"$out"
    cat "$out"
    exit 0
fi

# ---- quick / full ------------------------------------------------------------------------
scheme=ws
url_args=()
out=latest
if [ "$mode" = tls ]; then
    # One throwaway certificate for both servers; the load generator trusts its CA.
    certs="$tmp/certs"
    "$root/tests/gencert.sh" "$certs"
    scheme=wss
    url_args=(--ca "$certs/ca.pem")
    out=tls-latest
    log "building the tokio-tungstenite peer"
    CARGO_TARGET_DIR="$peers/tokio-tungstenite/cargo" cargo build --quiet --release --locked \
        --manifest-path "$here/peers/tokio-tungstenite/Cargo.toml" || log "tokio-tungstenite peer build failed"
elif [ "$mode" = deflate ]; then
    log "building the peers with permessage-deflate (Node ws, gorilla)"
    "$here/peers/build.sh" node-ws gorilla
    out=deflate-latest
elif [ -n "${BENCH_SERVERS:-}" ]; then
    # A subset of servers (e.g. BENCH_SERVERS="wshub tokio-tungstenite"): build only the
    # tokio-tungstenite peer if it is asked for; others must have been built before.
    case " $BENCH_SERVERS " in *" tokio-tungstenite "*)
        log "building the tokio-tungstenite peer"
        CARGO_TARGET_DIR="$peers/tokio-tungstenite/cargo" cargo build --quiet --release --locked \
            --manifest-path "$here/peers/tokio-tungstenite/Cargo.toml" || log "tokio-tungstenite peer build failed"
        ;;
    esac
else
    log "building peers"
    "$here/peers/build.sh"
fi

if [ "$mode" = full ]; then
    reps=3
    timing=(--warmup 1 --duration 5 --windows 5)
    hold=3
else
    reps=1
    timing=(--warmup 0.5 --duration 1.5 --windows 3)
    hold=1
fi
servers=(wshub tokio-tungstenite fastwebsockets gorilla node-ws)

# Cases: id | server mode | loadgen arguments | RESULT fields to keep as metric:unit.
cases=(
    "echo-16|echo|echo --conns 100 --size 16 --depth 16|msgs_per_s:echo 16 B msgs/s"
    "echo-1k|echo|echo --conns 100 --size 1024 --depth 16|msgs_per_s:echo 1 KiB msgs/s"
    "bcast-100|hub|broadcast --clients 100|deliveries_per_s:broadcast 100x100 deliveries/s,p50_us:broadcast 100x100 p50 us,p99_us:broadcast 100x100 p99 us"
    "bcast-1000|hub|broadcast --clients 1000|deliveries_per_s:broadcast 1000x1000 deliveries/s,p99_us:broadcast 1000x1000 p99 us"
    "fanout-10k|hub|broadcast --clients 10000 --publishers 1|deliveries_per_s:fan-out 1 to 10k deliveries/s,p99_us:fan-out 1 to 10k p99 us"
    "idle-10k|echo|idle --conns 10000 --hold $hold|kib_per_conn:idle 10k RSS KiB/conn"
    "connrate|echo|connrate --concurrency 32|cycles_per_s:connect+close cycles/s"
)
if [ "$mode" = tls ]; then
    reps=1
    timing=(--warmup 0.5 --duration 3 --windows 3)
    servers=(wshub tokio-tungstenite)
    cases=(
        "tls-echo-16|echo-tls|echo --conns 100 --size 16 --depth 16|msgs_per_s:TLS echo 16 B msgs/s"
        "tls-echo-1k|echo-tls|echo --conns 100 --size 1024 --depth 16|msgs_per_s:TLS echo 1 KiB msgs/s"
        "tls-connrate|echo-tls|connrate --concurrency 32|cycles_per_s:TLS connect+close (full handshake) cycles/s"
        "tls-idle-10k|echo-tls|idle --conns 10000 --hold 2|kib_per_conn:TLS idle 10k RSS KiB/conn"
    )
fi

ratios=()
if [ "$mode" = deflate ]; then
    reps=${REPS:-1}
    timing=(--warmup 0.5 --duration 3 --windows 3)
    servers=(wshub gorilla node-ws)
    # Broadcast: 1,000 bytes of JSON-like filler, about 1.1 KiB per delivered message. The
    # compressed runs inflate one delivery in 100 (checked, and the latency sample) and count
    # the others by frame: the generator shares the machine and must not be what is measured.
    # bcast-100-z-all inflates every delivery, as the first measurement of this row did.
    jb="broadcast --clients 100 --size 1000 --json"
    cpu="server_cpu_ns_per_msg"
    cases=(
        "echo-json|echo|echo --conns 100 --size 1024 --depth 16 --json|msgs_per_s:echo 1 KiB JSON plain msgs/s,$cpu:echo 1 KiB JSON plain server CPU ns/msg,wire_bytes_per_msg:echo 1 KiB JSON plain wire B/msg"
        "echo-json-z|echo-deflate|echo --conns 100 --size 1024 --depth 16 --json --deflate|msgs_per_s:echo 1 KiB JSON compressed msgs/s,$cpu:echo 1 KiB JSON compressed server CPU ns/msg,wire_bytes_per_msg:echo 1 KiB JSON compressed wire B/msg"
        "bcast-100|hub|$jb|deliveries_per_s:broadcast 100x100 JSON plain deliveries/s,$cpu:broadcast 100x100 JSON plain server CPU ns/delivery,wire_bytes_per_msg:broadcast 100x100 JSON plain wire B/msg,p99_us:broadcast 100x100 JSON plain p99 us"
        "bcast-100-z|hub-deflate|$jb --deflate --inflate-one-in 100|deliveries_per_s:broadcast 100x100 JSON compressed deliveries/s,$cpu:broadcast 100x100 JSON compressed server CPU ns/delivery,wire_bytes_per_msg:broadcast 100x100 JSON compressed wire B/msg,p99_us:broadcast 100x100 JSON compressed p99 us"
        "bcast-100-z-all|hub-deflate|$jb --deflate|deliveries_per_s:broadcast 100x100 JSON compressed (loadgen inflates all) deliveries/s"
        "idle-10k|echo|idle --conns 10000 --hold 1|kib_per_conn:idle 10k plain RSS KiB/conn"
        "idle-10k-z|echo-deflate|idle --conns 10000 --hold 1 --deflate|kib_per_conn:idle 10k compression negotiated RSS KiB/conn"
    )
    # Derived rows: compressed ÷ plain, each server against its own plain run of the same round.
    ratios=(
        "echo 1 KiB JSON msgs/s compressed/plain|echo 1 KiB JSON plain|echo 1 KiB JSON compressed"
        "echo 1 KiB JSON server CPU per msg compressed/plain|echo 1 KiB JSON plain server CPU|echo 1 KiB JSON compressed server CPU"
        "echo 1 KiB JSON wire bytes compressed/plain|echo 1 KiB JSON plain wire|echo 1 KiB JSON compressed wire"
        "broadcast 100x100 deliveries/s compressed/plain|broadcast 100x100 JSON plain|broadcast 100x100 JSON compressed"
        "broadcast 100x100 server CPU per delivery compressed/plain|broadcast 100x100 JSON plain server CPU|broadcast 100x100 JSON compressed server CPU"
        "broadcast 100x100 wire bytes compressed/plain|broadcast 100x100 JSON plain wire|broadcast 100x100 JSON compressed wire"
        "idle 10k RSS per conn compression negotiated/plain|idle 10k plain RSS|idle 10k compression negotiated RSS"
    )
fi

# The server's CPU time so far (user + system, every thread), in nanoseconds.
clk_tck=$(getconf CLK_TCK)
cpu_ns() {
    awk -v hz="$clk_tck" '{ sub(/.*\) /, ""); printf "%.0f", ($12 + $13) * 1e9 / hz }' "/proc/$1/stat" 2>/dev/null || echo 0
}

# Subsets, for a re-run of some rows: BENCH_SERVERS="wshub tokio-tungstenite",
# BENCH_CASES="echo-16 echo-1k" (case ids as above).
if [ -n "${BENCH_SERVERS:-}" ]; then
    read -ra servers <<<"$BENCH_SERVERS"
fi
if [ -n "${BENCH_CASES:-}" ]; then
    kept=()
    for case in "${cases[@]}"; do
        case " $BENCH_CASES " in *" ${case%%|*} "*) kept+=("$case") ;; esac
    done
    cases=("${kept[@]}")
    out="$out-subset"
fi

raw="$tmp/raw.txt"
: >"$raw"
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
if awk -v l="${load_start%% *}" 'BEGIN { exit !(l > 1.5) }'; then
    log "WARNING: load average $load_start before starting: other processes share the cores, results will be low and noisy"
fi
port=9400
started=$(date +%s)
for rep in $(seq 1 "$reps"); do
    for case in "${cases[@]}"; do
        IFS='|' read -r id smode args _ <<<"$case"
        # Alternate the order of servers between repetitions.
        order=("${servers[@]}")
        if [ $((rep % 2)) = 0 ]; then
            order=()
            for ((i = ${#servers[@]} - 1; i >= 0; i--)); do order+=("${servers[i]}"); done
        fi
        for name in "${order[@]}"; do
            port=$((port + 1))
            [ $port -gt 9990 ] && port=9401
            server_cmd "$name" "$smode" x
            [ ${#cmd[@]} -gt 0 ] || continue
            if ! start_server "$name" "$smode" $port; then
                continue
            fi
            extra=()
            case "$args" in idle*) extra=(--pid "$server_pid") ;; esac
            cpu_before=$(cpu_ns "$server_pid")
            # shellcheck disable=SC2086
            if line=$("${pin_load[@]}" "$loadgen" $args "${timing[@]}" "${extra[@]}" \
                --server "$name" --url "$scheme://127.0.0.1:$port/ws" "${url_args[@]}" 2>"$tmp/loadgen-err.txt" | grep '^RESULT'); then
                cpu_after=$(cpu_ns "$server_pid")
                msgs=$(echo "$line" | sed -n 's/.* \(received\|delivered\)=\([0-9]*\).*/\2/p')
                if [ -n "$msgs" ] && [ "$msgs" -gt 0 ]; then
                    line="$line server_cpu_ns_per_msg=$(awk -v a="$cpu_before" -v b="$cpu_after" -v n="$msgs" \
                        'BEGIN { printf "%.0f", (b - a) / n }')"
                fi
                echo "$line"
                echo "rep=$rep case=$id $line" >>"$raw"
            else
                log "$id against $name failed: $(tail -c 300 "$tmp/loadgen-err.txt")"
            fi
            stop_server
        done
    done
done
log "measured in $(($(date +%s) - started)) s"
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

cp "$raw" "$results/$out-raw.txt"

# Medians over repetitions -> CSV (metric,unit,server,value).
csv="$results/$out.csv"
{
    echo "metric,unit,server,value"
    for case in "${cases[@]}"; do
        IFS='|' read -r id _ _ fields <<<"$case"
        IFS=',' read -ra wanted <<<"$fields"
        for w in "${wanted[@]}"; do
            key=${w%%:*}
            label=${w#*:}
            unit=${label##* }
            metric=${label% *}
            for name in "${servers[@]}"; do
                vals=$(grep " case=$id " "$raw" | grep " server=$name " |
                    sed -n "s/.* $key=\([0-9.]*\).*/\1/p" | sort -g || true)
                [ -n "$vals" ] || continue
                n=$(echo "$vals" | wc -l)
                med=$(echo "$vals" | awk -v n="$n" '{v[NR]=$1} END {if (n%2) print v[(n+1)/2]; else print (v[n/2]+v[n/2+1])/2}')
                echo "$metric,$unit,$name,$med"
            done
        done
    done
} >"$csv"
# Ratio rows (deflate): the second metric ÷ the first, per server, both from this run.
for r in "${ratios[@]}"; do
    IFS='|' read -r label a b <<<"$r"
    for name in "${servers[@]}"; do
        va=$(awk -F, -v m="$a" -v s="$name" '$1 == m && $3 == s { print $4; exit }' "$csv")
        vb=$(awk -F, -v m="$b" -v s="$name" '$1 == m && $3 == s { print $4; exit }' "$csv")
        [ -n "$va" ] && [ -n "$vb" ] || continue
        echo "$label,x,$name,$(awk -v a="$va" -v b="$vb" 'BEGIN { if (a > 0) printf "%.3f", b / a }')" >>"$csv"
    done
done

md="$results/$out.md"
{
    echo "bench/run.sh $mode, $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, server on core 0, loadgen on core 1;" \
        "median of $reps run(s); load average before: $load_start, after: $load_end"
    echo
    "$loadgen" report --csv "$csv" --svg "$results/$out.svg" --baseline wshub
} >"$md"
cat "$md"
log "wrote $csv, $md, $results/$out.svg"
