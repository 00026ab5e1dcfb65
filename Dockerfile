# syntax=docker/dockerfile:1
#
# orderflow's services in one image: `write-side` (any of the four write services, picked by
# ORDERFLOW_SERVICE), `relay`, `projections` (the workers), `read-api`, `console` (the operations
# console, package web-console) and `orderflow` (the CLI: serve, migrate, bench, ...), each in
# /usr/local/bin.
# compose.yaml picks one with `command:`.
#
#   docker build -t orderflow:local .
#
# Not built where the tests run (no Docker engine there): see README, "Distributed deployment".

# --- build --------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder

# librdkafka is compiled from source by rdkafka-sys: its default build runs librdkafka's own
# configure + make (C compiler, make, python3); cmake is there for rdkafka's `cmake-build`
# feature should it be turned on. zlib for the `libz` feature. SQLite is bundled and protobuf is
# compiled by protox, so neither needs a system package.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake pkg-config zlib1g-dev python3 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /build
COPY . .

# The registry and target directory are cache mounts (kept between builds, not in the image),
# so the binaries are copied out of target/ within the same step. `--workspace`: at the root of
# a workspace with a root package, cargo otherwise builds only that package's binaries.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/build/target \
    cargo build --release --locked --workspace --bins \
    && mkdir -p /out \
    && cp target/release/orderflow target/release/write-side target/release/relay \
          target/release/projections target/release/read-api target/release/console /out/

# --- runtime ------------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime

# ca-certificates for TLS endpoints given in URLs; curl for the health checks (GET /ready).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 orderflow \
    && useradd --system --uid 10001 --gid orderflow --home-dir /var/lib/orderflow --create-home \
       --shell /usr/sbin/nologin orderflow

COPY --from=builder /out/orderflow /out/write-side /out/relay /out/projections /out/read-api \
     /out/console /usr/local/bin/

USER orderflow:orderflow
WORKDIR /var/lib/orderflow

# The ports of compose.yaml: write-side as orders 8081, customers 8083, inventory 8084, payments
# 8085; read-api 8082; console 8080; `projections run`'s rebuild endpoint 8086 (set
# ORDERFLOW_WRITE_LISTEN / ORDERFLOW_READ_LISTEN / ORDERFLOW_CONSOLE_LISTEN /
# ORDERFLOW_PROJECTIONS_LISTEN to 0.0.0.0:<port>).
EXPOSE 8080 8081 8082 8083 8084 8085 8086
CMD ["orderflow", "--help"]
