#!/usr/bin/env bash
# Does gpu-monitor's /metrics parse with a real Prometheus client? Starts
# gpu-monitor (sim, 8 GPUs) on a scenario that raises XID 48 on GPU 1
# (GPUResetRequired), an XID 13 storm on GPU 5, PCIe replays and corrected ECC
# errors on GPU 3, with --metrics-address 127.0.0.1:0 (the bound address is
# read from its log), then checks the page with prometheus_client's text parser
# (scripts/gpu_metrics_check.py): families, types, 8 GPUs × labels, the XID
# counter and a condition series at 1. Exit 0 when every check passes.
# Usage: scripts/gpu-metrics-check.sh [BINARY] (default target/debug/npd-ext).
# Needs python3 with prometheus_client (a venv: PYTHON=path/to/python).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/debug/npd-ext}
py=${PYTHON:-python3}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
"$bin" gpu-monitor --backend sim --sim-gpus 8 \
  --sim-scenario tests/fixtures/gpu-metrics/scenario.json --poll-interval 200ms \
  --metrics-address 127.0.0.1:0 --state-dir "$work/state" --socket "$work/run/gpu.sock" \
  --log-format plain 2>"$work/gpu-monitor.log" &
url=
for _ in $(seq 100); do
  url=$(grep -o 'http://[0-9.:]*/metrics' "$work/gpu-monitor.log" | head -1 || true)
  [ -n "$url" ] && break
  sleep 0.1
done
if [ -z "$url" ]; then
  echo "gpu-monitor logged no metrics address:" >&2
  cat "$work/gpu-monitor.log" >&2
  exit 1
fi
"$py" scripts/gpu_metrics_check.py "$url"
