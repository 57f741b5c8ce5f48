#!/usr/bin/env bash
# The main job: a local 3-node metadata cluster and a short guided session with augurctl.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

cargo build --release --workspace --bins
bin="$AUGUR_PROFILE_DIR"
dir="${AUGUR_DEMO_DIR:-$(mktemp -d -t augur-demo-XXXX)}"
ctl() { echo "+ augurctl $*" >&2; "$bin/augurctl" --cluster "$dir/cluster.toml" "$@"; }
cleanup() { "$bin/augur" local down --dir "$dir" >/dev/null 2>&1 || true; }
trap cleanup EXIT

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Start a 3-node metadata quorum on loopback (real processes, QUIC with mutual TLS, RocksDB)"
"$bin/augur" local up --dir "$dir" --meta 3

step "Who leads?"
ctl status

step "Place shard 1 on storage nodes 1,2,3 (create: expect absent)"
ctl shard cas --id 1 --replicas 1,2,3 --expect absent
v=$("$bin/augurctl" --cluster "$dir/cluster.toml" --json shard get 1 | sed -n 's/.*"version": \([0-9]*\).*/\1/p')

step "Watch shard changes in the background"
ctl watch --table shards --count 2 &
watcher=$!
sleep 1

step "Move shard 1 to nodes 2,3,4 with a compare-and-set on version $v"
ctl shard cas --id 1 --replicas 2,3,4 --expect "$v"

step "A stale compare-and-set on the same version loses (exit code 3)"
ctl shard cas --id 1 --replicas 9 --expect "$v" || echo "(conflict, as expected)"

step "Kill the leader with SIGKILL; a new one takes over and writes resume"
leader=$("$bin/augur" local leader --dir "$dir")
echo "leader is member $leader"
"$bin/augur" local stop --dir "$dir" --member "$leader" --kill
v=$("$bin/augurctl" --cluster "$dir/cluster.toml" --json shard get 1 | sed -n 's/.*"version": \([0-9]*\).*/\1/p')
ctl shard cas --id 1 --replicas 3,4,5 --expect "$v"
wait "$watcher" || true
ctl shard list
step "Restart the killed member (local up restarts stopped members and waits until healthy)"
"$bin/augur" local up --dir "$dir"
ctl status

step "Done. The cluster is in $dir; it is stopped on exit."
