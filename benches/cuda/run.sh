#!/usr/bin/env bash
# The CUDA check (issue 12), run OFFLINE on the lent GPU machine from the repo root:
#   bash benches/cuda/run.sh            (device `run` tool, carry ["gpu-carry"], timeout 420)
# gpu-carry/ is built on the CPU machine by benches/cuda/prepare.sh (there is no Rust here).
# Every step runs even when an earlier one fails; each one's status, time and output go to
# $OUT/log.txt, the figures to $OUT/*.json and the verdicts to $OUT/summary.md (7 files).
# Knobs: LOWBIT_CUDA_W4_VARIANT=r2u2 (the INT4 GEMV the backend uses; the bench times all),
# LOWBIT_CUDA_TENSOR_CORES=1 (prefill GEMM on mma.sync), LOWBIT_CUDA_BUDGET_S (default 350).
# Budget: about 2-3 minutes on an H200; each step has a timeout and the whole script stops
# starting steps after $BUDGET seconds.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/lowbit-cuda-out}
mkdir -p "$OUT"
LOG=$OUT/log.txt
STEPS=$OUT/steps.tsv
C=gpu-carry
: >"$LOG"
: >"$STEPS"
export PYTHONUNBUFFERED=1 RUST_BACKTRACE=1

# NVRTC and the driver: the toolkit's lib64 first (its NVRTC matches the driver), then torch's
# pip-installed NVRTC, then the driver folder.
libdirs=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
  $(python3 -c 'import glob, os, nvidia; print(" ".join(sorted({os.path.dirname(p) for b in nvidia.__path__ for p in glob.glob(b + "/**/libnvrtc.so*", recursive=True)})))' 2>/dev/null) \
  /usr/local/nvidia/lib64 /usr/lib/x86_64-linux-gnu; do
  [ -d "$d" ] && libdirs="$libdirs:$d"
done
# Nothing above holds NVRTC: look for it anywhere under /usr and /opt.
have_nvrtc=0
IFS=: read -ra dirs <<<"${libdirs#:}"
for d in "${dirs[@]}"; do compgen -G "$d/libnvrtc.so*" >/dev/null && have_nvrtc=1; done
if [ "$have_nvrtc" = 0 ]; then
  for f in $(find /usr /opt -name 'libnvrtc.so*' 2>/dev/null | head -5); do libdirs="$libdirs:$(dirname "$f")"; done
fi
export LD_LIBRARY_PATH="${libdirs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

BUDGET=${LOWBIT_CUDA_BUDGET_S:-350} # the whole script, so one run fits the device lease

step() { # step NAME TIMEOUT_S COMMAND...: the timeout is cut to what is left of $BUDGET
  local name=$1 limit=$2
  shift 2
  local left=$((BUDGET - SECONDS))
  [ "$limit" -gt "$left" ] && limit=$left
  if [ "$limit" -lt 5 ]; then
    printf '%s\t%s\t%s\n' "$name" "skipped (time budget)" 0 >>"$STEPS"
    echo "===== $name: SKIPPED, the time budget is spent" | tee -a "$LOG"
    return
  fi
  echo "===== $name: $* (timeout ${limit}s)" | tee -a "$LOG"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >>"$STEPS"
  echo "===== $name: exit $rc after $((SECONDS - t0)) s" | tee -a "$LOG"
}

step env 20 bash -c 'nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv; nvcc --version | tail -2; echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"; ls -la /usr/local/cuda/lib64/libnvrtc* 2>&1 | head -5; ldconfig -p | grep -E "libcuda.so|libnvrtc" | head; python3 -c "import torch; print(\"torch\", torch.__version__, torch.version.cuda)"; ls -la gpu-carry gpu-carry/bin'
step compile 60 "$C/bin/cuda_check" compile
step kernel-tests 120 env LOWBIT_REQUIRE_CUDA=1 "$C/bin/kernels" --include-ignored --test-threads=1
step w4-gemv-bench 120 "$C/bin/cuda_check" bench "$OUT/bench.json"
step torch-fp16-linear 60 python3 benches/cuda/torch_linear.py "$OUT/torch.json"
step smollm2-w4 120 "$C/bin/cuda_check" model "$C/model" "$C/reference.json" "$OUT/model.json"
# Informational: the same with prefill on the tensor cores (f16 operands; not the default).
step smollm2-w4-mma 90 env LOWBIT_CUDA_TENSOR_CORES=1 "$C/bin/cuda_check" model "$C/model" "$C/reference.json" "$OUT/model_mma.json"

python3 benches/cuda/summary.py "$OUT" | tee "$OUT/summary.md"
