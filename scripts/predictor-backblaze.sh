#!/usr/bin/env bash
# The disk model's reproducible protocol on real data (predictor/README.md, "Disk model on
# Backblaze"): import every drive of the shared Backblaze export, split drives by a hash of
# the serial number (70% train, 30% test), train on days before 2015-10-01, evaluate the test
# drives' days from 2015-10-01, for horizons of 7 and 30 days.
#
#   scripts/predictor-backblaze.sh            # import, train and evaluate both horizons
#   SHIP=1 scripts/predictor-backblaze.sh     # ...and install the 30-day model as
#                                             #    predictor/models/disk.model
#
# Work files go to $WORK (default ~/.cache/augur/backblaze), never into the repository: the
# data's terms forbid redistributing it, and the import is several GB unpacked.
# Needs: the shared data at $DATA (default ../shared/data/real-failures/backblaze-hds beside
# the clone). Takes about 35 minutes on the shared 2-core machine (import 1.5 min, two
# trainings of 11-13 min, two evaluations of ~4 min); peak memory about 5 GB.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
DATA="${DATA:-$here/../shared/data/real-failures/backblaze-hds}"
WORK="${WORK:-${XDG_CACHE_HOME:-$HOME/.cache}/augur/backblaze}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/augur/target-predictor}"
UNTIL=2015-10-01

if [ ! -f "$DATA/hds.csv.gz" ]; then
    echo "SKIPPED: Backblaze data not found at $DATA/hds.csv.gz" >&2
    exit 0
fi
mkdir -p "$WORK"
if [ -n "${AUGUR_PREDICT:-}" ]; then
    P="$AUGUR_PREDICT"          # a prebuilt binary (e.g. a copy, so rebuilding meanwhile is safe)
else
    (cd "$here" && cargo build --release -p augur-predictor)
    P="$CARGO_TARGET_DIR/release/augur-predict"
fi

if [ ! -f "$WORK/trace/import.json" ]; then
    rm -rf "$WORK/trace"
    "$P" import backblaze "$DATA/hds.csv.gz" --out "$WORK/trace" | tee "$WORK/import.log"
fi

for h in 30d 7d; do
    "$P" train --kind disk --traces "$WORK/trace" --horizon "$h" --until "$UNTIL" \
        --train-frac 0.7 --split-salt 0 --out "$WORK/disk-$h.model" | tee "$WORK/train-$h.log"
    "$P" eval --model "$WORK/disk-$h.model" --traces "$WORK/trace" --bootstrap 200 \
        --json "$WORK/eval-$h.json" | tee "$WORK/eval-$h.log"
done

if [ "${SHIP:-0}" = 1 ]; then
    cp "$WORK/disk-30d.model" "$here/predictor/models/disk.model"
    echo "installed predictor/models/disk.model"
fi
