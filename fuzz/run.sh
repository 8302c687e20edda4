#!/usr/bin/env bash
# Runs one fuzz target the way docs/fuzzing.md records it, one libFuzzer process at a time:
#   fuzz/run.sh TARGET RUNS [MAX_SECONDS]
# Corpus in fuzz/corpus/TARGET (started from fuzz/seeds/TARGET), log in fuzz/logs/TARGET.log,
# findings in fuzz/artifacts/TARGET. Needs nightly and cargo-fuzz (`cargo install cargo-fuzz`).
set -euo pipefail
cd "$(dirname "$0")"
target=$1
runs=$2
max_time=${3:-0}
# Per format: input size cap (bytes) and the largest single allocation allowed (MiB).
case $target in
  lowbit_tensors | safetensors_dir) dict=safetensors max_len=16384 malloc_mb=256 ;;
  gptq_dir | awq_dir | compressed_tensors_dir) dict=hf_quant max_len=16384 malloc_mb=256 ;;
  hf_config) dict=hf_config max_len=4096 malloc_mb=64 ;;
  tokenizer_json) dict=tokenizer_json max_len=4096 malloc_mb=256 ;;
  gguf) dict=gguf max_len=16384 malloc_mb=256 ;;
  *) echo "unknown target $target" >&2; exit 2 ;;
esac
mkdir -p "corpus/$target" logs
cp -n "seeds/$target"/* "corpus/$target/"
# One in-process worker (libFuzzer's default; -jobs/-workers would fork a child logging elsewhere).
exec nice -n 10 cargo +nightly fuzz run -O -a "$target" "corpus/$target" -- \
  -dict="dicts/$dict.dict" -max_len=$max_len -rss_limit_mb=2048 -malloc_limit_mb=$malloc_mb -timeout=10 \
  -runs="$runs" -max_total_time="$max_time" -print_final_stats=1 >"logs/$target.log" 2>&1
