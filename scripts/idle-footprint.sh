#!/usr/bin/env bash
# Idle footprint of the two long-running applets: starts gpu-monitor (sim,
# 8 GPUs) and a detector connected to it, and a second detector running a
# kernel monitor on the real /dev/kmsg (when readable), lets them settle,
# then reports RSS after SECS seconds and CPU use over the window (10 s .. SECS).
# The kernel monitor is the kernel-monitor.json we ship (in
# manifests/npd-ext-config.yaml); with NPD_EXT_COMPAT_DIR set, upstream NPD's
# from $NPD_EXT_COMPAT_DIR/npd-configs/.
#
# Usage: [NPD_EXT_COMPAT_DIR=DIR] scripts/idle-footprint.sh [SECS]   (default 60)
set -euo pipefail
compat=${NPD_EXT_COMPAT_DIR:+$(cd "$NPD_EXT_COMPAT_DIR" && pwd)}
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
if [ -n "$compat" ]; then
  kmsg_cfg=$compat/npd-configs/kernel-monitor.json
else
  # The ConfigMap's kernel-monitor.json entry: its block, unindented.
  kmsg_cfg=$dir/kernel-monitor.json
  awk '/^  kernel-monitor\.json: [|]$/ {on=1; next} on && /^[^ ]|^ [^ ]|^  [^ ]/ {exit} on {sub(/^    /, ""); print}' \
    manifests/npd-ext-config.yaml > "$kmsg_cfg"
  [ -s "$kmsg_cfg" ] || { echo "no kernel-monitor.json in manifests/npd-ext-config.yaml" >&2; exit 1; }
fi
echo "kmsg-detector config: $kmsg_cfg"
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
