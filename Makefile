# oauthrelay — see README.md. `make demo` and `make test` are all a new
# machine needs (with Go installed; `.ci/run` also installs the Debian
# packages the end-to-end tests use: swaks, curl, python3, dovecot, chromium).
GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
BIN     := bin/oauthrelay
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2
# The .deb/.rpm packager, installed into bin/ like staticcheck (a tool, not a
# dependency of the module). v2.45.2: the newest that builds here.
NFPM    ?= github.com/goreleaser/nfpm/v2/cmd/nfpm@v2.45.2
# The packaged config.yaml points editors at the installed schema.
PKG_SCHEMA_LINE := \# yaml-language-server: $$schema=/usr/share/oauthrelay/config.schema.json
# A deb/rpm version must start with a digit and hold no '-': v1.2.3 gives
# 1.2.3, a bare commit 0.0~gitabc1234, v1.2.3-4-gabc 1.2.3~4~gabc.
PKG_VERSION ?= $(shell echo '$(VERSION)' | sed -E 's/^v([0-9]+\.)/\1/; /^[0-9]+\./!s/^/0.0~git/; s/-/~/g')

.PHONY: build test race demo bench lint dist pkgtest clean fuzz fuzz-ci fuzz-corpus load soak bench-cluster

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/oauthrelay

# Every test, each once: the packages with concurrency (proxy, internal, cmd)
# under the race detector, the others and the two tests the race detector
# would make pointless (the quick load bench, Graph's 30 MB message) without
# it. (Running ./... again without -race doubled the slowest tests, the
# process-level ones in cmd/oauthrelay, for no test the race run skips.)
RACE_SKIPPED := TestLoadBenchQuick|TestGraphSizes
test: lint
	$(GO) test -count=1 -timeout 15m ./config/... ./dist/...
	$(GO) test -count=1 -timeout 15m -run '^($(RACE_SKIPPED))$$' ./cmd/oauthrelay ./proxy/smtp
	$(MAKE) fuzz-ci
	$(GO) test -count=1 -race -timeout 15m ./proxy/... ./internal/... ./cmd/...
	# The Windows service must keep compiling.
	GOOS=windows GOARCH=amd64 $(GO) build -o /dev/null ./cmd/oauthrelay
	$(MAKE) pkgtest

# The relay against the built-in fake Microsoft 365 on loopback: sends a
# message through it and keeps serving until Ctrl-C.
demo: build
	$(BIN) demo

# Figures, not assertions: relay vs direct to the same fake upstream.
bench: build
	$(GO) test -run '^$$' -bench . -benchmem -benchtime 2s ./proxy/... ./internal/smtpclient/
	$(BIN) bench

# Several instances sharing one redis-server (needs redis-server).
bench-cluster: build
	$(BIN) bench -only cluster

# Fuzz targets, as package:Target. `make fuzz` runs each for FUZZTIME
# (default 5 minutes); `make test` runs each for a few seconds
# (fuzz-ci) on top of its committed corpus (testdata/fuzz/), which the
# plain test run replays too. `make fuzz-corpus` copies what a long run
# found interesting into the corpora, to be committed.
FUZZ_TARGETS := ./config:FuzzParse ./proxy:FuzzSMTPSession ./proxy:FuzzPOP3Session ./proxy/imap:FuzzReadCommand \
	./internal/sasl:FuzzParseXOAuth2Response ./internal/sasl:FuzzLoginServer \
	./internal/tokenstore:FuzzDecode ./internal/oauth:FuzzParseErrorBody ./internal/smtpclient:FuzzStuffer \
	./internal/graph:FuzzRewriteHeader ./internal/graph:FuzzSplitMessage
FUZZTIME ?= 5m

