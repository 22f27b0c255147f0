#!/usr/bin/env bash
# Every benchmark of docs/performance.md, in one go, on this machine, with
# the commit measured: the gRPC round trip and fault latency, the GPU health
# model and kernel-log parsing, the filelog monitor, and the idle footprint.
#
# Usage: scripts/bench.sh [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
quick=${1:-}
echo "commit $(git rev-parse --short HEAD)$(git diff --quiet || echo '+dirty') on $(uname -m), $(nproc) CPUs, $(date -u +%FT%TZ)"
for bench in skeleton gpu filelog; do
  echo "== cargo bench --bench $bench $quick"
  cargo bench --locked --bench "$bench" -- $quick 2>/dev/null | grep -vE '^(running|test result|$)'
done
echo "== scripts/idle-footprint.sh"
scripts/idle-footprint.sh "$([ "$quick" = --quick ] && echo 20 || echo 60)"
