#!/usr/bin/env bash
# Idle footprint of the two long-running applets: starts gpu-monitor (sim,
# 8 GPUs) and a detector connected to it, and a second detector running
# upstream's kernel-monitor.json on the real /dev/kmsg (when readable), lets
# them settle, then reports RSS after SECS seconds and CPU use over the
# window (10 s .. SECS).
#
# Usage: scripts/idle-footprint.sh [SECS]   (default 60)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
cargo build --release --locked --quiet
bin=$PWD/target/release/npd-ext
dir=$(mktemp -d)
cleanup() { kill "${gm:-}" "${det:-}" "${kdet:-}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT

sed "s#/var/run/npd/npd-gpu-monitor.sock#$dir/gpu.sock#" examples/external-gpu-monitor.json > "$dir/gpu.json"
"$bin" gpu-monitor --backend sim --socket "$dir/gpu.sock" 2>"$dir/gpu.log" & gm=$!
"$bin" detector --config.external-monitor "$dir/gpu.json" --port 20356 --prometheus-port 20357 2>"$dir/detector.log" & det=$!
kmsg_cfg=../shared/npd-configs/kernel-monitor.json
if [ -r /dev/kmsg ] && [ -r "$kmsg_cfg" ]; then
  "$bin" detector --config.system-log-monitor "$kmsg_cfg" --port 20358 --prometheus-port 20359 2>"$dir/kdetector.log" & kdet=$!
fi

hz=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

sleep 10
gm0=$(ticks $gm); det0=$(ticks $det); [ -n "${kdet:-}" ] && kdet0=$(ticks $kdet); t0=$(date +%s.%N)
sleep $((secs - 10))
gm1=$(ticks $gm); det1=$(ticks $det); [ -n "${kdet:-}" ] && kdet1=$(ticks $kdet); t1=$(date +%s.%N)

curl -fsS http://127.0.0.1:20356/healthz >/dev/null || { echo "detector unhealthy" >&2; exit 1; }
report() { # name pid ticks0 ticks1
  awk -v n="$1" -v rss="$(rss_kib "$2")" -v a="$3" -v b="$4" -v t0="$t0" -v t1="$t1" -v hz="$hz" \
    'BEGIN { printf "%-12s idle RSS %.1f MiB after '"$secs"' s; CPU %.3f%% of one core over %.0f s\n", n, rss/1024, 100*(b-a)/hz/(t1-t0), t1-t0 }'
}
report gpu-monitor $gm "$gm0" "$gm1"
report detector $det "$det0" "$det1"
if [ -n "${kdet:-}" ]; then
  report kmsg-detector $kdet "$kdet0" "$kdet1"
fi
