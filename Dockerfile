# syntax=docker/dockerfile:1
# Three images from one file:
#   runtime (default): person-service, test-service and rpc on a slim base
#   test: the workspace with its toolchain and Python, running scripts/test
#   builder: the compile stage both come from

FROM rust:1.95-bookworm AS builder
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p person-service -p test-service -p rpc-cli

FROM builder AS test
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN cargo install cargo-nextest --locked
RUN scripts/nameko-venv target/nameko-venv
CMD ["scripts/test"]

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /data app \
 && mkdir -p /data && chown app /data
COPY --from=builder /src/target/release/person-service /src/target/release/test-service /src/target/release/rpc /usr/local/bin/
USER app
WORKDIR /data
ENV PERSON_DB=/data/person.db
CMD ["person-service"]
