#!/usr/bin/env bash
# The main job: the whole story on a local cluster of real processes.
#
# 3 metadata members + 5 storage nodes (RF 3), a client workload running throughout. One node's
# disk turns fail-slow; its risk rises (with reasons), the risk policy drains it (progress
# shown), it dies, and the workload reports what it cost. Then the same on an identical cluster
# with prediction off, for contrast, and a summary table.
#
#   scripts/demo.sh [--death-after 120s] [--quick]
#
# --quick runs only the prediction-on half. Each half is `augur bench failover`, which starts
# and removes its own cluster; its figures are explained in README "Performance".
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

death_after=120s quick=0
while [ $# -gt 0 ]; do
    case "$1" in
        --death-after) death_after=$2; shift 2 ;;
        --quick) quick=1; shift ;;
        *) echo "unknown flag $1" >&2; exit 2 ;;
    esac
done

cargo build --release --workspace --bins
bin="$AUGUR_PROFILE_DIR"
out=$(mktemp -d -t augur-demo-XXXX)

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

run() {
    local predict=$1
    "$bin/augur" bench failover --predict "$predict" --death-after "$death_after" --json \
        >"$out/$predict.json"
}

step "Prediction on: 3 metadata members, 5 storage nodes, 16 shards at RF 3, a workload of puts and gets"
echo "The node leading the most shards gets a fail-slow disk; it dies $death_after later."
run on

if [ "$quick" = 0 ]; then
    step "Prediction off: the same cluster, workload, fault and death; the cluster only reacts"
    run off
fi

field() { sed -n "s/^ *\"$2\": \([^,]*\),*$/\1/p" "$out/$1.json" | head -1; }
step "Summary (what the clients paid for one node's death)"
printf '%-28s %14s' "" "prediction on"
[ "$quick" = 0 ] && printf ' %14s' "prediction off"
printf '\n'
for f in failed_requests indeterminate_requests unavailable_s below_rf_s ok_requests \
    slow_requests slowest_request_ms flagged_after_s drained_after_s replicas_at_death restored_after_s; do
    printf '%-28s %14s' "$f" "$(field on "$f")"
    [ "$quick" = 0 ] && printf ' %14s' "$(field off "$f")"
    printf '\n'
done
echo
echo "Full reports (JSON) in $out"
