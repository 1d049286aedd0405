# oauthrelay — see README.md. `make demo` and `make test` are all a new
# machine needs (with Go installed; `.ci/run` also installs the Debian
# packages the end-to-end tests use: swaks, curl, python3, dovecot, chromium).
GO      ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
BIN     := bin/oauthrelay
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2

.PHONY: build test race demo bench lint dist clean fuzz fuzz-ci fuzz-corpus

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/oauthrelay

# Every test. The packages with concurrency run under the race detector.
test: lint
	$(GO) test -count=1 -timeout 15m ./...
	$(MAKE) fuzz-ci
	$(GO) test -count=1 -race -timeout 15m ./proxy/... ./internal/... ./cmd/...
	# The Windows service must keep compiling.
	GOOS=windows GOARCH=amd64 $(GO) build -o /dev/null ./cmd/oauthrelay

# The relay against the built-in fake Microsoft 365 on loopback: sends a
# message through it and keeps serving until Ctrl-C.
demo: build
	$(BIN) demo

# Figures, not assertions: relay vs direct to the same fake upstream.
bench: build
	$(GO) test -run '^$$' -bench . -benchmem -benchtime 2s ./proxy/... ./internal/smtpclient/
	$(BIN) bench

# Fuzz targets, as package:Target. `make fuzz` runs each for FUZZTIME
# (default 5 minutes); `make test` runs each for a few seconds
# (fuzz-ci) on top of its committed corpus (testdata/fuzz/), which the
# plain test run replays too. `make fuzz-corpus` copies what a long run
# found interesting into the corpora, to be committed.
FUZZ_TARGETS := ./config:FuzzParse ./proxy:FuzzSMTPSession ./proxy:FuzzPOP3Session ./proxy/imap:FuzzReadCommand \
	./internal/sasl:FuzzParseXOAuth2Response ./internal/sasl:FuzzLoginServer \
	./internal/tokenstore:FuzzDecode ./internal/oauth:FuzzParseErrorBody ./internal/smtpclient:FuzzStuffer
FUZZTIME ?= 5m

fuzz:
	@for t in $(FUZZ_TARGETS); do \
	  pkg=$${t%%:*}; name=$${t#*:}; echo "fuzz $$name ($$pkg) for $(FUZZTIME)"; \
	  $(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	done

fuzz-ci:
	@$(MAKE) --no-print-directory fuzz FUZZTIME=4s

fuzz-corpus:
	@cache=$$($(GO) env GOCACHE)/fuzz/$$($(GO) list -m); \
	for t in $(FUZZ_TARGETS); do \
	  pkg=$${t%%:*}; name=$${t#*:}; src=$$cache/$${pkg#./}/$$name; \
	  [ -d $$src ] || continue; mkdir -p $$pkg/testdata/fuzz/$$name; cp $$src/* $$pkg/testdata/fuzz/$$name/; \
	done

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	GOBIN=$(CURDIR)/bin $(GO) install $(STATICCHECK)
	bin/staticcheck ./...
	GOOS=windows bin/staticcheck -tests=false ./cmd/... ./internal/...

dist:
	@mkdir -p bin/release
	for t in linux/amd64 linux/arm64 windows/amd64 darwin/arm64; do \
	  os=$${t%/*}; arch=$${t#*/}; ext=; [ $$os = windows ] && ext=.exe; \
	  CGO_ENABLED=0 GOOS=$$os GOARCH=$$arch $(GO) build -trimpath -ldflags '$(LDFLAGS)' \
	    -o bin/release/oauthrelay-$(VERSION)-$$os-$$arch$$ext ./cmd/oauthrelay || exit 1; \
	done

clean:
	rm -rf bin
