#!/usr/bin/env bash
# A/B benchmark of two builds of Augur's metadata quorum on this machine: both as 3-member
# loopback clusters of real processes with fsync on, up at the same time, the same clients,
# keys and duration, runs alternating A, B, A, B... so that the machine's drift falls on both.
# Each build's own `augur bench meta` drives its own cluster (the wire format may differ
# between builds). Prints medians per build and the B/A ratio.
#
#   scripts/bench-meta-ab.sh A_AUGUR_BINARY B_AUGUR_BINARY [--runs 3] [--duration 30s]
#                            [--clients 64] [--keys 10000] [--modes "cas read"]
#                            [--data]
#
# `--data` compares the data plane instead: 3 metadata members + 3 storage nodes (64 shards,
# RF 3) per build, `augur bench data` with 1 KiB values, modes "put get" and 100,000 keys
# unless given (the first get run preloads the keys; later runs find them there).
#
# To compare against an older commit without disturbing the shared target directory, build it
# in its own directory (README "Performance", "Metadata quorum"), e.g.
#   git archive OLD | tar -x -C /tmp/old && (cd /tmp/old && CARGO_TARGET_DIR=/tmp/old-target \
#       cargo build --release --workspace --bins)
set -euo pipefail

if [ $# -lt 2 ]; then
    sed -n 2,14p "$0" >&2
    exit 2
fi
a_bin=$1 b_bin=$2
shift 2
runs=3 duration=30s clients=64 keys="" modes="" data=0
while [ $# -gt 0 ]; do
    case "$1" in
        --data) data=1; shift ;;
        --runs) runs=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --clients) clients=$2; shift 2 ;;
        --keys) keys=$2; shift 2 ;;
        --modes) modes=$2; shift 2 ;;
        *) echo "unknown flag $1" >&2; exit 2 ;;
    esac
done
if [ "$data" = 1 ]; then
    keys=${keys:-100000} modes=${modes:-"put get"}
    up=(--meta 3 --storage 3 --shards 64 --rf 3)
    bench=(bench data --value-size 1024)
else
    keys=${keys:-10000} modes=${modes:-"cas read"}
    up=(--meta 3)
    bench=(bench meta)
fi
for b in "$a_bin" "$b_bin"; do
    [ -x "$b" ] || { echo "not an executable: $b" >&2; exit 2; }
done

work=$(mktemp -d -t augur-ab-XXXX)
cleanup() {
    "$a_bin" local down --dir "$work/a" >/dev/null 2>&1 || true
    "$b_bin" local down --dir "$work/b" >/dev/null 2>&1 || true
}
trap cleanup EXIT

"$a_bin" local up --dir "$work/a" "${up[@]}" >/dev/null
"$b_bin" local up --dir "$work/b" "${up[@]}" >/dev/null

results="$work/results.jsonl"
for mode in $modes; do
    for run in $(seq "$runs"); do
        for side in a b; do
            bin=$a_bin
            [ "$side" = b ] && bin=$b_bin
            "$bin" "${bench[@]}" --cluster "$work/$side" --mode "$mode" --clients "$clients" \
                --keys "$keys" --duration "$duration" --json | tr -d '\n' \
                | sed "s/^{/{\"build\":\"$side\",\"run\":$run,/" >>"$results"
            echo >>"$results"
        done
    done
done

python3 - "$results" "$a_bin" "$b_bin" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(f"A = {sys.argv[2]}\nB = {sys.argv[3]}")
def runs(side, mode, field):
    return [r[field] for r in rows if r["build"] == side and r["mode"] == mode]
print(f"{'mode':<6} {'build':<5} {'ops/s':>9} {'p50 ms':>8} {'p99 ms':>8}   runs (ops/s)")
for mode in dict.fromkeys(r["mode"] for r in rows):
    for side in ("a", "b"):
        ops = runs(side, mode, "ops_per_sec")
        print(f"{mode:<6} {side.upper():<5} {statistics.median(ops):>9.0f} "
              f"{statistics.median(runs(side, mode, 'p50_ms')):>8.2f} "
              f"{statistics.median(runs(side, mode, 'p99_ms')):>8.2f}   "
              + " / ".join(f"{v:.0f}" for v in ops))
    a, b = statistics.median(runs("a", mode, "ops_per_sec")), statistics.median(runs("b", mode, "ops_per_sec"))
    pairs = [y / x for x, y in zip(runs("a", mode, "ops_per_sec"), runs("b", mode, "ops_per_sec"))]
    print(f"{mode:<6} B/A   {b / a:>9.3f}x   per-run pairs: " + ", ".join(f"{p:.3f}" for p in pairs))
PY
echo "raw results: $results"
