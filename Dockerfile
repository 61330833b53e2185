# syntax=docker/dockerfile:1.7
# The afk-operator image: the operator binary, the pinned `claude` CLI (for the sidecar's voice
# gateway and breakglass agent), an ssh client (VM power verbs) and CA certificates, running as
# a non-root user with one entrypoint. Build: `docker build -t afk-operator .`

ARG RUST_VERSION=1.95
ARG NODE_VERSION=22
ARG CLAUDE_CODE_VERSION=2.1.330

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# BuildKit cache mounts keep the registry and the dependency build between image builds.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin afk-operator \
 && install -m 0755 target/release/afk-operator /afk-operator

FROM node:${NODE_VERSION}-bookworm-slim
ARG CLAUDE_CODE_VERSION
# Debian stable's security updates are what we want here, so packages are not pinned.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates openssh-client tini \
 && rm -rf /var/lib/apt/lists/* \
 && npm install -g "@anthropic-ai/claude-code@${CLAUDE_CODE_VERSION}" \
 && npm cache clean --force \
 && useradd --uid 65532 --user-group --create-home --home-dir /home/afk --shell /usr/sbin/nologin afk
COPY --from=build /afk-operator /usr/local/bin/afk-operator
COPY agents /etc/afk/agents
ENV AFK_AGENTS_DIR=/etc/afk/agents \
    AFK_STATE_DIR=/var/lib/afk \
    HOME=/home/afk \
    DISABLE_AUTOUPDATER=1 \
    DISABLE_TELEMETRY=1
USER 65532:65532
EXPOSE 8080
# tini as PID 1 reaps what a killed CLI's process group leaves re-parented to it.
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/afk-operator"]
CMD ["run"]
