#!/usr/bin/env bash
# Device check, run on a machine with a real NVIDIA GPU (see docs/gpu-validation.md).
# Records what the host offers (driver, NVML library, PCI sysfs, /dev/nvidia*,
# kernel-log format) and runs our release binary there: gpu-monitor + probe +
# detector + SIGTERM. Writes everything under $OUT (default ./device-out).
#
# Usage: scripts/device-check.sh [path/to/npd-ext]
set -u
bin=${1:-target/release/npd-ext}
out=${OUT:-$PWD/device-out}
mkdir -p "$out"
work=$(mktemp -d)

{
  echo "## host"; uname -srm; grep -E '^(PRETTY_NAME)=' /etc/os-release; ldd --version | head -1
  echo "## nvidia-smi"
  nvidia-smi --query-gpu=index,name,uuid,pci.bus_id,serial,driver_version,temperature.gpu,clocks_throttle_reasons.active,ecc.errors.uncorrected.volatile.total --format=csv 2>&1
  echo "## NVML library"
  ldconfig -p | grep -E 'libnvidia-ml' ; ls -d /run/nvidia/driver 2>&1
  echo "## /dev/nvidia*"; ls -l /dev/nvidia* 2>&1
  echo "## NVIDIA PCI functions (vendor 0x10de) in sysfs"
  for d in /sys/bus/pci/devices/*; do
    [ "$(cat "$d/vendor")" = 0x10de ] || continue
    drv=$(readlink "$d/driver" 2>/dev/null); drv=${drv##*/}
    echo "$(basename "$d") class=$(cat "$d/class") device=$(cat "$d/device") driver=${drv:-none} link=$(cat "$d/current_link_speed" 2>/dev/null)/x$(cat "$d/current_link_width" 2>/dev/null)"
  done
  echo "## kernel log: NVRM lines (raw /dev/kmsg records)"
  timeout 2 cat /dev/kmsg 2>&1 | grep -m 15 -E 'NVRM|nvidia' || echo "(none readable)"
  echo "## boot id"; cat /proc/sys/kernel/random/boot_id
} > "$out/host.txt" 2>&1

{
  echo "## $bin --version"; "$bin" --version
  sock=$work/run/npd/gpu.sock
  "$bin" gpu-monitor --backend sim --socket "$sock" --sim-scenario builtin:xid79 2> "$out/gpu-monitor.log" &
  gm=$!
  for _ in $(seq 200); do [ -S "$sock" ] && break; sleep 0.05; done
  echo "## socket"; ls -l "$sock"
  echo "## probe (table)"; "$bin" probe "$sock"; echo "rc=$?"
  sed "s#/var/run/npd/npd-gpu-monitor.sock#$sock#" examples/external-gpu-monitor.json > "$work/gpu.json"
  "$bin" validate-config "$work/gpu.json"; echo "validate rc=$?"
  "$bin" detector --config.external-monitor "$work/gpu.json" --port 20256 --prometheus-port 20260 2> "$out/detector.log" &
  det=$!
  sleep 3
  echo "## /conditions after 3 s (XID 79 on GPU 3 at 2 s)"
  exec 3<>/dev/tcp/127.0.0.1/20256 && printf 'GET /conditions HTTP/1.0\r\n\r\n' >&3 && cat <&3; echo
  echo "## footprint"
  for p in $gm $det; do echo "pid $p $(tr '\0' ' ' < /proc/$p/cmdline | cut -c1-40) $(grep VmRSS /proc/$p/status)"; done
  kill -TERM $gm $det; wait $gm; echo "gpu-monitor exit=$?"; wait $det; echo "detector exit=$?"
  [ -e "$sock" ] && echo "socket LEFT BEHIND" || echo "socket removed"
} > "$out/run.txt" 2>&1

# The NVML backend against the real GPU: fast sweeps every second, logged
# with their cost; probe and detector see the real GPUs.
{
  sock=$work/nvml/gpu.sock
  RUST_LOG=npd_ext=debug "$bin" gpu-monitor --backend nvml --poll-interval 1s --slow-every 1 --state-dir "$work/state" --socket "$sock" \
    --metrics-address 127.0.0.1:20262 2> "$out/nvml-gpu-monitor.log" &
  gm=$!
  for _ in $(seq 200); do [ -S "$sock" ] && break; sleep 0.05; done
  sleep 3
  echo "## probe --json (NVML backend)"; "$bin" probe --json "$sock"; echo "rc=$?"
  sed "s#/var/run/npd/npd-gpu-monitor.sock#$sock#" examples/external-gpu-monitor.json > "$work/nvml.json"
  "$bin" detector --config.external-monitor "$work/nvml.json" --port 20257 --prometheus-port 20261 2> "$out/nvml-detector.log" &
  det=$!
  sleep 12
  echo "## /conditions (NVML backend)"
  exec 3<>/dev/tcp/127.0.0.1/20257 && printf 'GET /conditions HTTP/1.0\r\n\r\n' >&3 && cat <&3; echo
  echo "## gpu-monitor /metrics (NVML backend; per-GPU series and call timings)"
  exec 4<>/dev/tcp/127.0.0.1/20262 && printf 'GET /metrics HTTP/1.0\r\n\r\n' >&4 && grep -v '^#' <&4 | grep -E '^npd_ext_gpu_' | head -60; echo
  echo "## footprint after ~15 s"
  for p in $gm $det; do echo "pid $p $(tr '\0' ' ' < /proc/$p/cmdline | cut -c1-40) $(grep VmRSS /proc/$p/status) cpu_ticks=$(awk '{print $14+$15}' /proc/$p/stat)"; done
  kill -TERM $gm $det; wait $gm; echo "gpu-monitor exit=$?"; wait $det; echo "detector exit=$?"
  echo "## NVML timings from the log"
  grep -E "NVML ready|NVML sweep" "$out/nvml-gpu-monitor.log" | head -5
  grep -c "NVML sweep" "$out/nvml-gpu-monitor.log"
  for kind in Fast Slow VerySlow; do
    grep "depth=$kind " "$out/nvml-gpu-monitor.log" | grep -oE 'took_us=[0-9]+' | cut -d= -f2 | sort -n \
      | awk -v k="$kind" '{a[NR]=$1} END {if (NR) print "sweep (" k ") us: n=" NR " min=" a[1] " p50=" a[int((NR+1)/2)] " max=" a[NR]}'
  done
  echo "## NVML call costs"; grep -E "NVML call costs" "$out/nvml-gpu-monitor.log" | tail -1 | sed 's/.*NVML call costs: //' | tr ';' '\n'
  echo "## warnings, errors and the event thread"; grep -E " WARN | ERROR |event thread" "$out/nvml-gpu-monitor.log" | head -10
} > "$out/nvml.txt" 2>&1

