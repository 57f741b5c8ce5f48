#!/usr/bin/env bash
# Side-by-side benchmark of Augur's data plane and etcd 3.4 on this machine: Augur as 3
# metadata members + 3 storage nodes at RF 3, etcd as a 3-node cluster, all loopback processes
# with fsync on, the same clients, keys and value size. Each mode runs RUNS times per system,
# alternating; the medians are printed. Then one `augur bench data --mode load` at 1 M keys
# gives the storage nodes' memory, and `augur bench recover` the failover and restore figures.
#
#   scripts/bench-data.sh [--runs 3] [--duration 30s] [--clients 64] [--keys 100000]
#                         [--value-size 1024] [--no-load] [--no-recover] [--recover-gib 1]
#
# Needs: etcd-server (Debian package, etcd 3.4) and protobuf-compiler (for the etcd client);
# both are installed if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

runs=3 duration=30s clients=64 keys=100000 value_size=1024 load=1 recover=1 recover_gib=1
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) runs=$2; shift 2 ;;
        --duration) duration=$2; shift 2 ;;
        --clients) clients=$2; shift 2 ;;
        --keys) keys=$2; shift 2 ;;
        --value-size) value_size=$2; shift 2 ;;
        --no-load) load=0; shift ;;
        --no-recover) recover=0; shift ;;
        --recover-gib) recover_gib=$2; shift 2 ;;
        *) echo "unknown flag $1" >&2; exit 2 ;;
    esac
done

need=()
for pkg in etcd-server protobuf-compiler; do dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg"); done
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
systemctl stop etcd >/dev/null 2>&1 || true

cargo build --release --workspace --bins
cargo build --release --manifest-path bench/etcd-bench/Cargo.toml
bin="$AUGUR_PROFILE_DIR"
work=$(mktemp -d -t augur-bench-data-XXXX)
etcd_pids=()
cleanup() {
    "$bin/augur" local down --dir "$work/augur" >/dev/null 2>&1 || true
    for p in "${etcd_pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT

"$bin/augur" local up --dir "$work/augur" --meta 3 --storage 3 --shards 64 --rf 3 >/dev/null
cluster="name1=http://127.0.0.1:23801,name2=http://127.0.0.1:23802,name3=http://127.0.0.1:23803"
for i in 1 2 3; do
    etcd --name "name$i" --data-dir "$work/etcd$i" \
        --listen-client-urls "http://127.0.0.1:2370$i" --advertise-client-urls "http://127.0.0.1:2370$i" \
        --listen-peer-urls "http://127.0.0.1:2380$i" --initial-advertise-peer-urls "http://127.0.0.1:2380$i" \
        --initial-cluster "$cluster" --initial-cluster-state new --log-level error \
        --quota-backend-bytes 8589934592 \
        >"$work/etcd$i.log" 2>&1 &
    etcd_pids+=($!)
done
endpoints="http://127.0.0.1:23701,http://127.0.0.1:23702,http://127.0.0.1:23703"

results="$work/results.jsonl"
common=(--clients "$clients" --keys "$keys" --value-size "$value_size" --duration "$duration" --json)
for mode in put get mixed; do
    for run in $(seq "$runs"); do
        "$bin/augur" bench data --cluster "$work/augur" --mode "$mode" "${common[@]}" \
            | tr -d '\n' | sed 's/^{/{"system":"augur",/' >>"$results"
        echo >>"$results"
        "$CARGO_TARGET_DIR/release/augur-etcd-bench" --endpoints "$endpoints" --mode "$mode" "${common[@]}" \
            | tr -d '\n' >>"$results"
        echo >>"$results"
    done
done

python3 - "$results" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def med(sys_, mode, field):
    v = [r[field] for r in rows if r["system"] == sys_ and r["mode"] == mode]
    return statistics.median(v) if v else float("nan")
print(f"{'mode':<7} {'system':<6} {'ops/s':>10} {'p50 ms':>8} {'p99 ms':>8} {'p999 ms':>8} {'errors':>7}   (medians of runs)")
for mode in ("put", "get", "mixed"):
    for s in ("augur", "etcd"):
        print(f"{mode:<7} {s:<6} {med(s,mode,'ops_per_sec'):>10.0f} {med(s,mode,'p50_ms'):>8.2f} {med(s,mode,'p99_ms'):>8.2f} {med(s,mode,'p999_ms'):>8.2f} {med(s,mode,'errors'):>7.0f}")
    print(f"{mode:<7} ratio  {med('augur',mode,'ops_per_sec')/med('etcd',mode,'ops_per_sec'):>10.2f}x throughput, p99 {med('augur',mode,'p99_ms')/med('etcd',mode,'p99_ms'):.2f}x")
PY
echo "raw results: $results"
cleanup
etcd_pids=()

if [ "$load" = 1 ]; then
    # Memory per storage node at 1 M keys (a fresh cluster of its own).
    "$bin/augur" bench data --mode load --keys 1000000 --value-size "$value_size" --clients "$clients"
fi
if [ "$recover" = 1 ]; then
    "$bin/augur" bench recover --gib "$recover_gib"
fi
