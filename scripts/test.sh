#!/usr/bin/env bash
# The test command: builds everything once in release mode and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

# The fault-injection suite must catch a node that serves reads from local state without
# ReadIndex, and the power-loss test one that skips its WAL syncs (when run with
# AUGUR_UNSAFE_SKIP_WAL_SYNC=1): build that variant first and set it aside, then the real
# binaries (augur-lazyfs, the power-loss test's filesystem, among them).
cargo build --release --workspace --bins \
    --features augur-node/unsafe-local-reads,augur-node/unsafe-test-hooks
# Copy then rename: a still-running old copy must not make the copy fail.
cp "$AUGUR_PROFILE_DIR/augur" "$AUGUR_PROFILE_DIR/augur-unsafe-local-reads.tmp"
mv -f "$AUGUR_PROFILE_DIR/augur-unsafe-local-reads.tmp" "$AUGUR_PROFILE_DIR/augur-unsafe-local-reads"
export AUGUR_UNSAFE_BIN="$AUGUR_PROFILE_DIR/augur-unsafe-local-reads"
cargo build --release --workspace --bins
export AUGUR_BIN="$AUGUR_PROFILE_DIR/augur"
# Multi-process tests start real clusters; two at a time keeps a 2-core machine honest.
cargo test --release --workspace -- --test-threads=2
# `--soak`: also the tests too long for CI (marked #[ignore], each says why; the other
# ignored tests are helper processes other tests start).
if [[ "${1:-}" == "--soak" ]]; then
    cargo test --release --workspace --test migration_faults -- --ignored --test-threads=2
fi
