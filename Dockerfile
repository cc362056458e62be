# idgate container image.
#
#   docker build -t idgate:dev .
#   docker run --rm --read-only -p 8080:8080 -v "$PWD/etc:/etc/idgate:ro" idgate:dev
#
# docs/operations.md has the buildah and kaniko equivalents. tests/runtime-libs.sh (run by
# `make test`) proves that the runtime stage's package list holds every shared library the
# binary loads, and nothing else; keep the list one package per line, as below.
#
# Both stages are Debian 12 (bookworm): the binary links the system's libxmlsec1, libxml2
# and OpenSSL, whose sonames must match between where it is built and where it runs.

# ---------------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder

# samael (SAML) builds against xmlsec and OpenSSL, and generates its bindings with libclang.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libclang-dev \
      libssl-dev \
      libxmlsec1-dev \
      pkg-config \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src

# The dependencies first, against stub sources: this layer is rebuilt only when
# Cargo.toml or Cargo.lock change, not at every source edit.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && echo 'fn main() {}' > benches/proxy.rs \
 && cp benches/proxy.rs benches/scim.rs \
 && cargo build --release --locked \
 && rm -rf src benches

# Then idgate itself. config/ is compiled in (the demo's config). The touch makes the
# sources newer than the stub build whatever times the build context carries.
COPY src ./src
COPY benches ./benches
COPY config ./config
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked \
 && install -D -m 0755 target/release/idgate /out/idgate

# ---------------------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=unknown

LABEL org.opencontainers.image.title="idgate" \
      org.opencontainers.image.description="Identity sidecar: SAML SSO, SCIM and signed identity headers in front of an unmodified app" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim"

# Exactly the libraries idgate links that debian:bookworm-slim lacks (libc6, libgcc-s1,
# libstdc++6, zlib1g and liblzma5 are in the base image). No ca-certificates: outbound
# TLS (Maestrano) is verified against the webpki roots compiled into the binary.
# Then the unprivileged user, 65532 as in distroless images.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      libicu72 \
      libssl3 \
      libxml2 \
      libxmlsec1 \
      libxmlsec1-openssl \
      libxslt1.1 \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb /var/log/apt /var/log/dpkg.log \
 && groupadd --system --gid 65532 idgate \
 && useradd --system --uid 65532 --gid 65532 --no-create-home \
      --home-dir /nonexistent --shell /usr/sbin/nologin idgate \
 && mkdir -p /etc/idgate

COPY --from=builder /out/idgate /usr/local/bin/idgate

# idgate writes nothing to disk (logs go to stdout), so the root filesystem may be
# mounted read-only; mount the config, signing key and certificates under /etc/idgate.
USER 65532:65532
WORKDIR /etc/idgate
# 8080: public listener. 9090: admin (/healthz /readyz /metrics /.well-known/jwks.json);
# set [server].admin_listen = "0.0.0.0:9090" for probes and scrapes from outside the pod.
EXPOSE 8080 9090
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/idgate"]
CMD ["serve", "--config", "/etc/idgate/idgate.toml"]
