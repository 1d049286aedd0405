# syntax=docker/dockerfile:1
#
# oauthrelay container image: a static binary on distroless, running as
# the unprivileged user 65532 (nonroot). See docs/deploy.md.
#
#   docker build --build-arg VERSION=$(git describe --tags --always) -t oauthrelay .
#   docker run -v $PWD/config.yaml:/etc/oauthrelay/config.yaml:ro \
#              -v oauthrelay-state:/var/lib/oauthrelay oauthrelay
#
# Listening inside a container. The relay's listeners default to 127.0.0.1,
# which is the container's own loopback:
#   - Sidecar (the application shares the relay's network namespace: a
#     Kubernetes pod, or docker compose network_mode: "service:oauthrelay"):
#     keep 127.0.0.1. The application reaches the relay on 127.0.0.1:2525,
#     127.0.0.1:1143 and 127.0.0.1:1110 exactly as on a server, and nothing
#     else can.
#   - Separate containers or published ports (-p): the listeners must bind
#     0.0.0.0 (or the pod/container IP). With tls: none that needs
#     allow_insecure: true, and the application's password then crosses the
#     container network in clear: only on a private network that holds just
#     the application and the relay; otherwise set tls: starttls or implicit
#     with cert_file and key_file. A non-loopback admin listener needs
#     username and password_hash.
# EXPOSE below documents the default ports; it opens nothing by itself.

FROM --platform=$BUILDPLATFORM golang:1.26-bookworm AS build
ARG TARGETOS
ARG TARGETARCH
# Stamped into `oauthrelay version`.
ARG VERSION=dev
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
    go build -trimpath -buildvcs=false -ldflags "-s -w -X main.version=${VERSION}" \
      -o /out/oauthrelay ./cmd/oauthrelay
# The state directory, created here because the final image has no shell:
# owned by nonroot so that a fresh named volume inherits the ownership.
RUN mkdir -p /out/state && chmod 0700 /out/state

# distroless/static: CA certificates (for TLS to Exchange Online and the
# token endpoint), /etc/passwd with nonroot, tzdata; no shell, no package
# manager.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/oauthrelay /oauthrelay
COPY --from=build --chown=65532:65532 /out/state /var/lib/oauthrelay
USER 65532:65532
# Token store and its key (unless OAUTHRELAY_KEY is set): keep it on a
# volume, or every restart of an authorization_code / device_code account
# needs a new sign-in.
VOLUME ["/var/lib/oauthrelay"]
# SMTP, IMAP, POP3, admin HTTP (/healthz, /readyz, /metrics).
EXPOSE 2525 1143 1110 8025
ENTRYPOINT ["/oauthrelay"]
CMD ["serve", "-config", "/etc/oauthrelay/config.yaml"]
