"""lowbit's GGUF export against llama.cpp's own binaries, on SmolLM2-135M.

    .venv/bin/python benches/interop/gguf_llama_cpp.py            # builds llama.cpp once if needed
    LLAMA_BIN=/path/to/llama.cpp/build/bin .venv/bin/python benches/interop/gguf_llama_cpp.py

1. Perplexity: SmolLM2 in F32 (llama.cpp's F16 conversion, exported with ``--dense-type F32``)
   and RTN W4 g32 symmetric SmolLM2 (``lowbit quantize smollm2 --method rtn --bits 4
   --group-size 32 --sym``) exported to Q4_0 (every block linear repacked exactly) and run by
   ``llama-perplexity -c 512 --chunks N`` on WikiText-2 test, against lowbit evaluating the same
   weights under llama-perplexity's scoring (each 512-token chunk from an empty context, no BOS,
   the NLL of its last 255 tokens: lowbit's NLL of the chunk minus that of its first 257 tokens).
2. Bytes: SmolLM2 in F16 (``llama-quantize SRC F16``) requantized to Q4_0 and Q8_0 by
   ``llama-quantize`` and by ``lowbit export --dense-type``, tensor by tensor, block by block.

Exits 1 when a perplexity differs by more than 0.1% (F32) / 0.5% (Q4_0), llama.cpp's token ids
differ from lowbit's, or any Q8_0 block differs. llama.cpp is built with benches/llama-cpp.sh
(cached outside the repository) unless LLAMA_BIN is set.
On the dev machine a default (GGML_NATIVE) build dies with "Illegal instruction"; build with
LLAMA_CMAKE_FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX512=ON" (as /work/e2e/build-avx512 was).
Environment: LLAMA_BIN, THREADS (2), CHUNKS (8), WORK (a kept work directory; default temporary),
LOWBIT_SHARED (the shared data, default ../shared).
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGUFReader

import lowbit

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("LOWBIT_SHARED") or ROOT.parent / "shared")
THREADS = os.environ.get("THREADS", "2")
CHUNKS = int(os.environ.get("CHUNKS", "8"))
N_CTX = 512


def run(*cmd: str | Path | int) -> str:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{cmd[0]} failed ({r.returncode}):\n{r.stdout[-2000:]}{r.stderr[-4000:]}")
    return r.stdout + r.stderr


def llama_bin() -> Path:
    out = subprocess.run(
        [ROOT / "benches" / "llama-cpp.sh", "llama-quantize", "llama-perplexity"],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PY": sys.executable},
    )
    return Path(out.stdout.strip().splitlines()[-1])


def llama_cpp_scoring_ppl(model: lowbit.Model, ids: list[int]) -> float:
    """llama-perplexity's number computed by lowbit: per chunk, the NLL of tokens 257..511."""
    first = N_CTX // 2
    total = 0.0
    for c in range(CHUNKS):
        chunk = ids[c * N_CTX : (c + 1) * N_CTX]
        whole = model.perplexity(ids=chunk, window=N_CTX, windows=1).nll
        head = model.perplexity(ids=chunk[: first + 1], window=first + 1, windows=1).nll
        total += whole - head
    return math.exp(total / (CHUNKS * (N_CTX - 1 - first)))


def llama_cpp_tokens(path: Path) -> np.ndarray:
    """The token ids llama-perplexity scored, from its ``--kl-divergence-base`` file header."""
    with path.open("rb") as f:
        head = f.read(20)
        if head[:8] != b"_logits_":
            sys.exit(f"{path}: not a llama-perplexity logits file")
        n_ctx, _n_vocab, n_chunk = np.frombuffer(head[8:20], dtype=np.int32)
        return np.frombuffer(f.read(4 * int(n_ctx) * int(n_chunk)), dtype=np.int32)


def compare_bytes(ours: Path, theirs: Path) -> tuple[int, int, int, int]:
    """(tensors equal, tensors compared, blocks differing, blocks compared) over the tensors both
    files store with the same type."""
    a = {t.name: t for t in GGUFReader(ours).tensors}
    equal = compared = bad_blocks = blocks = 0
    for t in GGUFReader(theirs).tensors:
        o = a.get(t.name)
        if o is None or o.tensor_type != t.tensor_type or t.tensor_type.name in ("F32", "F16"):
            continue
        x, y = np.asarray(o.data, dtype=np.uint8), np.asarray(t.data, dtype=np.uint8)
        block_bytes = {"Q4_0": 18, "Q8_0": 34}.get(t.tensor_type.name or "", int(x.shape[-1]))
        row_blocks = x.reshape(-1, block_bytes)
        other = y.reshape(row_blocks.shape)
        diff = int(np.any(row_blocks != other, axis=1).sum())
        compared += 1
        equal += diff == 0
        bad_blocks += diff
        blocks += row_blocks.shape[0]
    return equal, compared, bad_blocks, blocks


