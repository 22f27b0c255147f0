# Builds, images and checks, mirroring the upstream Makefile's targets.
# Get just with `cargo install just` or `pip install rust-just`.

REGISTRY := env_var_or_default("REGISTRY", "ghcr.io/npd-ext")
TAG := env_var_or_default("TAG", "v" + `sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1`)
NPD_IMAGE := REGISTRY + "/node-problem-detector"
GPU_IMAGE := REGISTRY + "/gpu-monitor"
PLATFORMS := env_var_or_default("PLATFORMS", "linux/amd64,linux/arm64")
REVISION := `git rev-parse --short HEAD 2>/dev/null || echo unknown`
# docker, or podman (`CONTAINER_TOOL=podman just docker-build`).
CONTAINER_TOOL := env_var_or_default("CONTAINER_TOOL", "docker")
# Where the image's binary comes from: `build` compiles it inside the image;
# `host` copies dist/linux-<arch>/ (`just dist`), built outside it.
BINARY := env_var_or_default("BINARY", "build")
RUNTIME_IMAGE := env_var_or_default("RUNTIME_IMAGE", "gcr.io/distroless/cc-debian12:nonroot")
BUILD_ARGS := "--build-arg VERSION=" + TAG + " --build-arg REVISION=" + REVISION + " --build-arg RUNTIME_IMAGE=" + RUNTIME_IMAGE

default:
    @just --list

# The release binary (one binary: every applet).
build-all-binaries:
    cargo build --release --locked

# arm64 from amd64 needs `rustup target add aarch64-unknown-linux-gnu` and Debian's
# gcc-aarch64-linux-gnu (.cargo/config.toml names the linker); build on glibc 2.36
# (bookworm) or older, so the binary runs on cc-debian12.
# dist/linux-<arch>/ for each of PLATFORMS: the release binary, cross-compiled, with its applet symlinks.
dist:
    #!/usr/bin/env sh
    set -eu
    for platform in $(echo "{{PLATFORMS}}" | tr ',' ' '); do
      arch=${platform#linux/}
      case "$arch" in
        amd64) target=x86_64-unknown-linux-gnu ;;
        arm64) target=aarch64-unknown-linux-gnu ;;
        *) echo "no Rust target for $platform" >&2; exit 1 ;;
      esac
      cargo build --release --locked --target "$target"
      rm -rf "dist/linux-$arch"
      scripts/dist.sh "target/$target/release/npd-ext" "dist/linux-$arch"
    done

# The image, tagged as the detector image (BINARY=host: from `just dist`).
docker-build:
    {{CONTAINER_TOOL}} build {{BUILD_ARGS}} --build-arg BINARY={{BINARY}} -t {{NPD_IMAGE}}:{{TAG}} .

# The same image, tagged as the GPU monitor image.
docker-build-gpu: docker-build
    {{CONTAINER_TOOL}} tag {{NPD_IMAGE}}:{{TAG}} {{GPU_IMAGE}}:{{TAG}}

docker-build-all: docker-build docker-build-gpu

# buildx cannot load a multi-platform image locally, so it pushes.
# Both tags for every platform, pushed, from binaries cross-compiled by `just dist`.
docker-buildx-all: dist
    docker buildx build --platform {{PLATFORMS}} {{BUILD_ARGS}} --build-arg BINARY=host \
        -t {{NPD_IMAGE}}:{{TAG}} -t {{GPU_IMAGE}}:{{TAG}} --push .

docker-push:
    {{CONTAINER_TOOL}} push {{NPD_IMAGE}}:{{TAG}}

docker-push-all: docker-push
    {{CONTAINER_TOOL}} push {{GPU_IMAGE}}:{{TAG}}

# scripts/image-test.sh: removes every container, pod, volume and image it made.
# The image built with podman on a stand-in base, both deployment variants run as pods.
image-test:
    scripts/image-test.sh

# The README's test command.
test:
    cargo test --locked

lint:
    cargo clippy --all-targets --locked -- -D warnings

fmt:
    cargo fmt

demo:
    cargo run --release -- demo

bench:
    cargo bench

# Rewrites the DaemonSets' npd-ext/config-hash after an edit of the ConfigMap (so pods roll).
config-hash:
    #!/usr/bin/env sh
    set -eu
    h=$(sha256sum manifests/npd-ext-config.yaml | cut -c1-16)
    sed -i "s/npd-ext\/config-hash: \"[0-9a-f]*\"/npd-ext\/config-hash: \"$h\"/" manifests/npd-ext-daemonset.yaml manifests/npd-ext-separate.yaml
    echo "config hash $h"

# Renders and checks the manifests as .ci/run does.
manifests:
    kubectl kustomize manifests/ > /dev/null
    cargo run --quiet -- validate-config manifests/npd-ext-config.yaml
