# The mpr server: `docker build -t mpr .` (see deploy/README.md).
# The base images are arguments: the official ones by default; CI, which reaches no image
# registry, passes local stand-ins made from Debian's packages (scripts/build-base-images).
ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# --- builder: the official Rust image, on the same Debian release as the runtime (same glibc).
FROM ${RUST_IMAGE} AS builder
WORKDIR /src
# Line tables only (Cargo.toml's release profile keeps more debug info, for profiling): panics
# and backtraces keep file:line, and the binary is a fraction of the size and quicker to build.
ENV CARGO_PROFILE_RELEASE_DEBUG=line-tables-only

# Dependency layer: the manifests and empty stand-in targets only, so that a change to the
# sources does not rebuild the dependencies (every workspace member's manifest is needed to
# resolve the workspace).
COPY Cargo.toml Cargo.lock ./
COPY bench/Cargo.toml bench/Cargo.toml
COPY testkit/Cargo.toml testkit/Cargo.toml
RUN mkdir -p src bench/src testkit/src \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && echo 'fn main() {}' > bench/src/main.rs && touch testkit/src/lib.rs \
 && cargo build --release --locked -p mpr \
 && rm -rf src bench/src testkit/src

# The real sources. COPY keeps the files' own (older) mtimes: touch them so that cargo rebuilds
# the crate over the stand-ins.
COPY . .
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked -p mpr --bin mpr \
 && cp target/release/mpr /usr/local/bin/mpr

# --- runtime: Debian slim, for the same glibc as the builder, CA certificates (FCM, APNs,
# rediss://, TLS to MongoDB) and curl for the HEALTHCHECK (the binary has no probe subcommand).
FROM ${RUNTIME_IMAGE}
# Unpinned: bookworm's point releases bring the security fixes of these two packages.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 mpr \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin mpr
COPY --from=builder /usr/local/bin/mpr /usr/local/bin/mpr

# A numeric user, so that Kubernetes' runAsNonRoot can check it.
USER 10001:10001
# WS_PORT (JSON-RPC over WebSocket) and APP_PORT (/health, /ready, /metrics).
EXPOSE 3100 3500
# /health answers while the process serves HTTP; readiness (/ready: Redis and MongoDB answer)
# is left to the orchestrator's readiness probe.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["sh", "-c", "curl -fsS \"http://127.0.0.1:${APP_PORT:-3500}/health\" >/dev/null || exit 1"]
ENTRYPOINT ["/usr/local/bin/mpr"]
