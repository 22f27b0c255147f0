# syntax=docker/dockerfile:1
# One image for both containers (detector and gpu-monitor): the binary plus
# its applet symlinks on a glibc runtime with no shell (a static musl binary
# could not load the host's libnvidia-ml.so.1).
#
# Build arguments:
#   BUILD_IMAGE    the Rust image the binary is compiled in (BINARY=build)
#   RUNTIME_IMAGE  the runtime base: distroless cc, or a stand-in made by
#                  scripts/standin-base.sh where it cannot be pulled
#   BINARY         build: compile inside BUILD_IMAGE (the default);
#                  host: take dist/linux-<arch>/, laid out by scripts/dist.sh
#                  from a binary built outside, e.g. cross-compiled for each
#                  platform of `just docker-buildx-all`
#   VERSION, REVISION   the OCI labels

ARG RUST_VERSION=1.95
ARG BUILD_IMAGE=docker.io/library/rust:${RUST_VERSION}-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot
ARG BINARY=build

FROM ${BUILD_IMAGE} AS build
WORKDIR /src
# Dependencies first, so source edits reuse their layer.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
RUN mkdir -p src benches && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && for b in skeleton gpu filelog events stats idle; do echo 'fn main() {}' > "benches/$b.rs"; done \
    && cargo build --release --locked \
    && rm -rf src benches
COPY src src
COPY data data
COPY benches benches
COPY scripts/dist.sh scripts/dist.sh
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && scripts/dist.sh target/release/npd-ext /out

FROM scratch AS binary-build
COPY --from=build /out/ /

FROM scratch AS binary-host
ARG TARGETARCH
COPY dist/linux-${TARGETARCH}/ /

FROM binary-${BINARY} AS binary

FROM ${RUNTIME_IMAGE}
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.source="https://github.com/npd-ext/npd-ext" \
      org.opencontainers.image.title="npd-ext" \
      org.opencontainers.image.description="Node problem detector for Kubernetes GPU fleets, with an NVIDIA GPU external monitor" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY --from=binary /usr/bin/ /usr/bin/
COPY --from=binary /home/kubernetes/ /home/kubernetes/
# One malloc arena: the few threads of either container allocate little and
# seldom at once, and every extra arena keeps pages of its own (idle detector
# RssAnon 2.31 -> 2.05 MiB; docs/performance.md, "Memory (issue 17)").
ENV MALLOC_ARENA_MAX=1
USER 1000:1000
ENTRYPOINT ["/usr/bin/npd-ext"]
CMD ["--help"]
