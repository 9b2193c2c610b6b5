# syntax=docker/dockerfile:1
#
# devmetrics container image.
#
#   docker build -t devmetrics .
#   docker run -p 10477:10477 \
#     -v devmetrics-data:/var/lib/devmetrics \
#     -v "$PWD/config.yaml:/etc/devmetrics/config.yaml:ro" devmetrics
#
# Multi-arch without emulation: the builder always runs on the machine's own platform
# ($BUILDPLATFORM) and cross-compiles for $TARGETPLATFORM (linux/amd64, linux/arm64) with
# Debian's cross gcc (ring and the bundled SQLite are C). The runtime stage has no RUN step,
# so `docker buildx build --platform linux/amd64,linux/arm64 .` needs no QEMU.
#
# Runtime image: gcr.io/distroless/cc-debian12:nonroot. The binary links glibc, libgcc_s and
# libm only (TLS is rustls, SQLite is compiled in), exactly what distroless/cc ships, together
# with CA certificates and tzdata; there is no shell or package manager to patch or exploit.
# The builder is Debian 12 too, so the glibc the binary was linked against is the one it runs
# on. debian:bookworm-slim would add a shell, apt and ~70 MB for nothing used at run time.
# Its `nonroot` user is UID/GID 65532, given numerically below so that Kubernetes'
# runAsNonRoot can verify it.

ARG RUST_IMAGE=rust:1-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM --platform=$BUILDPLATFORM ${RUST_IMAGE} AS builder
ARG TARGETARCH
ARG BUILDARCH
# Shown by `devmetrics version`, /healthz and devmetrics_build_info (option_env! at compile time).
ARG DEVMETRICS_REVISION=unknown
ENV CARGO_TERM_COLOR=never \
    CARGO_NET_RETRY=5 \
    CARGO_INCREMENTAL=0
WORKDIR /src
SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# The Rust target and, when it differs from the builder's, Debian's cross toolchain for it.
# The settings are written to /cross.env, read by every later RUN. The cross packages are
# bookworm's own (not pinned: the base image's snapshot decides).
# hadolint ignore=DL3008,SC2086
RUN set -eu; \
    case "${TARGETARCH}" in \
      amd64) triple=x86_64-unknown-linux-gnu; gnu=x86_64-linux-gnu; pkgs="gcc-x86-64-linux-gnu libc6-dev-amd64-cross" ;; \
      arm64) triple=aarch64-unknown-linux-gnu; gnu=aarch64-linux-gnu; pkgs="gcc-aarch64-linux-gnu libc6-dev-arm64-cross" ;; \
      *) echo "unsupported TARGETARCH ${TARGETARCH}" >&2; exit 1 ;; \
    esac; \
    echo "export TARGET=${triple}" > /cross.env; \
    if [ "${TARGETARCH}" != "${BUILDARCH}" ]; then \
      apt-get update; \
      apt-get install -y --no-install-recommends ${pkgs}; \
      rm -rf /var/lib/apt/lists/*; \
      upper=$(echo "${triple}" | tr 'a-z-' 'A-Z_'); \
      lower=$(echo "${triple}" | tr '-' '_'); \
      { echo "export CARGO_TARGET_${upper}_LINKER=${gnu}-gcc"; \
        echo "export CC_${lower}=${gnu}-gcc"; \
        echo "export AR_${lower}=${gnu}-ar"; } >> /cross.env; \
    fi; \
    rustup target add "${triple}"; \
    cat /cross.env

# Dependencies first, in their own layer: rebuilt only when Cargo.toml or Cargo.lock change.
# benches/ is copied because Cargo.toml names its files (cargo build does not compile them).
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
RUN set -eu; . /cross.env; \
    mkdir -p src; echo 'fn main() {}' > src/main.rs; : > src/lib.rs; \
    cargo build --release --locked --target "${TARGET}"; \
    rm -rf src "target/${TARGET}/release/.fingerprint/devmetrics-"* \
      "target/${TARGET}/release/deps/devmetrics-"* "target/${TARGET}/release/deps/libdevmetrics-"*

# The image's tree is assembled under /out:
# - the binary, and a link to it under each replaced tool's name: started under that name,
#   devmetrics reads the tool's own flags, environment and port (README, "Switching from a
#   replaced tool"), so a deployment of the old tool keeps its command and changes the image;
# - a configuration that starts with no source (only devmetrics' own metrics), to be replaced
#   by a mounted one, with storage.path in the volume;
# - the data directory.
COPY src ./src
RUN set -eu; . /cross.env; \
    DEVMETRICS_REVISION="${DEVMETRICS_REVISION}" cargo build --release --locked --target "${TARGET}"; \
    mkdir -p /out/usr/local/bin /out/etc/devmetrics /out/var/lib/devmetrics/data; \
    cp "target/${TARGET}/release/devmetrics" /out/usr/local/bin/devmetrics; \
    for tool in spacelift-promex github-stats-exporter github-telemetry dora-exporter copilot-metrics-exporter; do \
      ln -s devmetrics "/out/usr/local/bin/${tool}"; \
    done; \
    printf '%s\n' \
      '# Replace this file: mount your configuration at /etc/devmetrics/config.yaml.' \
      '# Every key and its default: devmetrics config example' \
      'log:' \
      '  format: json' \
      'storage:' \
      '  path: /var/lib/devmetrics/devmetrics.db' \
      > /out/etc/devmetrics/config.yaml

FROM ${RUNTIME_IMAGE}
ARG DEVMETRICS_REVISION=unknown
LABEL org.opencontainers.image.title="devmetrics" \
      org.opencontainers.image.description="Prometheus/OpenMetrics exporter for GitHub activity, CI webhooks, DORA, Copilot and Spacelift" \
      org.opencontainers.image.revision="${DEVMETRICS_REVISION}"

COPY --from=builder /out/usr/local/bin/ /usr/local/bin/
COPY --from=builder /out/etc/devmetrics/ /etc/devmetrics/
# The one writable directory: the SQLite file (metric state, queue, idempotency keys). Owned by
# the runtime user so a fresh named volume is writable too.
COPY --from=builder --chown=65532:65532 /out/var/lib/devmetrics/ /var/lib/devmetrics/

USER 65532:65532
# Relative paths (the default storage.path ./data/devmetrics.db when a configuration sets
# none, the personas' defaults) land in the volume.
WORKDIR /var/lib/devmetrics
VOLUME ["/var/lib/devmetrics"]

# /metrics, /healthz, /livez, /readyz and, unless webhooks.listen_address moves them, the
# webhook receivers.
EXPOSE 10477

# There is no shell or curl in this image, so the probe is the binary itself: it reads the
# same configuration (and DEVMETRICS_* environment) for the listen address and exits 0 when
# /readyz answers. Kubernetes ignores HEALTHCHECK and uses the chart's HTTP probes instead.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["/usr/local/bin/devmetrics", "healthcheck", "--config.file", "/etc/devmetrics/config.yaml"]

ENTRYPOINT ["/usr/local/bin/devmetrics"]
CMD ["serve", "--config.file", "/etc/devmetrics/config.yaml"]
