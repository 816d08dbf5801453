# lazyconv — build, demo, test, bench.
GO ?= go
STATICCHECK_VERSION ?= v0.8.2
DEMO_DIR ?= $(CURDIR)/.cache/demo
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
# libdeflate (Debian's libdeflate-dev, linked statically) writes eStargz's
# gzip streams when it is installed; without it the build is pure Go and
# writes them with klauspost/compress (see internal/libdeflate). Every go
# command below gets the tag through GOFLAGS.
LIBDEFLATE := $(shell pkg-config --exists libdeflate 2>/dev/null && echo libdeflate)
export GOFLAGS := $(strip $(GOFLAGS) $(if $(LIBDEFLATE),-tags=$(LIBDEFLATE)))

.PHONY: all build daemons demo test lint bench fuzz clean protos

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/lazyconv ./cmd/lazyconv

# The main job on the embedded default store (no containerd needed): build an
# image from GOROOT, import it, convert it to eStargz, verify it, convert again
# to show the variant cache.
demo: build
	DEMO_DIR=$(DEMO_DIR) GO=$(GO) ./hack/demo.sh

# Everything CI runs: formatting, vet, staticcheck, and the tests under -race.
test: lint
	$(GO) test -race -count=1 -timeout 25m ./...

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...

# Fuzzing: each target for FUZZTIME (FUZZTIME=10m for a long run). The
# targets' seed corpora also run as plain tests in make test.
FUZZTIME ?= 30s
FUZZ_TARGETS := FuzzOpenTOC:./converter/stargz FuzzCheckSource:./converter/stargz FuzzIsEStargz:./converter/stargz FuzzConvertLayer:./converter/stargz FuzzRead:./recorder
fuzz:
	@for t in $(FUZZ_TARGETS); do \
	  echo "== $${t%%:*} for $(FUZZTIME)"; \
	  $(GO) test -run '^$$' -timeout 0 -fuzz "^$${t%%:*}$$" -fuzztime $(FUZZTIME) $${t#*:} || exit 1; \
	done

# Go benchmarks, then the side-by-side report against stargz-snapshotter's
# nativeconverter (ratios, medians), cached re-convert and peak RSS.
# The real image (hack/realimage.sh: Debian + python3.11 + Go's sources) is
# built once into .cache/real when debootstrap and root are there.
bench: build daemons
	$(GO) test -run '^$$' -bench . -benchtime 3x -benchmem ./converter/...
	if GO=$(GO) ./hack/realimage.sh $(CURDIR)/.cache/real; then \
	  $(GO) run ./hack/benchreport -bin bin -real $(CURDIR)/.cache/real/layers; \
	else $(GO) run ./hack/benchreport -bin bin; fi

# containerd-lazyconv, lazyconv's ctr, the lazyconvd sidecar, and a stock containerd v2.4 and distribution's
# registry (from the Go module proxy).
daemons:
	$(GO) build -tags "no_btrfs $(LIBDEFLATE)" -ldflags "$(LDFLAGS)" -o bin/containerd-lazyconv ./cmd/containerd-lazyconv
	$(GO) build -tags "no_btrfs $(LIBDEFLATE)" -o bin/ctr ./cmd/ctr
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/lazyconvd ./cmd/lazyconvd
	test -x bin/stock/containerd || GOBIN=$(CURDIR)/bin/stock $(GO) install -tags no_btrfs github.com/containerd/containerd/v2/cmd/containerd@v2.4.2
	test -x bin/registry || GOBIN=$(CURDIR)/bin $(GO) install github.com/distribution/distribution/v3/cmd/registry@v3.1.2

clean:
	rm -rf bin .cache

PROTOC_GEN_GO_VERSION ?= v1.36.12
PROTOC_GEN_GO_GRPC_VERSION ?= v1.6.2

# Regenerates api/ (protoc from Debian's protobuf-compiler, plugins from the Go module proxy).
protos:
	GOBIN=$(CURDIR)/bin $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	GOBIN=$(CURDIR)/bin $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	PATH=$(CURDIR)/bin:$$PATH protoc -I api --go_out=api --go_opt=paths=source_relative \
	  --go-grpc_out=api --go-grpc_opt=paths=source_relative api/lazyconv/v1/converter.proto
