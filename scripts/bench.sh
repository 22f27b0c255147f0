#!/usr/bin/env bash
# Every measurement of docs/performance.md, in one go, on this machine, with
# the commit measured: binary size, the gRPC round trip and fault latency,
# the GPU health model and kernel-log parsing, the filelog monitor, the
# Kubernetes exporter's write counts, the reconnect backoff, the idle
# footprint and, with --soak, the 10-minute soak.
#
# Usage: scripts/bench.sh [--quick] [--soak [SECS]]
set -euo pipefail
cd "$(dirname "$0")/.."
quick=
soak=
while [ $# -gt 0 ]; do
  case $1 in
    --quick) quick=--quick ;;
    --soak) soak=600; if [ "${2:-}" ] && [ "${2#-}" = "$2" ]; then soak=$2; shift; fi ;;
    *) echo "usage: $0 [--quick] [--soak [SECS]]" >&2; exit 2 ;;
  esac
  shift
done
echo "commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo '+dirty') on $(uname -m), $(nproc) CPUs, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(date -u +%FT%TZ)"
cargo build --release --locked --quiet
echo "== release binary: $(stat -c %s target/release/npd-ext) bytes"
for bench in skeleton gpu filelog events; do
  echo "== cargo bench --bench $bench $quick"
  cargo bench --locked --bench "$bench" -- $quick 2>/dev/null | grep -vE '^(running|test result|$)'
done
echo "== Kubernetes exporter write counts (fake API server, paused clock)"
cargo test --release --locked --test k8s -- --nocapture 2>&1 | grep -E '^(condition writes|event writes|write attempts)'
echo "== reconnect backoff against a plugin that hangs up on every call"
cargo test --release --locked --test limits sockets_that_are_not_sockets -- --nocapture 2>&1 | grep -E '^connections'
echo "== scripts/idle-footprint.sh"
scripts/idle-footprint.sh "$([ "$quick" = --quick ] && echo 20 || echo 60)"
if [ -n "$soak" ]; then
  echo "== scripts/soak.sh $soak"
  scripts/soak.sh "$soak"
fi
