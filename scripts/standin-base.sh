#!/usr/bin/env bash
# Builds a local stand-in for gcr.io/distroless/cc-debian12:nonroot from
# Debian packages only (apt-get download + dpkg -x; nothing is fetched when
# the image is built or run), for machines that cannot pull the real one.
#
#   scripts/standin-base.sh [IMAGE]    default localhost/npd-ext-standin/cc-debian12:nonroot
#
# It holds what distroless cc-debian12 holds: glibc, libgcc, libgomp,
# libstdc++, libssl, CA certificates, tzdata, netbase, os-release, and
# /etc/passwd and /etc/group with root, nobody and nonroot (65532), /tmp
# 1777 and /home/nonroot. No shell, no package manager. Differences from the
# real one are listed in docs/image.md.
set -euo pipefail
cd "$(dirname "$0")/.."

image=${1:-localhost/npd-ext-standin/cc-debian12:nonroot}
packages=(libc6 libgcc-s1 libgomp1 libstdc++6 libssl3 ca-certificates tzdata netbase base-files)
debs=target/standin-base/debs
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT

mkdir -p "$debs"
missing=()
for p in "${packages[@]}"; do
  compgen -G "$debs/${p}_*.deb" >/dev/null || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "standin-base: downloading ${missing[*]}"
  (cd "$debs" && apt-get download -q "${missing[@]}" >/dev/null) || {
    apt-get update -qq && (cd "$debs" && apt-get download -q "${missing[@]}" >/dev/null)
  }
fi

for deb in "$debs"/*.deb; do
  name=$(dpkg-deb -f "$deb" Package)
  case "$name" in
    base-files)
      # Only the release description: the rest of base-files is a shell's
      # profile and a login system this image has not.
      tmp=$(mktemp -d)
      dpkg -x "$deb" "$tmp"
      mkdir -p "$root/usr/lib" "$root/etc"
      cp "$tmp/usr/lib/os-release" "$root/usr/lib/os-release"
      ln -s ../usr/lib/os-release "$root/etc/os-release"
      rm -rf "$tmp"
      ;;
    *) dpkg -x "$deb" "$root" ;;
  esac
done

# What the packages' maintainer scripts would have made.
mkdir -p "$root/etc/ssl/certs"
find "$root/usr/share/ca-certificates" -name '*.crt' -print0 | sort -z |
  xargs -0 cat >"$root/etc/ssl/certs/ca-certificates.crt"
ln -sf /usr/share/zoneinfo/Etc/UTC "$root/etc/localtime"
# Scripts that need a shell the image does not have, and documentation.
rm -rf "$root/usr/sbin/update-ca-certificates" "$root/usr/share/doc" "$root/usr/share/man" \
  "$root/usr/share/lintian" "$root/usr/share/locale"
rm -f "$root"/usr/sbin/tzconfig

cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin
EOF
cat >"$root/etc/group" <<'EOF'
root:x:0:
nobody:x:65534:
tty:x:5:
staff:x:50:
nonroot:x:65532:
EOF
cat >"$root/etc/nsswitch.conf" <<'EOF'
passwd:         files
group:          files
shadow:         files
hosts:          files dns
networks:       files
protocols:      files
services:       files
ethers:         files
rpc:            files
EOF
install -d -m 0700 "$root/root"
install -d -m 0700 -o 65532 -g 65532 "$root/home/nonroot"
install -d -m 1777 "$root/tmp"

for sh in bin/sh bin/bash bin/dash usr/bin/sh usr/bin/bash usr/bin/dash; do
  if [ -e "$root/$sh" ]; then
    echo "standin-base: $sh is in the image, but distroless has no shell" >&2
    exit 1
  fi
done

podman rmi -f "$image" >/dev/null 2>&1 || true
tar -C "$root" --numeric-owner -c . | podman import \
  --change 'USER 65532:65532' --change 'WORKDIR /home/nonroot' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
  --quiet --message "stand-in for distroless cc-debian12:nonroot from Debian packages: ${packages[*]}" \
  - "$image" >/dev/null
echo "standin-base: $image ($(podman image inspect --format '{{.Size}}' "$image") bytes)"
