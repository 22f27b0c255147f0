#!/usr/bin/env bash
# `just image-test`: builds the image from the project's files with podman
# and runs both deployment variants as pods under `podman kube play`, from
# the pod templates exactly as kustomize renders them from manifests/.
#
# - the release binary is built here and copied in (BINARY=host), on a
#   stand-in for distroless cc-debian12 built from Debian packages
#   (scripts/standin-base.sh), unless RUNTIME_IMAGE names a base to use;
# - checks on the image: --version as UID 1000, every applet symlink, no
#   shell, the OCI labels;
# - the integrated pod (NVML, no driver: GPUDriverNotReady), the same pod
#   with a simulated XID 79 (GPULost naming gpu=3 within 5 s), the separate
#   pair sharing a host directory; liveness probes, the guide's
#   troubleshooting commands, a clean `podman kube down`.
#
# Installs podman, runc and python3-yaml when missing. Podman runs with its
# own containers.conf (CONTAINERS_CONF; /etc/containers is left alone).
# Every container, pod, volume and image it makes is removed, also on failure.
# NPD_EXT_BINARY=path uses that release binary instead of building one;
# RUNTIME_IMAGE=ref uses that base instead of the stand-in.
set -Eeuo pipefail
trap 'echo "image-test: line $LINENO: \"$BASH_COMMAND\" failed" >&2' ERR
cd "$(dirname "$0")/.."

say() { echo "image-test: $*"; }
fail() {
  echo "image-test: FAIL: $*" >&2
  exit 1
}

# --- tools -------------------------------------------------------------------
need=()
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
command -v curl >/dev/null || need+=(curl)
/usr/bin/python3 -c 'import yaml' 2>/dev/null || need+=(python3-yaml)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v kubectl >/dev/null || fail "kubectl not found: needed to render manifests/"

work=$(mktemp -d /tmp/npd-image-test.XXXXXX)
# crun cannot set rlimits in this sandbox and its cgroups are hybrid: runc,
# cgroupfs, explicit ulimits; events to a file (there is no journald).
cat >"$work/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$work/events.log"
EOF
export CONTAINERS_CONF="$work/containers.conf"
say "podman $(podman --version | awk '{print $3}') with $CONTAINERS_CONF (runc, cgroupfs)"

