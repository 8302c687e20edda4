"""lowbit's HF GPTQ export loaded by transformers (optimum + GPTQModel's CPU kernel), on SmolLM2-135M.

    .venv/bin/python benches/interop/gptq_transformers.py

1. RTN W4 g64 symmetric SmolLM2 (``lowbit quantize smollm2 --method rtn --bits 4 --group-size 64
   --sym``), exported with ``lowbit export --format gptq`` (v1 zeros, every linear exact).
2. The first POSITIONS tokens of WikiText-2 test (raw bytes: the file has CRLF line endings),
   tokenized by lowbit and by the transformers tokenizer (the ids must agree).
3. Logits of every position from one prefill: lowbit on the GPTQ directory (f32 activations,
   ``LOWBIT_ACTIVATIONS=f32``; checked bitwise equal to lowbit on its own quantized directory)
   against ``AutoModelForCausalLM.from_pretrained(gptq_dir)`` in float32 on the CPU.

Reports top-1 agreement, the largest |logit difference|, the mean cosine and both perplexities;
exits 1 when the ids differ or top-1 agreement is below 98%. The reference runs in another
interpreter (REF_PY, default /tmp/gptqref/venv/bin/python: CPU torch, transformers, optimum,
gptqmodel), since lowbit's venv has no torch.
Environment: REF_PY, POSITIONS (256), SYM (1; 0 quantizes asymmetric: a gptq_v2 export),
WORK (a kept work directory; default temporary),
LOWBIT_SHARED (the shared data, default ../shared), CARGO_TARGET_DIR.
"""

from __future__ import annotations

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
SYM = os.environ.get("SYM", "1") != "0"

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


def run(work: Path) -> int:
    q, g = work / "q", work / "g"
    if not q.exists():
        sym = ["--sym"] if SYM else []
        lowbit_main(["quantize", "smollm2", "--method", "rtn", "--bits", "4", "--group-size", "64", *sym,
                     "-o", str(q), "-q"])  # fmt: skip
    if not g.exists():
        lowbit_main(["export", str(q), "-o", str(g), "--format", "gptq"])
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
    out = work / "ref_logits.npy"
    subprocess.run([REF_PY, "-c", REFERENCE, g, work / "text.txt", work / "ids.npy", out], check=True)
    theirs = np.load(out)
    hf_ids = np.load(str(out) + ".hf_ids.npy")
    ids_agree = list(hf_ids) == all_ids
    top1 = float((ours.argmax(-1) == theirs.argmax(-1)).mean())
    diff = float(np.abs(ours - theirs).max())
    cos = float(
        np.mean((ours * theirs).sum(-1) / (np.linalg.norm(ours, axis=-1) * np.linalg.norm(theirs, axis=-1)))
    )
    i64 = ids.astype(np.int64)
    print(f"positions {len(ids)}; token ids equal to transformers' tokenizer: {ids_agree} ({len(all_ids)})")
    print(f"lowbit on the GPTQ export == lowbit on its own directory (bitwise): {same_as_own}")
    print(f"top-1 agreement {top1:.4f}; max |logit diff| {diff:.4g}; mean cosine {cos:.6f}")
    print(f"perplexity here: lowbit {ppl(ours, i64):.4f}, transformers {ppl(theirs, i64):.4f}")
    ok = ids_agree and same_as_own and top1 >= 0.98
    print("OK" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    if os.environ.get("WORK"):
        Path(os.environ["WORK"]).mkdir(parents=True, exist_ok=True)
        sys.exit(run(Path(os.environ["WORK"])))
    with tempfile.TemporaryDirectory() as d:
        sys.exit(run(Path(d)))
