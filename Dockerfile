# One image with both binaries. The controller app runs `transcoder serve`; every worker machine
# it creates runs `transcoder-worker run` from this same image (the controller passes its own
# FLY_IMAGE_REF). scripts/check-docker.sh runs this file's build steps and entry commands without
# Docker; keep the build stage's RUN lines free of absolute paths so that it can.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src

# Dependencies first, built from the manifests and empty crate targets, so that a source change
# reuses this layer. Both cargo commands are identical, so features resolve the same way and the
# second build compiles only the workspace crates.
COPY Cargo.toml Cargo.lock ./
COPY controller/Cargo.toml controller/
COPY worker/Cargo.toml worker/
COPY protocol/Cargo.toml protocol/
COPY machines/Cargo.toml machines/
COPY scripts/stub-crate-targets.sh scripts/
RUN sh scripts/stub-crate-targets.sh controller worker protocol machines \
    && cargo build --release --locked --bin transcoder --bin transcoder-worker \
    && rm -rf controller/src worker/src protocol/src machines/src

COPY . .
# COPY keeps the sources' modification times, which are older than the placeholder build, so
# touch them or cargo would keep the empty crates.
RUN find controller worker protocol machines -name '*.rs' -exec touch {} + \
    && cargo build --release --locked --bin transcoder --bin transcoder-worker

FROM debian:bookworm-slim

# ca-certificates for TLS to the Machines API and the object store; unpinned so that
# certificate updates arrive with each rebuild.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 transcoder \
    && useradd --system --uid 10001 --gid transcoder --home-dir /data \
        --shell /usr/sbin/nologin transcoder \
    && mkdir -p /data \
    && chown transcoder:transcoder /data

COPY --from=build /src/target/release/transcoder /src/target/release/transcoder-worker /usr/local/bin/
COPY scripts/docker-entrypoint.sh /usr/local/bin/transcoder-entrypoint

ENV TRANSCODER_DATA_DIR=/data \
    TRANSCODER_LISTEN=0.0.0.0:8080
EXPOSE 8080

# The entrypoint starts as root only to hand the data volume to the `transcoder` user (Fly
# mounts volumes owned by root), then runs the command as that user.
ENTRYPOINT ["transcoder-entrypoint"]
CMD ["transcoder", "serve"]