# --- what this run makes, and its removal ----------------------------------------
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
revision=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
standin=localhost/npd-ext-image-test/cc-debian12:nonroot
runtime_image=${RUNTIME_IMAGE:-$standin}
images=()
played=()
# What is there before, so that what this run adds (volumes kube play makes,
# podman's pause image, untagged build stages) can be told apart.
volumes_before=$(podman volume ls -q | sort -u)
pause_before=$(podman images -q --filter reference='localhost/podman-pause')
cleanup() {
  local rc=$?
  for y in "${played[@]}"; do [ -z "$y" ] || podman kube down "$y" >/dev/null 2>&1 || true; done
  for p in $(cat "$work"/*/pods 2>/dev/null | awk '$1 == "pod" {print $2}' | sort -u); do
    podman pod rm -f "$p" >/dev/null 2>&1 || true
  done
  for i in "${images[@]}"; do podman rmi -f "$i" >/dev/null 2>&1 || true; done
  [ "$runtime_image" = "$standin" ] && podman rmi -f "$standin" >/dev/null 2>&1 || true
  for v in $(comm -13 <(echo "$volumes_before") <(podman volume ls -q | sort -u)); do
    podman volume rm -f "$v" >/dev/null 2>&1 || true
  done
  if [ -z "$pause_before" ]; then
    podman rmi -f $(podman images -q --filter reference='localhost/podman-pause') >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
  [ $rc -eq 0 ] || echo "image-test: failed (exit $rc); everything it made is removed" >&2
}
trap cleanup EXIT

# --- the image -----------------------------------------------------------------
# Seconds since $1 (date +%s.%N), to the millisecond.
since() { awk -v now="$(date +%s.%N)" -v t0="$1" 'BEGIN { printf "%.3f", now - t0 }'; }

case "$(uname -m)" in
  x86_64) arch=amd64 ;;
  aarch64) arch=arm64 ;;
  *) fail "no image platform for $(uname -m)" ;;
esac
# NPD_EXT_BINARY: a release binary built already, instead of building one.
binary=${NPD_EXT_BINARY:-target/release/npd-ext}
if [ -z "${NPD_EXT_BINARY:-}" ]; then
  say "cargo build --release --locked"
  cargo build --release --locked --quiet
fi
rm -rf "dist/linux-$arch"
scripts/dist.sh "$binary" "dist/linux-$arch"
if [ "$runtime_image" = "$standin" ]; then
  scripts/standin-base.sh "$standin"
fi

rendered="$work/integrated.yaml"
kubectl kustomize manifests/ >"$rendered"
# The separate pair, rendered through the same kustomization.
mkdir -p "$work/separate-manifests"
cp manifests/*.yaml "$work/separate-manifests/"
sed -i 's/^  - npd-ext-daemonset.yaml$/  - npd-ext-separate.yaml/' "$work/separate-manifests/kustomization.yaml"
kubectl kustomize "$work/separate-manifests" >"$work/separate.yaml"

# The rendered image references are the tags the pods will find locally.
mapfile -t refs < <(/usr/bin/python3 scripts/kube-pods.py "$rendered" "$work" | sed -n 's/^image //p' &&
  /usr/bin/python3 scripts/kube-pods.py "$work/separate.yaml" "$work" | sed -n 's/^image //p')
mapfile -t refs < <(printf '%s\n' "${refs[@]}" | sort -u)
for r in "${refs[@]}"; do
  # It will remove what it tags: never someone's image of the same name.
  if podman image exists "$r"; then fail "$r exists already; remove it or run elsewhere"; fi
done
image=${refs[0]}
images+=("${refs[@]}")
start=$(date +%s.%N)
# The build leaves one untagged image per stage: those are ours to remove.
before=$(podman images -q --filter dangling=true | sort -u)
podman build --quiet --platform "linux/$arch" \
  --build-arg BINARY=host --build-arg RUNTIME_IMAGE="$runtime_image" \
  --build-arg VERSION="v$version" --build-arg REVISION="$revision" \
  -t "$image" . >/dev/null
images+=($(comm -13 <(echo "$before") <(podman images -q --filter dangling=true | sort -u)))
for r in "${refs[@]:1}"; do podman tag "$image" "$r"; done
say "built $image (also tagged ${refs[*]:1}) on $runtime_image in $(since "$start") s"

size=$(podman image inspect --format '{{.Size}}' "$image")
say "image size $size bytes ($((size / 1000000)) MB)"

# --- checks on the image --------------------------------------------------------
out=$(podman run --rm --user 1000:1000 --network none "$image" --version)
[ "$out" = "npd-ext $version" ] || fail "--version as 1000: $out"
user=$(podman image inspect --format '{{.Config.User}}' "$image")
[ "$user" = "1000:1000" ] || fail "image user $user, want 1000:1000"
say "npd-ext --version as UID 1000: $out; image USER $user"
env=$(podman image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$image")
grep -qx 'MALLOC_ARENA_MAX=1' <<<"$env" || fail "image env lacks MALLOC_ARENA_MAX=1: $env"

ctr=$(podman create "$image")
podman export "$ctr" >"$work/rootfs.tar"
podman rm "$ctr" >/dev/null
tar -tvf "$work/rootfs.tar" >"$work/rootfs.list"
for sh in bin/sh bin/bash bin/dash usr/bin/sh usr/bin/bash usr/bin/dash bin/busybox; do
  if grep -qE " \\.?/?$sh( |$)" "$work/rootfs.list"; then fail "the image has $sh"; fi
done
if podman run --rm --network none --entrypoint /bin/sh "$image" -c true >/dev/null 2>&1; then
  fail "/bin/sh runs in the image"
fi
mapfile -t applets < <(grep -E '^l.* usr/bin/[a-z-]+ -> npd-ext$' "$work/rootfs.list" | sed -E 's#.* usr/bin/([a-z-]+) -> npd-ext$#\1#' | sort)
printf '%s\n' "${applets[@]}" | grep -qx prepare-dir || fail "no prepare-dir symlink: ${applets[*]}"
for a in "${applets[@]}"; do
  out=$(podman run --rm --network none --entrypoint "/usr/bin/$a" "$image" --version)
  [ "$out" = "$a $version" ] || fail "/usr/bin/$a --version: $out"
done
say "no shell; ${#applets[@]} applet symlinks resolve and dispatch: ${applets[*]}"
for h in log-counter health-checker; do
  grep -qE "^l.* home/kubernetes/bin/$h -> /usr/bin/npd-ext\$" "$work/rootfs.list" ||
    fail "no /home/kubernetes/bin/$h -> /usr/bin/npd-ext symlink"
  out=$(podman run --rm --network none --entrypoint "/home/kubernetes/bin/$h" "$image" --version)
  [ "$out" = "$h $version" ] || fail "/home/kubernetes/bin/$h --version: $out"
done
say "/home/kubernetes/bin/{log-counter,health-checker} are NPD's helpers"
for label in version:"v$version" revision:"$revision"; do
  key=${label%%:*}
  want=${label#*:}
  got=$(podman image inspect --format "{{ index .Labels \"org.opencontainers.image.$key\" }}" "$image")
  [ "$got" = "$want" ] || fail "label org.opencontainers.image.$key is '$got', want '$want'"
done
say "labels: version v$version, revision $revision"

# --- pods ------------------------------------------------------------------------

# Waits up to $2 s for the detector's /conditions to hold condition $1 with
# status True and a message matching $3.
wait_condition() {
  local type=$1 limit=$2 pattern=$3 deadline body
  deadline=$(($(date +%s) + limit))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    body=$(curl -sf --max-time 2 http://127.0.0.1:20256/conditions || true)
    if [ -n "$body" ] && /usr/bin/python3 -c '
import json, re, sys
conds = {c["type"]: c for c in json.loads(sys.argv[1])}
c = conds.get(sys.argv[2])
sys.exit(0 if c and c["status"] == "True" and re.search(sys.argv[3], c["message"]) else 1)
' "$body" "$type" "$pattern"; then
      return 0
    fi
    sleep 0.1
  done
  echo "$body" >&2
  return 1
}

# Plays $1 (a directory from kube-pods.py), recording it for cleanup.
play() {
  played+=("$1/pods.yaml")
  # (podman 4.3 logs that it cannot reach systemd to time healthchecks.)
  podman kube play --configmap "$1/configmap.yaml" "$1/pods.yaml" >"$1/play.log" 2>&1 ||
    { cat "$1/play.log" >&2; fail "kube play $1"; }
}

# Runs every exec liveness probe of the pods in $1 (lines from kube-pods.py).
# `podman healthcheck run` runs it where podman made it a plain command;
# podman before 4.4 wraps an exec probe in CMD-SHELL, which needs a
# /bin/sh the image has not, so there it is run as the kubelet runs one:
# the probe's command exec'd in the container under its timeout.
probes() {
  local ctr timeout argv test
  while read -r _ ctr timeout argv; do
    test=$(podman inspect --format '{{index .Config.Healthcheck.Test 0}}' "$ctr")
    if [ "$test" = CMD-SHELL ]; then
      timeout "$timeout" podman exec "$ctr" $argv >/dev/null ||
        fail "liveness probe of $ctr ($argv) fails"
      say "liveness probe of $ctr passes: exec $argv (podman $(podman --version | awk '{print $3}') makes it CMD-SHELL, which needs /bin/sh)"
    else
      podman healthcheck run "$ctr" >/dev/null || fail "podman healthcheck run $ctr fails"
      say "liveness probe of $ctr passes: podman healthcheck run"
    fi
  done < <(grep '^probe ' "$1/pods")
}

# The earliest start of the containers named on the pod lines of $1, in s.
started() {
  local first=""
  for c in $(awk '$1 == "pod" {for (i = 3; i <= NF; i++) print $2 "-" $i}' "$1/pods"); do
    t=$(podman inspect --format '{{.State.StartedAt.UnixNano}}' "$c")
    if [ -z "$first" ] || [ "$t" -lt "$first" ]; then first=$t; fi
  done
  awk -v t="$first" 'BEGIN { printf "%.3f", t / 1e9 }'
}

# Host pid, uid, read-only root and effective capabilities of a container.
process_of() {
  local pid
  pid=$(podman inspect --format '{{.State.Pid}}' "$1")
  echo "pid=$pid uid=$(awk '/^Uid:/ {print $2}' "/proc/$pid/status")" \
    "readonly=$(podman inspect --format '{{.HostConfig.ReadonlyRootfs}}' "$1")" \
    "capeff=$(awk '/^CapEff:/ {print $2}' "/proc/$pid/status")"
}

# The host directory behind a container's mount at $2.
mount_source() {
  podman inspect --format "{{range .Mounts}}{{if eq .Destination \"$2\"}}{{.Source}}{{end}}{{end}}" "$1"
}

# Memory of each container: podman's figure (its cgroup's usage less
# inactive page cache) and the process's own VmRSS.
rss() {
  local c pid
  for c in "$@"; do
    pid=$(podman inspect --format '{{.State.Pid}}' "$c")
    echo "$c podman $(podman stats --no-stream --no-reset --format '{{.MemUsage}}' "$c" | sed 's/ \/ / of /'), VmRSS $(awk '/^VmRSS:/ {print $2 " " $3}' "/proc/$pid/status")"
  done
}

# Stops the pods of $1 as the kubelet deletes a pod: SIGTERM, SIGKILL after
# its terminationGracePeriodSeconds (`podman pod stop --time`); every
# container must exit 0 within it, and the socket $2 must be gone. Then
# `podman kube down` removes them. (podman 4.3's kube down stops with a
# zero timeout, SIGKILL at once, so it cannot show a clean stop.)
down() {
  local dir=$1 socket=$2 name grace t0 took codes c code
  while read -r _ name grace; do
    : >"$work/events.log"
    t0=$(date +%s.%N)
    podman pod stop --time "$grace" "$name" >"$dir/stop.log" 2>&1 || { cat "$dir/stop.log" >&2; fail "pod stop $name"; }
    took=$(since "$t0")
    podman events --stream=false --filter event=died \
      --format '{{.Name}} {{.ContainerExitCode}}' >"$dir/died" || fail "podman events"
    codes=""
    for c in $(awk -v pod="$name" '$1 == "pod" && $2 == pod {for (i = 3; i <= NF; i++) print pod "-" $i}' "$dir/pods"); do
      code=$(awk -v c="$c" '$1 == c {print $2}' "$dir/died" | tail -n1)
      [ "$code" = 0 ] || fail "$c exited with '${code:-no exit recorded}' when its pod stopped"
      codes+="$c=0 "
    done
    say "pod $name stopped in $took s (grace $grace s); exits: $codes"
    awk -v t="$took" -v g="$grace" 'BEGIN { exit !(t < g) }' || fail "$name took $took s to stop"
  done < <(grep '^grace ' "$dir/pods")
  [ ! -e "$socket" ] || fail "the socket $socket outlived the stop"
  say "the socket is removed"
  # podman 4.3's kube down of two pods once left one behind, empty (seen in
  # 1 of 4 runs): its error is shown and the pods are removed by name.
  if ! podman kube down "$dir/pods.yaml" >"$dir/down.log" 2>&1; then
    say "podman kube down failed: $(grep -v 'msg="Removing timer' "$dir/down.log" | tr '\n' ' ')"
    for p in $(awk '$1 == "pod" {print $2}' "$dir/pods"); do podman pod rm -f "$p" >/dev/null 2>&1 || true; done
  fi
  for p in $(awk '$1 == "pod" {print $2}' "$dir/pods"); do
    if podman pod exists "$p"; then fail "pod $p outlived kube down"; fi
  done
  played=("${played[@]/"$dir/pods.yaml"/}")
}

[ -e /dev/kmsg ] || fail "no /dev/kmsg to mount into the detector"
mkdir -p "$work/var-log"

# 1. Integrated, NVML backend, no driver.
dir="$work/integrated"
mkdir -p "$dir"
/usr/bin/python3 scripts/kube-pods.py "$rendered" "$dir" --host-dir "/var/log=$work/var-log" >"$dir/pods"
read -r _ pod c_npd c_gpu < <(grep '^pod ' "$dir/pods")
npd="$pod-$c_npd"
gpu="$pod-$c_gpu"
t0=$(date +%s.%N)
play "$dir"
wait_condition GPUDriverNotReady 60 'NVML|driver' || fail "GPUDriverNotReady never True on the detector"
say "integrated pod $pod: GPUDriverNotReady True on the detector's /conditions $(since "$t0") s after kube play"
sock_dir=$(mount_source "$gpu" /var/run/npd)
[ "$(stat -c '%u:%g %a' "$sock_dir")" = "1000:1000 750" ] ||
  fail "socket emptyDir is $(stat -c '%u:%g %a' "$sock_dir"), want 1000:1000 750"
[ -S "$sock_dir/npd-gpu-monitor.sock" ] || fail "no socket in the emptyDir"
proc=$(process_of "$gpu")
echo "$proc" | grep -q ' uid=1000 readonly=true capeff=0000000000000000$' ||
  fail "gpu-monitor process: $proc"
say "init container gave the emptyDir 1000:1000 0750; gpu-monitor $proc"
podman logs "$gpu" 2>&1 | grep -q 'NVML' || fail "gpu-monitor logs name no NVML failure"
probes "$dir"
out=$(podman exec "$npd" npd-ext probe /var/run/npd/npd-gpu-monitor.sock) ||
  fail "probe from the detector container: $out"
echo "$out" | grep -qE '^GPUDriverNotReady +True' || fail "probe table: $out"
out=$(podman exec "$gpu" npd-ext probe --json /var/run/npd/npd-gpu-monitor.sock) ||
  fail "probe --json in gpu-monitor: $out"
/usr/bin/python3 -c '
import json, sys
d = json.loads(sys.argv[1])
assert d["ok"] and d["health"] == "SERVING", d
assert {c["type"]: c["status"] for c in d["status"]["conditions"]}["GPUDriverNotReady"] == "True", d
' "$out" || fail "probe --json: $out"
say "troubleshooting: probe from $npd and probe --json in $gpu answer (SERVING, GPUDriverNotReady True)"
rss "$npd" "$gpu" | while read -r line; do say "memory: $line"; done
down "$dir" "$sock_dir/npd-gpu-monitor.sock"

# 2. The same pod, gpu-monitor simulating XID 79 on GPU 3.
dir="$work/xid79"
mkdir -p "$dir"
/usr/bin/python3 scripts/kube-pods.py "$rendered" "$dir" --host-dir "/var/log=$work/var-log" \
  --args "gpu-monitor=--backend,sim,--sim-scenario,builtin:xid79" >"$dir/pods"
t0=$(date +%s.%N)
play "$dir"
# podman 4.3 waits 20 s on every init container that exits (podman issue
# 16343, fixed in 4.4), so the 5 s are counted from the pod's containers'
# start; the time from kube play is reported beside it.
wait_condition GPULost 60 'gpu=3' || fail "GPULost naming gpu=3 never True"
seen=$(date +%s.%N)
up=$(started "$dir")
after_start=$(awk -v a="$seen" -v b="$up" 'BEGIN { printf "%.3f", a - b }')
say "xid79: GPULost True naming gpu=3 $after_start s after the pod's containers started ($(since "$t0") s after kube play)"
awk -v t="$after_start" 'BEGIN { exit !(t < 5) }' || fail "GPULost took $after_start s from the pod's start"
rss "$npd" "$gpu" | while read -r line; do say "memory: $line"; done
down "$dir" "$(mount_source "$gpu" /var/run/npd)/npd-gpu-monitor.sock"

# 3. Separate DaemonSets sharing a host directory.
dir="$work/separate"
mkdir -p "$dir" "$work/host-run-npd"
/usr/bin/python3 scripts/kube-pods.py "$work/separate.yaml" "$dir" \
  --host-dir "/var/log=$work/var-log" --host-dir "/var/run/npd=$work/host-run-npd" >"$dir/pods"
t0=$(date +%s.%N)
play "$dir"
wait_condition GPUDriverNotReady 60 'NVML|driver' ||
  fail "the separate detector never saw GPUDriverNotReady through the host directory"
say "separate pods ($(awk '$1 == "pod" {print $2}' "$dir/pods" | tr '\n' ' ')): GPUDriverNotReady True $(since "$t0") s after kube play"
[ "$(stat -c '%u:%g %a' "$work/host-run-npd")" = "1000:1000 750" ] ||
  fail "host socket directory is $(stat -c '%u:%g %a' "$work/host-run-npd")"
[ -S "$work/host-run-npd/npd-gpu-monitor.sock" ] || fail "no socket in the host directory"
say "prepare-dir gave the host directory 1000:1000 0750; the socket is there"
probes "$dir"
mapfile -t ctrs < <(awk '$1 == "pod" {for (i = 3; i <= NF; i++) print $2 "-" $i}' "$dir/pods")
rss "${ctrs[@]}" | while read -r line; do say "memory: $line"; done
down "$dir" "$work/host-run-npd/npd-gpu-monitor.sock"

say "all checks passed"