# As the GPU container runs it: non-root (UID 1000), no access to /dev/kmsg.
{
  sock=$work/nonroot/gpu.sock
  mkdir -p "$work/nonroot" && chown 1000:1000 "$work/nonroot" && chmod 755 "$work"
  setpriv --reuid=1000 --regid=1000 --clear-groups "$bin" gpu-monitor --backend nvml --poll-interval 1s \
    --state-dir "$work/nonroot/state" --socket "$sock" 2> "$out/nonroot-gpu-monitor.log" &
  gm=$!
  for _ in $(seq 200); do [ -S "$sock" ] && break; sleep 0.05; done
  sleep 3
  echo "## probe as root of a plugin running as uid 1000"; "$bin" probe "$sock" | head -6; echo "rc=$?"
  kill -TERM $gm; wait $gm; echo "gpu-monitor (uid 1000) exit=$?"
  echo "## its warnings"; grep -E " WARN | ERROR |event thread" "$out/nonroot-gpu-monitor.log" | cut -c1-300
} > "$out/nonroot.txt" 2>&1
# Socket security and the detector's peer check against the real NVML plugin.
{
  echo "## binary"; ls -l "$bin" | awk '{print $5, $9}'
  echo "## a world-writable socket directory is refused"
  mkdir -p "$work/ww" && chmod 1777 "$work/ww"
  timeout 10 "$bin" gpu-monitor --backend nvml --socket "$work/ww/gpu.sock" 2>&1 | tail -2; echo "rc=${PIPESTATUS[0]}"
  sock=$work/sec/gpu.sock
  "$bin" gpu-monitor --backend nvml --poll-interval 1s --kmsg-path none --socket "$sock" 2> "$out/sec-gpu-monitor.log" &
  gm=$!
  for _ in $(seq 200); do [ -S "$sock" ] && break; sleep 0.05; done
  chmod 755 "$work" "$work/sec"; chown 0:65534 "$sock"
  echo "## socket (group 65534 may write it; SO_PEERCRED decides)"; ls -l "$sock"
  echo "## probe as uid 65534 (not in the default --allowed-uids)"
  setpriv --reuid=65534 --regid=65534 --clear-groups "$bin" probe --timeout 2s "$sock" 2>&1 | tail -2; echo "rc=${PIPESTATUS[0]}"
  echo "## probe as root"; "$bin" probe "$sock" | head -4
  for uids in 0 4242; do
    sed -e "s#/var/run/npd/npd-gpu-monitor.sock#$sock#" -e "s#\"socketPath\"#\"allowedPeerUids\": [$uids], \"socketPath\"#" \
      examples/external-gpu-monitor.json > "$work/peer$uids.json"
    "$bin" detector --config.external-monitor "$work/peer$uids.json" --port 20258 --prometheus-port 20259 2> "$out/sec-detector-$uids.log" &
    det=$!
    sleep 4
    echo "## detector with allowedPeerUids [$uids]: GPULost on /conditions, then /healthz"
    exec 3<>/dev/tcp/127.0.0.1/20258 && printf 'GET /conditions HTTP/1.0\r\n\r\n' >&3 && cat <&3 | tr '{' '\n' | grep '"GPULost"' | cut -c1-330
    exec 3<>/dev/tcp/127.0.0.1/20258 && printf 'GET /healthz HTTP/1.0\r\n\r\n' >&3 && cat <&3 | sed -n '1p;$p'
    exec 3<>/dev/tcp/127.0.0.1/20259 && printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3 && cat <&3 | grep -E '^npd_ext_task_panics_total' | head -3
    kill -TERM $det; wait $det; echo "detector exit=$?"
  done
  echo "## gpu-monitor RSS, then SIGTERM"; grep VmRSS /proc/$gm/status
  kill -TERM $gm; wait $gm; echo "gpu-monitor exit=$?"
  echo "## the plugin's log of refused peers"; grep -E "refused" "$out/sec-gpu-monitor.log" | cut -c1-300
} > "$out/security.txt" 2>&1
rm -rf "$work"
cat "$out/host.txt" "$out/run.txt" "$out/nvml.txt" "$out/nonroot.txt" "$out/security.txt"
