# Multi-stage build: compile in the Rust image, run in a small Debian with a
# non-root user. The one binary serves every role (up, serve, work, ...).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked --bin rebound \
    && strip target/release/rebound

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin rebound
COPY --from=build /src/target/release/rebound /usr/local/bin/rebound
COPY config/rebound.toml /etc/rebound/rebound.toml
USER 10001
ENTRYPOINT ["rebound", "--config", "/etc/rebound/rebound.toml", "--log-format", "json"]
CMD ["up"]
