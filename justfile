# Builds, images and checks, mirroring the upstream Makefile's targets.
# Get just with `cargo install just` or `pip install rust-just`.

REGISTRY := env_var_or_default("REGISTRY", "ghcr.io/npd-ext")
TAG := env_var_or_default("TAG", "v" + `sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1`)
NPD_IMAGE := REGISTRY + "/node-problem-detector"
GPU_IMAGE := REGISTRY + "/gpu-monitor"
PLATFORMS := env_var_or_default("PLATFORMS", "linux/amd64,linux/arm64")
REVISION := `git rev-parse --short HEAD 2>/dev/null || echo unknown`

default:
    @just --list

# The release binary (one binary: every applet).
build-all-binaries:
    cargo build --release --locked

# The image, tagged as the detector image.
docker-build:
    docker build --build-arg VERSION={{TAG}} --build-arg REVISION={{REVISION}} -t {{NPD_IMAGE}}:{{TAG}} .

# The same image, tagged as the GPU monitor image.
docker-build-gpu: docker-build
    docker tag {{NPD_IMAGE}}:{{TAG}} {{GPU_IMAGE}}:{{TAG}}

docker-build-all: docker-build docker-build-gpu

# Both tags for amd64 and arm64, pushed (buildx cannot load a multi-platform image locally).
docker-buildx-all:
    docker buildx build --platform {{PLATFORMS}} --build-arg VERSION={{TAG}} --build-arg REVISION={{REVISION}} \
        -t {{NPD_IMAGE}}:{{TAG}} -t {{GPU_IMAGE}}:{{TAG}} --push .

docker-push:
    docker push {{NPD_IMAGE}}:{{TAG}}

docker-push-all: docker-push
    docker push {{GPU_IMAGE}}:{{TAG}}

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
