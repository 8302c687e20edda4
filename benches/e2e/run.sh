#!/usr/bin/env bash
# End-to-end lowbit vs llama.cpp on SmolLM2-135M-Instruct: same run, same machine, same threads,
# alternating runs. Prefill tok/s of a 512-token prompt (pp512) and decode tok/s of 128 tokens
# (tg128, batch 1), the whole-file size, and decode's fraction of the bandwidth roofline (bytes read
# per token x tok/s over the triad bandwidth measured in the same run). Prints one markdown table.
#
#   benches/e2e/run.sh
#
# It builds what it needs, once, outside the repository: llama.cpp's llama-quantize and llama-bench
# from the llama-cpp-python sdist on PyPI (its vendored llama.cpp, cmake; ~10 minutes on 2 cores;
# ../shared/TOOLCHAIN.md), llama.cpp's Q4_0 / Q4_K_M / Q8_0 / F16 files, lowbit's RTN INT4 g128 and
# INT8 per-channel directories (`lowbit quantize`, default embedding/head), and bench_e2e.
#
# Environment: THREADS (2), REPS (5 alternating rounds; the median is reported), E2E_DIR (cache,
# ~/.cache/lowbit-e2e), LLAMA_CPP_PYTHON_VERSION (0.3.36), LLAMA_CMAKE_FLAGS (e.g.
# "-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=OFF" with LOWBIT_KERNELS=avx2 for the AVX2 row;
# each flag set gets its own build), LLAMA_BIN (an existing build/bin instead), MAX_LOAD (0.7: the
# 1-minute load average before the run above which the machine is not quiet; afterwards the
# benchmark's own THREADS are allowed on top), FORCE (1: measure anyway and flag
# the rows instead of refusing).
set -euo pipefail
cd "$(dirname "$0")/../.."
export THREADS=${THREADS:-2}
REPS=${REPS:-5}
E2E_DIR=${E2E_DIR:-$HOME/.cache/lowbit-e2e}
LLAMA_CPP_PYTHON_VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
LLAMA_CMAKE_FLAGS=${LLAMA_CMAKE_FLAGS:-}
MAX_LOAD=${MAX_LOAD:-0.7}
FORCE=${FORCE:-0}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
mkdir -p "$E2E_DIR"

make venv develop >&2
PY=$PWD/.venv/bin/python
LOWBIT=$PWD/.venv/bin/lowbit

LLAMA_BIN=$(E2E_DIR="$E2E_DIR" PY="$PY" benches/llama-cpp.sh llama-quantize llama-bench)

SRC="$("$PY" -c "import lowbit; print(lowbit.smollm2_gguf())")"
for t in Q4_0 Q4_K_M Q8_0 F16; do
  [ -s "$E2E_DIR/smollm2-$t.gguf" ] || "$LLAMA_BIN/llama-quantize" --allow-requantize "$SRC" \
    "$E2E_DIR/smollm2-$t.gguf" "$t" "$THREADS" >"$E2E_DIR/quantize-$t.log" 2>&1
