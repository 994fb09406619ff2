# One image with both binaries: the controller app runs `transcoder serve`, and every worker
# machine it creates runs `transcoder-worker run` from the same image.

FROM rust:1-bookworm AS build
WORKDIR /src

# Build the dependencies first, from the manifests alone, so that source changes reuse them.
COPY Cargo.toml Cargo.lock ./
COPY controller/Cargo.toml controller/Cargo.toml
COPY worker/Cargo.toml worker/Cargo.toml
COPY protocol/Cargo.toml protocol/Cargo.toml
COPY machines/Cargo.toml machines/Cargo.toml
RUN for crate in controller worker protocol machines; do \
        mkdir -p $crate/src && echo 'fn main() {}' > $crate/src/main.rs && touch $crate/src/lib.rs; \
    done \
    && cargo build --release --locked --workspace \
    && rm -rf controller/src worker/src protocol/src machines/src

COPY . .
# Make cargo rebuild the workspace crates over the placeholders.
RUN touch controller/src/*.rs worker/src/*.rs protocol/src/*.rs machines/src/*.rs \
    && cargo build --release --locked --bin transcoder --bin transcoder-worker

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /data transcoder \
    && mkdir -p /data && chown transcoder /data
COPY --from=build /src/target/release/transcoder /src/target/release/transcoder-worker /usr/local/bin/
USER transcoder
ENV TRANSCODER_DATA_DIR=/data
EXPOSE 8080
CMD ["transcoder", "serve"]
