"""lowbit's HF exports (GPTQ, AWQ GEMM, compressed-tensors pack-quantized) loaded by transformers on
the CPU, compared with lowbit on SmolLM2-135M.

    REF_PY=/tmp/gptqref/venv/bin/python .venv/bin/python benches/interop/transformers_check.py \
        --format gptq|awq|compressed-tensors [--sym 0|1]

1. RTN W4 g64 SmolLM2 (``lowbit quantize smollm2 --method rtn --bits 4 --group-size 64 [--sym]``),
   exported with ``lowbit export --format FORMAT`` (every linear exact).
2. The first POSITIONS tokens of WikiText-2 test (raw bytes: the file has CRLF line endings),
   tokenized by lowbit and by the transformers tokenizer (the ids must agree).
3. Logits of every position from one prefill: lowbit on the export (f32 activations,
   ``LOWBIT_ACTIVATIONS=f32``; checked bitwise equal to lowbit on its own quantized directory)
   against ``AutoModelForCausalLM.from_pretrained(export)`` in float32 on the CPU: GPTQ through
   optimum + GPTQModel's CPU kernel, AWQ through GPTQModel's AWQ kernels, compressed-tensors
   through the ``compressed-tensors`` package.

Prints top-1 agreement, the largest |logit difference|, the mean cosine, both perplexities and one
line ``RESULT format=... top1=... max_abs_logit_diff=... ppl_lowbit=... ppl_ref=...``; exits 0 on
agreement (same ids, lowbit's export bitwise equal to its own directory, top-1 >= 98%), 1 on
disagreement and 2 when the reference cannot load the export (the loader's message printed). The
reference runs in another interpreter (REF_PY, default /tmp/gptqref/venv/bin/python: CPU torch,
transformers, optimum, gptqmodel, compressed-tensors), since lowbit's venv has no torch.
Environment: REF_PY, POSITIONS (256), SYM (the --sym default, 1; 0 quantizes asymmetric: a
gptq_v2 export for GPTQ), WORK (a kept work directory; default temporary), LOWBIT_SHARED (the
shared data, default ../shared), CARGO_TARGET_DIR.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

import lowbit
from lowbit.cli import main as lowbit_main

ROOT = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("LOWBIT_SHARED") or ROOT.parent / "shared")
REF_PY = os.environ.get("REF_PY", "/tmp/gptqref/venv/bin/python")
POSITIONS = int(os.environ.get("POSITIONS", "256"))

REFERENCE = r"""
import sys, numpy as np, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
d, text_path, ids_path, out = sys.argv[1:5]
tok = AutoTokenizer.from_pretrained(d)
text = open(text_path, "rb").read().decode("utf-8")
hf_ids = tok(text, add_special_tokens=False).input_ids
np.save(out + ".hf_ids.npy", np.array(hf_ids, dtype=np.int64))
ids = np.load(ids_path)
m = AutoModelForCausalLM.from_pretrained(d, device_map="cpu", dtype=torch.float32)
print("module:", type(m.model.layers[0].mlp.down_proj).__name__, file=sys.stderr)
w = getattr(m.model.layers[0].mlp.down_proj, "weight", None)
print("down_proj weight:", None if w is None else (w.dtype, tuple(w.shape)), file=sys.stderr)
with torch.no_grad():
    logits = m(torch.tensor(ids[None, :], dtype=torch.long)).logits[0].float().numpy()