fuzz:
	@for t in $(FUZZ_TARGETS); do \
	  pkg=$${t%%:*}; name=$${t#*:}; echo "fuzz $$name ($$pkg) for $(FUZZTIME)"; \
	  $(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	done

# CI's bounded run counts executions rather than seconds: with a duration,
# Go 1.26's fuzz coordinator can fail a target with a bare "context deadline
# exceeded" at the end of the run on a loaded machine, no failing input
# written (golang/go#75804, fixed in Go 1.27). 1,000 executions take 0.1–6 s
# a target here.
fuzz-ci:
	@$(MAKE) --no-print-directory fuzz FUZZTIME=1000x

fuzz-corpus:
	@cache=$$($(GO) env GOCACHE)/fuzz/$$($(GO) list -m); \
	for t in $(FUZZ_TARGETS); do \
	  pkg=$${t%%:*}; name=$${t#*:}; src=$$cache/$${pkg#./}/$$name; \
	  [ -d $$src ] || continue; mkdir -p $$pkg/testdata/fuzz/$$name; cp $$src/* $$pkg/testdata/fuzz/$$name/; \
	done

# 1,000 concurrent SMTP sessions and 5,000 idle IMAP sessions against one
# relay process (figures, and the relay's open files after); soak adds
# SOAKTIME (default 10 minutes) of steady traffic and fails if the relay
# keeps more open files than it started with.
SOAKTIME ?= 10m
load: build
	$(BIN) bench -only load

soak: build
	$(BIN) bench -only load -soak $(SOAKTIME)

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	GOBIN=$(CURDIR)/bin $(GO) install $(STATICCHECK)
	bin/staticcheck ./...
	GOOS=windows bin/staticcheck -tests=false ./cmd/... ./internal/...

# Static binaries, and .deb and .rpm packages for linux/amd64 and arm64
# (dist/nfpm/nfpm.yaml: binary, hardened unit, system user, conffile, state
# directory, man page made from README.md).
dist: bin/nfpm
	@mkdir -p bin/release
	for t in linux/amd64 linux/arm64 windows/amd64 darwin/arm64; do \
	  os=$${t%/*}; arch=$${t#*/}; ext=; [ $$os = windows ] && ext=.exe; \
	  CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build -trimpath -ldflags '$(LDFLAGS)' \
	    -o bin/release/oauthrelay-$(VERSION)-$$os-$$arch$$ext ./cmd/oauthrelay || exit 1; \
	done
	@mkdir -p bin/pkg
	$(GO) run ./dist/manpage -version '$(VERSION)' README.md | gzip -9n > bin/pkg/oauthrelay.1.gz
	sed '1s|.*|$(PKG_SCHEMA_LINE)|' config.example.yaml > bin/pkg/config.yaml
	for arch in amd64 arm64; do \
	  cp bin/release/oauthrelay-$(VERSION)-linux-$$arch bin/pkg/oauthrelay || exit 1; \
	  for p in deb rpm; do \
	    PKG_ARCH=$$arch PKG_VERSION='$(PKG_VERSION)' bin/nfpm package -f dist/nfpm/nfpm.yaml -p $$p -t bin/release/ || exit 1; \
	  done; \
	done

bin/nfpm:
	GOBIN=$(CURDIR)/bin $(GO) install $(NFPM)

# The .deb installed on this machine with dpkg, checked (version, check
# against the fake Microsoft 365, files and owners) and purged, and the .rpm
# read with rpm: only as root on Debian, where it changes the system;
# skipped elsewhere.
pkgtest:
	@if [ "$$(id -u)" != 0 ] || [ ! -e /etc/debian_version ] || ! command -v dpkg >/dev/null; then \
	  echo "pkgtest: skipped: installing the .deb needs root on Debian (dpkg)"; exit 0; fi; \
	set -e; $(MAKE) -s bin/nfpm; arch=$$(dpkg --print-architecture); mkdir -p bin/pkg; \
	CGO_ENABLED=0 GOARCH=$$arch $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/pkg/oauthrelay ./cmd/oauthrelay; \
	$(GO) run ./dist/manpage -version '$(VERSION)' README.md | gzip -9n > bin/pkg/oauthrelay.1.gz; \
	sed '1s|.*|$(PKG_SCHEMA_LINE)|' config.example.yaml > bin/pkg/config.yaml; \
	for p in deb rpm; do \
	  PKG_ARCH=$$arch PKG_VERSION='$(PKG_VERSION)' bin/nfpm package -f dist/nfpm/nfpm.yaml -p $$p -t bin/pkg/oauthrelay.$$p; \
	done; \
	OAUTHRELAY_DEB=$(CURDIR)/bin/pkg/oauthrelay.deb OAUTHRELAY_RPM=$(CURDIR)/bin/pkg/oauthrelay.rpm \
	  $(GO) test -count=1 -run 'TestDeb|TestRPM' -v ./dist/pkgtest

clean:
	rm -rf bin