done
# lowbit's directories, as a user makes them (RTN: seconds); rebuilt when the tree changes.
rev=$(git rev-parse --short HEAD)$(git diff --quiet || echo -dirty)
for spec in "int4g128:--bits 4 --group-size 128" "int8:--bits 8 --group-size channel --sym"; do
  name=${spec%%:*}; dir="$E2E_DIR/lowbit-$name-$rev"
  # shellcheck disable=SC2086
  [ -d "$dir" ] || "$LOWBIT" quantize smollm2 -o "$dir" --method rtn ${spec#*:} -q >&2
done

cargo build --release -q -p lowbit-model --example bench_e2e
cargo build --release -q -p lowbit-cpu --example bandwidth
BENCH="$CARGO_TARGET_DIR/release/examples/bench_e2e"

# The builds above raise the load: give it up to two minutes to settle.
for _ in $(seq 12); do
  load_before=$(cut -d' ' -f1 /proc/loadavg)
  quiet=$("$PY" -c "print(int($load_before <= $MAX_LOAD))")
  [ "$quiet" = 1 ] && break
  sleep 10
done
if [ "$quiet" = 0 ] && [ "$FORCE" != 1 ]; then
  echo "the machine is not quiet (1-minute load $load_before > $MAX_LOAD): not comparing. FORCE=1 measures and flags the rows." >&2
  exit 3
fi
bw=$(RAYON_NUM_THREADS=$THREADS "$CARGO_TARGET_DIR/release/examples/bandwidth" "$THREADS" | sed 's/.*: \([0-9.]*\) GB\/s/\1/')

results="$E2E_DIR/results-$rev.jsonl"
: >"$results"
for round in $(seq "$REPS"); do
  for pair in "int4g128:Q4_0" "int4g128:Q4_K_M" "int8:Q8_0" "f16:F16"; do
    scheme=${pair%%:*}; type=${pair##*:}
    if [ "$scheme" = f16 ]; then
      args=(--model "$SRC" --scheme f16)
    else
      args=(--model "$E2E_DIR/lowbit-$scheme-$rev" --scheme stored)
    fi
    # Each Q4 type gets its own lowbit run too, so every pair alternates.
    RAYON_NUM_THREADS=$THREADS "$BENCH" "${args[@]}" --reps 1 \
      | sed "s/^{/{\"side\":\"lowbit\",\"pair\":\"$type\",\"round\":$round,/" >>"$results"
    "$LLAMA_BIN/llama-bench" -m "$E2E_DIR/smollm2-$type.gguf" -t "$THREADS" -p 512 -n 128 -r 1 -o jsonl 2>/dev/null \
      | sed "s/^{/{\"side\":\"llama.cpp\",\"pair\":\"$type\",\"round\":$round,/" >>"$results"
  done
done
load_after=$(cut -d' ' -f1 /proc/loadavg)

"$PY" - "$results" "$E2E_DIR" "$rev" "$bw" "$load_before" "$load_after" "$MAX_LOAD" <<'PY'
import json, os, statistics, subprocess, sys
path, e2e, rev, bw, before, after, max_load = sys.argv[1:]
bw, before, after, max_load = float(bw), float(before), float(after), float(max_load)
threads = int(os.environ.get("THREADS", "2"))
# The benchmark itself keeps `threads` cores busy, so afterwards the load may reach that much.
quiet = before <= max_load and after <= threads + max_load
rows = [json.loads(l) for l in open(path) if l.strip()]
med = lambda xs: statistics.median(xs)
mib = lambda n: n / 2**20
def dir_bytes(d):
    return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
cpu = sorted(set(subprocess.run("grep -o -w -E 'avx512[a-z_0-9]*|avx2|fma|avx_vnni' /proc/cpuinfo | sort -u",
                                shell=True, capture_output=True, text=True).stdout.split()))
model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
print(f"CPU: {model}; flags: {' '.join(cpu)}; LOWBIT_KERNELS={os.environ.get('LOWBIT_KERNELS', 'auto')} LOWBIT_VNNI={os.environ.get('LOWBIT_VNNI', 'auto')} LOWBIT_ACTIVATIONS={os.environ.get('LOWBIT_ACTIVATIONS', 'auto')}; "
      f"triad bandwidth {bw:.1f} GB/s; load {before} before, {after} after"
      + ("" if quiet else f"  **NOT QUIET: figures flagged**"))
print()
print("| lowbit | llama.cpp | file MiB (lowbit / llama.cpp) | prefill tok/s (lowbit / llama.cpp) | prefill ratio "
      "| decode tok/s (lowbit / llama.cpp) | decode ratio | roofline (lowbit / llama.cpp) |")
print("|---|---|---|---|---|---|---|---|")
names = {"Q4_0": ("INT4 g128", "int4g128"), "Q4_K_M": ("INT4 g128", "int4g128"), "Q8_0": ("INT8 per-channel", "int8"),
         "F16": ("f16 (in memory)", None)}
flag = "" if quiet else " (busy)"
for pair, (label, scheme) in names.items():
    lb = [r for r in rows if r["side"] == "lowbit" and r["pair"] == pair]
    ll = [r for r in rows if r["side"] == "llama.cpp" and r["pair"] == pair]
    if not lb or not ll:
        print(f"| {label} | {pair} | missing runs | | | | | |")
        continue
    lp, ld = med([r["prefill_tok_s"] for r in lb]), med([r["decode_tok_s"] for r in lb])
    pp = med([r["avg_ts"] for r in ll if r["n_prompt"] > 0])
    tg = med([r["avg_ts"] for r in ll if r["n_gen"] > 0])
    llama_file = os.path.getsize(os.path.join(e2e, f"smollm2-{pair}.gguf"))
    lowbit_file = dir_bytes(os.path.join(e2e, f"lowbit-{scheme}-{rev}")) if scheme else None
    # Bytes a decode step reads: every weight once (the tied embedding is read whole as the head).
    lb_read = lb[0]["weight_mb"] * 1e6
    roof_lb, roof_ll = ld * lb_read / (bw * 1e9), tg * llama_file / (bw * 1e9)
    size = f"{mib(lowbit_file):.1f} / {mib(llama_file):.1f}" if lowbit_file else f"({mib(lb_read):.1f}) / {mib(llama_file):.1f}"
    print(f"| {label} | {pair} | {size} | {lp:.0f} / {pp:.0f} | {lp / pp:.2f}x{flag} | {ld:.0f} / {tg:.0f} "
          f"| {ld / tg:.2f}x{flag} | {roof_lb:.0%} / {roof_ll:.0%} |")
PY
