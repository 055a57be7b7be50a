# nbsecrets — see README.md.
GO      ?= go
PYTHON  ?= /usr/bin/python3
BIN     := bin/nbsecrets
PKGS    := ./...

.PHONY: all build test lint bench bench-fanout demo deps fuzz clean soak

all: build

build:
	$(GO) build -o $(BIN) ./cmd/nbsecrets

# The whole suite, with the race detector. Real-kernel tests need `make deps`.
test:
	$(GO) test -race -count=1 -timeout 30m $(PKGS)

# The long soak (controlplane TestSoak): SOAK_CHANGES changes from four
# concurrent writers through the real service and NATS into three real
# kernels, with injector requests throughout; `make test` runs 200 with
# -race. Without the race detector by default, so thousands of changes take
# minutes; SOAK_FLAGS=-race adds it.
SOAK_CHANGES ?= 8000
SOAK_FLAGS   ?=
soak:
	NBSECRETS_SOAK_CHANGES=$(SOAK_CHANGES) $(GO) test $(SOAK_FLAGS) -count=1 -timeout 90m -run '^TestSoak$$' -v ./controlplane/

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
	@if $(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 -version >/dev/null 2>&1; then \
	  $(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 $(PKGS); \
	else echo "staticcheck could not be installed from the module proxy; skipped"; fi

# Benchmarks against real NATS and real kernels; a table on stdout, JSON in bench.json;
# then the HTTP API's latency (p50/p99 of list and update).
bench: build
	$(GO) run ./cmd/nbsecrets-bench -out bench.json
	$(GO) test -run '^$$' -bench '^BenchmarkAPI$$' -benchtime 300x ./controlplane/web/

# Fan-out: one project secret to FANOUT workspaces' agents (the agent's live
# delivery, in a second process; FANOUT_LIVE=false: a standing consumer per
# agent) through a separate nats-server process of the version in go.mod
# (FANOUT_NODES=3: a three-node cluster). Table on stdout, last line JSON.
NATS_SERVER  := bin/nats-server
FANOUT       ?= 10000
FANOUT_NODES ?= 1
FANOUT_LIVE  ?= true
$(NATS_SERVER): go.mod go.sum
	$(GO) build -o $(NATS_SERVER) github.com/nats-io/nats-server/v2

bench-fanout: $(NATS_SERVER)
	$(GO) run ./cmd/nbsecrets-bench -fanout $(FANOUT) -fanout-nodes $(FANOUT_NODES) -fanout-live=$(FANOUT_LIVE) -nats-server $(NATS_SERVER) -out bench-fanout.json

# The main job on the embedded default: a secret changing live in a real kernel.
demo: build deps
	$(PYTHON) deploy/demo.py --nbsecrets $(BIN)

# Short fuzz runs of every fuzz target (FUZZTIME each).
FUZZTIME ?= 30s
fuzz:
	@for pkg in $$($(GO) list ./...); do \
	  for t in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	    echo "== $$pkg $$t"; $(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) -parallel 2 $$pkg || exit 1; \
	  done; \
	done

# Debian's ipykernel and jupyter_client: installed when missing and root, else named.
deps:
	@if $(PYTHON) -c 'import ipykernel, jupyter_client' 2>/dev/null; then \
	  echo "deps: ipykernel and jupyter_client present"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-ipykernel python3-jupyter-client; \
	else \
	  echo "deps: missing Debian packages; run as root: apt-get install -y python3-ipykernel python3-jupyter-client" >&2; exit 1; \
	fi

clean:
	rm -rf bin bench.json bench-fanout.json
