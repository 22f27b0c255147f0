#!/usr/bin/env sh
# Lays out an image's /usr/bin: the npd-ext binary and one symlink per applet,
# and /home/kubernetes/bin/{log-counter,health-checker}, where NPD's image
# carries its helpers and NPD's stock custom plugin configs call them.
#
#   scripts/dist.sh BINARY DIR      e.g. target/release/npd-ext dist/linux-amd64
#
# The Dockerfile uses it in its build stage, and for a binary built outside
# the container (--build-arg BINARY=host) it is run beforehand on the host,
# once per architecture, so cross-compiled binaries need no emulator.
# The applets are those of src/cli.rs APPLETS (a test holds them equal).
set -eu
bin=$1
dir=$2
mkdir -p "$dir/usr/bin"
cp "$bin" "$dir/usr/bin/npd-ext"
chmod 0755 "$dir/usr/bin/npd-ext"
for applet in detector gpu-monitor validate-config probe demo prepare-dir log-counter health-checker; do
  ln -sfn npd-ext "$dir/usr/bin/$applet"
done
mkdir -p "$dir/home/kubernetes/bin"
for helper in log-counter health-checker; do
  ln -sfn /usr/bin/npd-ext "$dir/home/kubernetes/bin/$helper"
done