def main() -> int:
    bin_dir = Path(os.environ["LLAMA_BIN"]) if os.environ.get("LLAMA_BIN") else llama_bin()
    text_path = SHARED / "data" / "wikitext2" / "test.txt"
    if not text_path.is_file():
        sys.exit(f"{text_path} is missing: set LOWBIT_SHARED to the shared data directory")
    work = Path(os.environ.get("WORK") or tempfile.mkdtemp(prefix="lowbit-gguf-check-"))
    work.mkdir(parents=True, exist_ok=True)
    src = lowbit.smollm2_gguf()

    q = work / "rtn-w4g32-sym"
    if not q.exists():
        opts: dict[str, Any] = {"bits": 4, "group_size": 32, "sym": True, "nsamples": 1, "seqlen": 64}
        lowbit.quantize_model(src, q, method="rtn", calib=list(range(64)), **opts)
    ppl_args: list[str | Path | int] = ["-f", text_path, "-c", N_CTX, "--chunks", CHUNKS, "-t", THREADS]
    report = lowbit.export(q, work / "rtn-w4g32-sym.Q4_0.gguf")
    print(f"Q4_0 export paths: {sorted({t.path for t in report.tensors})}; {report.bytes / 2**20:.1f} MiB")
    f16 = work / "smollm2-F16.gguf"
    if not f16.exists():
        run(bin_dir / "llama-quantize", "--allow-requantize", src, f16, "F16", THREADS)
    f32 = lowbit.export(f16, work / "smollm2-F32.gguf", dense_type="F32").path
    # llama-perplexity reads the file's bytes: keep its CRLF line ends (no newline translation).
    text = text_path.read_bytes().decode("utf-8")
    ok = True
    # F32 weights: llama.cpp runs f32 products, so only the summation order differs. Q4_0: its
    # CPU products quantize activations to Q8_0 (ggml-cpu's vec_dot_type), lowbit's evaluation
    # keeps them f32, hence the looser bound.
    for label, gguf, lowbit_model, tol in [("F32", f32, f16, 1e-3), ("Q4_0", report.path, q, 5e-3)]:
        tokens_file = work / "tokens.bin"
        out = run(bin_dir / "llama-perplexity", "-m", gguf, *ppl_args, "--kl-divergence-base", tokens_file)
        m = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", out)
        if not m:
            sys.exit(f"no final estimate in llama-perplexity's output:\n{out[-3000:]}")
        ppl_cpp, err_cpp = float(m.group(1)), float(m.group(2))
        cpp_ids = llama_cpp_tokens(tokens_file)
        tokens_file.unlink()
        model = lowbit.Model.load(lowbit_model)
        ids = model.encode(text)
        same = int(np.sum(cpp_ids == np.asarray(ids[: len(cpp_ids)])))
        ppl_lowbit = llama_cpp_scoring_ppl(model, ids)
        ppl_back = llama_cpp_scoring_ppl(lowbit.Model.load(gguf), ids)
        rel = abs(ppl_cpp - ppl_lowbit) / ppl_lowbit
        print(f"{label}: llama-perplexity {ppl_cpp:.4f} +/- {err_cpp:.4f} ({CHUNKS} x {N_CTX})")
        print(f"  lowbit, same weights and scoring: {ppl_lowbit:.4f} (reading the GGUF: {ppl_back:.4f})")
        print(f"  relative difference {rel:.2e}; tokens equal {same}/{len(cpp_ids)}")
        # lowbit's runtime on the GGUF (dequantized to f32) against its own packed or f16 kernels.
        ok &= rel <= tol and abs(ppl_back - ppl_lowbit) <= 1e-5 * ppl_lowbit and same == len(cpp_ids)
    for ty in ("Q4_0", "Q8_0"):
        theirs = work / f"llama-quantize.{ty}.gguf"
        run(bin_dir / "llama-quantize", f16, theirs, ty, THREADS)
        ours = lowbit.export(f16, work / f"lowbit.{ty}.gguf", dense_type=ty).path
        equal, compared, bad, blocks = compare_bytes(ours, theirs)
        print(f"{ty}: {equal}/{compared} tensors byte-identical, {bad}/{blocks} blocks differ")
        ok &= compared > 0 and (ty != "Q8_0" or bad == 0)
    print("OK" if ok else "DISAGREEMENT")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