np.save(out, logits)
"""


def dump_logits(model: Path, ids_path: Path, out: Path) -> np.ndarray:
    target = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target")
    exe = target / "release" / "examples" / "dump_logits"
    if not exe.exists():
        cargo = ["cargo", "build", "--release", "-p", "lowbit-model", "--example", "dump_logits"]
        subprocess.run(cargo, check=True)
    env = {**os.environ, "LOWBIT_ACTIVATIONS": "f32"}
    subprocess.run([exe, model, ids_path, out], check=True, env=env)
    return np.fromfile(out, dtype="<f4")


def log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(axis=-1, keepdims=True)
    out: np.ndarray = x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))
    return out


def ppl(logits: np.ndarray, ids: np.ndarray) -> float:
    lp = log_softmax(logits[:-1].astype(np.float64))
    return float(np.exp(-lp[np.arange(len(ids) - 1), ids[1:]].mean()))


def run(work: Path, fmt: str, sym: bool) -> int:
    q, g = work / ("q" if sym else "q_asym"), work / f"{fmt}{'' if sym else '_asym'}"
    if not q.exists():
        flags = ["--sym"] if sym else []
        lowbit_main(["quantize", "smollm2", "--method", "rtn", "--bits", "4", "--group-size", "64", *flags,
                     "-o", str(q), "-q"])  # fmt: skip
    if not g.exists():
        lowbit_main(["export", str(q), "-o", str(g), "--format", fmt])
    raw = (SHARED / "data" / "wikitext2" / "test.txt").read_bytes()
    model = lowbit.Model.load(g)
    # Enough text for POSITIONS tokens, cut at a line end so both tokenizers see the same string.
    text = raw[: raw.index(b"\n", POSITIONS * 8) + 1].decode("utf-8")
    (work / "text.txt").write_bytes(text.encode("utf-8"))
    all_ids = model.encode(text)
    ids = np.array(all_ids[:POSITIONS], dtype=np.uint32)
    ids.tofile(work / "ids.u32")
    np.save(work / "ids.npy", ids.astype(np.int64))
    vocab = model.config["vocab_size"]
    ours = dump_logits(g, work / "ids.u32", work / "lowbit_g.f32").reshape(len(ids), vocab)
    own = dump_logits(q, work / "ids.u32", work / "lowbit_q.f32").reshape(len(ids), vocab)
    same_as_own = np.array_equal(ours, own)
    out = work / f"ref_logits_{fmt}.npy"
    ref = subprocess.run([REF_PY, "-c", REFERENCE, g, work / "text.txt", work / "ids.npy", out],
                         capture_output=True, text=True)  # fmt: skip
    print(ref.stderr.strip()[-4000:], file=sys.stderr)
    if ref.returncode != 0:
        last = [ln for ln in ref.stderr.strip().splitlines() if ln.strip()][-1:] or ["(no message)"]
        print(f"RESULT format={fmt} sym={int(sym)} loader_failed: {last[0]}")
        print(f"FAILED: transformers ({REF_PY}) could not load the {fmt} export; its last line: {last[0]}")
        return 2
    theirs = np.load(out)
    hf_ids = np.load(str(out) + ".hf_ids.npy")
    ids_agree = list(hf_ids) == all_ids
    top1 = float((ours.argmax(-1) == theirs.argmax(-1)).mean())
    diff = float(np.abs(ours - theirs).max())
    cos = float(
        np.mean((ours * theirs).sum(-1) / (np.linalg.norm(ours, axis=-1) * np.linalg.norm(theirs, axis=-1)))
    )
    i64 = ids.astype(np.int64)
    p_ours, p_ref = ppl(ours, i64), ppl(theirs, i64)
    print(f"positions {len(ids)}; token ids equal to transformers' tokenizer: {ids_agree} ({len(all_ids)})")
    print(f"lowbit on the {fmt} export == lowbit on its own directory (bitwise): {same_as_own}")
    print(f"top-1 agreement {top1:.4f}; max |logit diff| {diff:.4g}; mean cosine {cos:.6f}")
    print(f"perplexity here: lowbit {p_ours:.4f}, transformers {p_ref:.4f}")
    print(f"RESULT format={fmt} sym={int(sym)} top1={top1:.4f} max_abs_logit_diff={diff:.4g} "
          f"ppl_lowbit={p_ours:.4f} ppl_ref={p_ref:.4f}")  # fmt: skip
    ok = ids_agree and same_as_own and top1 >= 0.98
    checks = [
        ("token ids differ", ids_agree),
        ("lowbit's export differs from its own directory", same_as_own),
        (f"top-1 agreement {top1:.4f} < 0.98", top1 >= 0.98),
    ]
    why = [w for w, good in checks if not good]
    print("OK" if ok else f"FAILED: {'; '.join(why)}")
    return 0 if ok else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--format", choices=["gptq", "awq", "compressed-tensors"], default="gptq")
    ap.add_argument("--sym", type=int, choices=[0, 1], default=int(os.environ.get("SYM", "1") != "0"))
    args = ap.parse_args()
    if os.environ.get("WORK"):
        Path(os.environ["WORK"]).mkdir(parents=True, exist_ok=True)
        return run(Path(os.environ["WORK"]), args.format, bool(args.sym))
    with tempfile.TemporaryDirectory() as d:
        return run(Path(d), args.format, bool(args.sym))


if __name__ == "__main__":
    sys.exit(main())
