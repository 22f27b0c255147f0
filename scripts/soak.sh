#!/usr/bin/env bash
# Soak run: detector + simulated gpu-monitor under chaos + the fake API
# server, in one process, for SECS seconds (default 600); fails when RSS,
# file descriptors, threads or tasks keep growing, or the Node does not end
# all False. The numbers go to docs/performance.md.
#
# Usage: scripts/soak.sh [SECS]
set -euo pipefail
cd "$(dirname "$0")/.."
export SOAK_SECS=${1:-600}
cargo test --release --locked --test soak -- --ignored --nocapture 2>&1 | grep -E '^soak|test result|panicked|assert'
