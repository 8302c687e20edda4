"""Native side of the browser tests and benchmark: quantizes the SmolLM2 GGUF with RTN to INT4
(lowbit's defaults, group 128), packs the directory into one file for the wasm build, and records
what the native build gives for the same inputs (greedy tokens, perplexity, single-thread decode
speed) in ``native.json``.

    python wasm/test/prepare.py OUT_DIR [--bench]

Needs the ``lowbit`` package (this checkout's build) and node (for ``bin/lowbit-pack.mjs``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROMPT = "The capital of France is"
MAX_NEW_TOKENS = 24
WINDOW = 128
WINDOWS = 2
BENCH_TOKENS = 64
# In-browser quantization: the f32 GGUF of SmolLM2 quantized natively with RTN (the browser must
# give the same files) and with GPTQ on a short calibration text (the browser's must score a
# close perplexity: the solvers' reductions may run in another order).
QUANT_BITS = 4
QUANT_GROUP = 128
GPTQ_NSAMPLES = 4
GPTQ_SEQLEN = 128
# Manifest fields that differ from run to run (timings, memory).
VOLATILE = ("timings", "peak_rss_bytes")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--text", type=Path, help="perplexity text (default: the shared WikiText-2 test split)")
    ap.add_argument("--bench", action="store_true", help="also time single-thread native decode")
    args = ap.parse_args()
    import lowbit

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    model_dir = out / "smollm2-w4"
    if not (model_dir / "config.json").is_file():
        lowbit.quantize_model(lowbit.smollm2_gguf(), model_dir, method="rtn", bits=4, group_size=128)
    pack = out / "smollm2-w4.lowbit"
    subprocess.run(
        ["node", str(HERE.parent / "bin" / "lowbit-pack.mjs"), str(model_dir), str(pack)], check=True
    )
    text_path = (
        args.text
        or Path(os.environ.get("LOWBIT_SHARED", HERE.parents[2] / "shared")) / "data/wikitext2/test.txt"
    )
    full_text = text_path.read_text(encoding="utf-8")
    text = full_text[:20000]
    calib_text = full_text[20000:26000]
    model = lowbit.Model.load(model_dir)
    g = model.generate(PROMPT, max_new_tokens=MAX_NEW_TOKENS)
    ppl = model.perplexity(text, window=WINDOW, windows=WINDOWS)
    native = {
        "prompt": PROMPT,
        "max_new_tokens": MAX_NEW_TOKENS,
        "tokens": list(g.tokens),
        "text": g.text,
        "perplexity_text": text,
        "window": WINDOW,
        "windows": WINDOWS,
        "perplexity": ppl.perplexity,
        "nll": ppl.nll,
        "bench_tokens": BENCH_TOKENS,
    }
    native["quantize"] = quantize_references(lowbit, out, calib_text, text)
    if args.bench:
        native["bench"] = bench(model_dir)
        # The same model for llama.cpp in wasm (wllama): Q4_0 (llama.cpp's reference quantizer)
        # of the f32 GGUF, every weight but the embedding (Q6_K... as llama.cpp's fallbacks do).
        q4 = out / "smollm2-q4_0.gguf"
        if not q4.is_file():
            lowbit.export(out / native["quantize"]["input"], q4, dense_type="Q4_0")
        native["bench_gguf"] = q4.name
    (out / "native.json").write_text(json.dumps(native))
    print(json.dumps({k: v for k, v in native.items() if k not in ("perplexity_text", "quantize")}))
    return 0


def stable_manifest(manifest: dict) -> dict:
    """The manifest without what changes from run to run (timings, memory, per-layer seconds, and
    the sizes that count the manifest's own bytes)."""
    m = {k: v for k, v in manifest.items() if k not in VOLATILE}
    m["layers"] = [{k: v for k, v in layer.items() if k != "seconds"} for layer in m.get("layers", [])]
    # The manifest's own length, hence the directory's, depends on those timings' digits.
    m["sizes"] = {k: v for k, v in m["sizes"].items() if k not in ("out_bytes", "file_bits_per_weight")}
    return m


def quantize_references(lowbit, out: Path, calib_text: str, text: str) -> dict:
    """The f32 GGUF the browser quantizes, and the native results it is checked against."""
    f32 = out / "smollm2-f32.gguf"
    if not f32.is_file():
        lowbit.export(lowbit.smollm2_gguf(), f32, dense_type="F32")
    (out / "calib.txt").write_text(calib_text, encoding="utf-8")
    rtn_dir = out / "smollm2-f32-rtn"
    if not (rtn_dir / "config.json").is_file():
        lowbit.quantize_model(f32, rtn_dir, method="rtn", bits=QUANT_BITS, group_size=QUANT_GROUP)
    files = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(rtn_dir.iterdir())
        if p.is_file() and p.name != "lowbit_manifest.json"
    }
    manifest = json.loads((rtn_dir / "lowbit_manifest.json").read_text(encoding="utf-8"))
    gptq_dir = out / "smollm2-f32-gptq"
    gptq = {"method": "gptq", "bits": QUANT_BITS, "group_size": QUANT_GROUP}
    gptq |= {"nsamples": GPTQ_NSAMPLES, "seqlen": GPTQ_SEQLEN}
    if not (gptq_dir / "config.json").is_file():
        lowbit.quantize_model(f32, gptq_dir, calib=out / "calib.txt", **gptq)
    g_manifest = json.loads((gptq_dir / "lowbit_manifest.json").read_text(encoding="utf-8"))
    g_ppl = lowbit.Model.load(gptq_dir).perplexity(text, window=WINDOW, windows=WINDOWS)
    return {
        "input": f32.name,
        "bits": QUANT_BITS,
        "group_size": QUANT_GROUP,
        "rtn_files": files,
        "rtn_manifest": stable_manifest(manifest),
        "calib_text": calib_text,
        "gptq": gptq,
        "gptq_calibration": g_manifest["calibration"],
        "gptq_perplexity": g_ppl.perplexity,
    }


def bench(model_dir: Path) -> dict[str, float]:
    """Single-thread native decode, prefill and first-token time, in a child process (the thread
    count is fixed when the pools start)."""
    code = f"""
import json, time, lowbit
m = lowbit.Model.load({str(model_dir)!r})
prompt = {PROMPT!r} * 8
m.generate(prompt, max_new_tokens=4)  # warm up
t0 = time.perf_counter()
g = m.generate(prompt, max_new_tokens={BENCH_TOKENS}, stop_on_eos=False)
t1 = time.perf_counter()
n = len(g.tokens)
print(json.dumps({{
    "decode_tok_s": (n - 1) / g.decode_seconds,
    "prefill_tok_s": g.prompt_tokens / g.prefill_seconds,
    "first_token_s": g.prefill_seconds,
    "wall_s": t1 - t0,
    "prompt_tokens": g.prompt_tokens,
}}))
"""
    env = dict(os.environ, RAYON_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True, text=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    sys.exit(main())
