#!/usr/bin/env bash
# Installs what a fresh Debian machine with Rust lacks, and picks the cargo target directory.
# Sourced by scripts/demo.sh and scripts/test.sh; safe to run again.
set -euo pipefail

# RocksDB's bindings need clang; the fault-injection tests need nftables, iproute2 and faketime;
# the power-loss test's FUSE filesystem (augur-lazyfs) mounts by itself as root and needs fuse3
# (fusermount3) only when not root; the health agent reads SMART with smartmontools
# (smartctl --json).
need=()
for pkg in clang libclang-dev nftables iproute2 faketime fuse3 smartmontools; do
    dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need[@]}" >/dev/null
fi

# One target directory outside the clone, shared by every build of this machine: a cold
# RocksDB build takes 15-30 minutes on 2 cores and is then reused by every clone.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/augur/target}"
mkdir -p "$CARGO_TARGET_DIR"
# One profile for binaries, tests and benchmarks.
export AUGUR_PROFILE_DIR="$CARGO_TARGET_DIR/release"
