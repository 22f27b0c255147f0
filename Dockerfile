# syntax=docker/dockerfile:1
# One image for both containers (detector and gpu-monitor): the binary plus
# its applet symlinks on a glibc runtime with no shell (a static musl binary
# could not load the host's libnvidia-ml.so.1). Build for several platforms
# with `just docker-buildx-all`.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits reuse their layer.
COPY Cargo.toml Cargo.lock build.rs ./
COPY proto proto
RUN mkdir -p src benches && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
    && for b in skeleton gpu filelog; do echo 'fn main() {}' > "benches/$b.rs"; done \
    && cargo build --release --locked \
    && rm -rf src benches
COPY src src
COPY data data
COPY benches benches
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && mkdir -p /out/usr/bin \
    && cp target/release/npd-ext /out/usr/bin/npd-ext \
    && for a in detector gpu-monitor validate-config probe demo; do ln -s npd-ext "/out/usr/bin/$a"; done

FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=dev
ARG REVISION=unknown
LABEL org.opencontainers.image.source="https://github.com/npd-ext/npd-ext" \
      org.opencontainers.image.title="npd-ext" \
      org.opencontainers.image.description="Node problem detector for Kubernetes GPU fleets, with an NVIDIA GPU external monitor" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}"
COPY --from=build /out/usr/bin/ /usr/bin/
USER 1000:1000
ENTRYPOINT ["/usr/bin/npd-ext"]
CMD ["--help"]
