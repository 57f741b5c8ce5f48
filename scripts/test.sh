#!/usr/bin/env bash
# The test command: builds everything once in release mode and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

cargo build --release --workspace --bins
export AUGUR_BIN="$AUGUR_PROFILE_DIR/augur"
# Multi-process tests start real clusters; two at a time keeps a 2-core machine honest.
cargo test --release --workspace -- --test-threads=2
