# Multi-stage build of the operator image. Hardening and the pinned `claude` CLI arrive with the
# chart hardening work; this image already runs as non-root with one entrypoint.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked && strip target/release/afk-operator

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates openssh-client \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 65532 --user-group --no-create-home --shell /usr/sbin/nologin afk
COPY --from=build /src/target/release/afk-operator /usr/local/bin/afk-operator
COPY agents /etc/afk/agents
USER 65532:65532
ENV AFK_AGENTS_DIR=/etc/afk/agents
ENTRYPOINT ["/usr/local/bin/afk-operator"]
CMD ["run"]
