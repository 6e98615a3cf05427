#!/usr/bin/env bash
# Usage: fuzz/run.sh SECONDS [TARGET...]
#
# Runs each fuzz target (all of them by default) for SECONDS, one after another, with one
# libFuzzer process at a time, then prints executions per second and coverage per target from
# libFuzzer's final stats. Needs cargo-fuzz (`cargo install cargo-fuzz`); on a stable toolchain
# it sets RUSTC_BOOTSTRAP=1 to use the nightly-only sanitizer flags.
#
# Speed (see README.md for the measurements): the targets exercise safe Rust only, so they run
# without AddressSanitizer by default (FUZZ_SANITIZER=address for the sanitizer run each target
# still gets now and then; it builds into target/address so the two builds do not evict each
# other), and each target has a -max_len that covers its structure without wasting executions
# on long inputs. FUZZ_JOBS=N runs N libFuzzer processes per target (-fork=N; only with idle
# cores). Extra libFuzzer flags: FUZZ_ARGS="-use_value_profile=1".
#
# Inputs libFuzzer finds go to fuzz/target/corpus-work/TARGET (not committed); the committed
# seeds in fuzz/corpus/TARGET are read, never written. Crashes land in fuzz/artifacts/TARGET/:
# turn each into a fix plus a copy in fuzz/regressions/TARGET/.
set -uo pipefail
cd "$(dirname "$0")"
secs=${1:?usage: fuzz/run.sh SECONDS [TARGET...]}
shift
export RUSTC_BOOTSTRAP=1
sanitizer=${FUZZ_SANITIZER:-none}
build=(--sanitizer "$sanitizer" -O)
[ "$sanitizer" = none ] || build+=(--target-dir "target/$sanitizer")
jobs=${FUZZ_JOBS:-1}
# Longest input per target: room for every structure the target reads (frame_parser and
# connection need several frames, handshake a full request head with extensions, config a whole
# file), not more: libFuzzer's time goes to mutating and running short inputs.
max_len() {
    case "$1" in
    frame_parser | hub_message | backplane) echo 1024 ;;
    connection) echo 768 ;;
    handshake) echo 1536 ;;
    http_request) echo 1536 ;; # a request head and a small JSON body
    config) echo 2048 ;;
    tls_pem) echo 4096 ;; # a PEM chain with a key
    *) echo 1024 ;;
    esac
}
if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi
cargo fuzz build "${build[@]}" || exit 1
mkdir -p target/fuzz-logs
summary=()
status=0
for t in "${targets[@]}"; do
    work="target/corpus-work/$t"
    log="target/fuzz-logs/$t.log"
    mkdir -p "$work" "corpus/$t" "artifacts/$t"
    dict=()
    [ -f "$t.dict" ] && dict=("-dict=$t.dict")
    echo "== $t: ${secs}s (log: fuzz/$log)"
    before=$(find "artifacts/$t" -type f | wc -l)
    fork=()
    [ "$jobs" -gt 1 ] && fork=("-fork=$jobs")
    # shellcheck disable=SC2086
    cargo fuzz run "${build[@]}" "$t" "$work" "corpus/$t" -- \
        -max_total_time="$secs" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
        -max_len="$(max_len "$t")" "${fork[@]}" "${dict[@]}" ${FUZZ_ARGS:-} \
        >"$log" 2>&1
    rc=$?
    after=$(find "artifacts/$t" -type f | wc -l)
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    added=$(sed -n 's/^stat::new_units_added: *//p' "$log" | tail -1)
    cov0=$(grep -m1 -E '^#[0-9]+[[:space:]]+INITED' "$log" | sed -n 's/.* cov: \([0-9]*\).*/\1/p')
    last=$(grep -E '^#[0-9]+[[:space:]]+[A-Z]+.* cov: ' "$log" | tail -1)
    cov1=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft1=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    corp=$(sed -n 's/.* corp: \([0-9]*\/[0-9a-zA-Z]*\).*/\1/p' <<<"$last")
    crashes=$((after - before))
    if [ "$rc" -ne 0 ]; then
        status=1
        grep -E 'Test unit written to|^SUMMARY|panicked at' "$log" | head -5
    fi
    summary+=("$(printf '%-14s %6ss %12s %9s %7s %7s %6s %10s %9s %7s' "$t" "$secs" "${execs:-?}" \
        "${rate:-?}" "${cov0:-?}" "${cov1:-?}" "$(( ${cov1:-0} - ${cov0:-0} ))" "${ft1:-?}" \
        "${corp:-?}" "$crashes")")
done
echo
printf '%-14s %7s %12s %9s %7s %7s %6s %10s %9s %7s\n' target time execs exec/s cov0 cov +cov features corpus crashes
printf '%s\n' "${summary[@]}"
exit $status
