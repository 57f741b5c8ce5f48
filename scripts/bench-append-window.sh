#!/usr/bin/env bash
# What pipelined append entries buy: two 3-node loopback clusters, identical but for
# `raft.append_window` (64, the default, against 1: the leader waits for each batch's answer
# before sending the next, as openraft does by default), each running the CAS benchmark at
# several client counts. Runs alternate between the clusters; medians are printed.
#
#   scripts/bench-append-window.sh [--runs 3] [--duration 10s] [--clients "1 8 64"] [--keys 10000]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

runs=3 duration=10s clients="1 8 64" keys=10000
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) runs=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --clients) clients=$2; shift 2 ;;
        --keys) keys=$2; shift 2 ;;
        *) echo "unknown flag $1" >&2; exit 2 ;;
    esac
done

cargo build --release --workspace --bins --tests
bin="$AUGUR_PROFILE_DIR"
work=$(mktemp -d -t augur-window-XXXX)
cleanup() {
    for w in 1 64; do "$bin/augur" local down --dir "$work/w$w" >/dev/null 2>&1 || true; done
}
trap cleanup EXIT

for w in 1 64; do
    "$bin/augur" local up --dir "$work/w$w" --meta 3 --append-window "$w" >/dev/null
done
results="$work/results.jsonl"
for c in $clients; do
    for run in $(seq "$runs"); do
        for w in 64 1; do
            "$bin/augur" bench meta --cluster "$work/w$w" --mode cas --clients "$c" --keys "$keys" \
                --duration "$duration" --json | tr -d '\n' | sed "s/^{/{\"window\":$w,/" >>"$results"
            echo >>"$results"
        done
    done
done

python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def med(w, c, field):
    return statistics.median(r[field] for r in rows if r["window"] == w and r["clients"] == c)
print(f"{'clients':>7} {'window':>6} {'CAS/s':>8} {'p50 ms':>7} {'p99 ms':>7}   (medians of runs)")
for c in sorted({r["clients"] for r in rows}):
    for w in (64, 1):
        print(f"{c:>7} {w:>6} {med(w,c,'ops_per_sec'):>8.0f} {med(w,c,'p50_ms'):>7.2f} {med(w,c,'p99_ms'):>7.2f}")
    print(f"{c:>7} {'ratio':>6} {med(64,c,'ops_per_sec')/med(1,c,'ops_per_sec'):>7.2f}x  p50 {med(64,c,'p50_ms')/med(1,c,'p50_ms'):.2f}x")
PY
echo "raw results: $results"
