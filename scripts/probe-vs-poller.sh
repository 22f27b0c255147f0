#!/usr/bin/env bash
# Does the liveness probe eat a polling detector's events? gpu-monitor (sim)
# raises XID 48 on GPU 1 at 3 s; `npd-ext probe` runs 5 times a second
# beside a grpcio client (another gRPC implementation, as the Go proof of
# concept's detector is) that polls CheckHealth once a second on one channel.
# Prints what the poller saw; exit 0 when it saw the XID 48 event.
# Usage: scripts/probe-vs-poller.sh [BINARY] (default target/debug/npd-ext).
# Needs python3 with grpcio and grpcio-tools (a venv: PYTHON=path/to/python).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/debug/npd-ext}
py=${PYTHON:-python3}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
"$py" -m grpc_tools.protoc -Iproto --python_out="$work" --grpc_python_out="$work" \
  proto/npd/external/v1/external_monitor.proto
echo '{"steps": [{"at": "3s", "gpu": 1, "fault": {"xid": 48}}]}' > "$work/xid48.json"
"$bin" gpu-monitor --backend sim --sim-scenario "$work/xid48.json" --state-dir "$work/state" \
  --socket "$work/run/gpu.sock" 2>"$work/gpu-monitor.log" &
for _ in $(seq 100); do [ -S "$work/run/gpu.sock" ] && break; sleep 0.1; done
( while :; do "$bin" probe "$work/run/gpu.sock" >/dev/null 2>&1 || true; sleep 0.2; done ) &
PYTHONPATH="$work" "$py" - "$work/run/gpu.sock" <<'PY'
import sys, time, grpc
from npd.external.v1 import external_monitor_pb2 as pb, external_monitor_pb2_grpc as rpc
# The default authority is the socket path, which hyper refuses.
channel = grpc.insecure_channel("unix://" + sys.argv[1], options=[("grpc.default_authority", "localhost")])
stub = rpc.ExternalMonitorStub(channel)
seen = []
for _ in range(10):
    status = stub.CheckHealth(pb.HealthCheckRequest(), timeout=5)
    seen += [e.message for e in status.events]
    time.sleep(1)
xid = [m for m in seen if "XID 48" in m]
print(f"poller saw {len(seen)} events over 10 polls; XID 48: {len(xid)}")
for m in xid:
    print("  " + m[:160])
sys.exit(0 if xid else 1)
PY
