"""lowbit's Hugging Face exports loaded by transformers on the CPU, on SmolLM2-135M.

Each case runs ``benches/interop/transformers_check.py``: lowbit quantizes SmolLM2 (RTN W4 g64),
exports it, and transformers (with optimum + GPTQModel, or compressed-tensors) loads the export in
the PyTorch loaders' venv of ``make loaders``. The script compares tokenization, top-1 next token
and logits on a few hundred WikiText-2 positions and perplexity with lowbit's own run of the same
weights, and exits non-zero on a disagreement; its summary line is printed here.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import ROOT, SHARED, torch_python, wikitext

SCRIPT = ROOT / "benches" / "interop" / "transformers_check.py"


@pytest.mark.parametrize(
    ("fmt", "sym"),
    # Asymmetric compressed-tensors is left out: transformers 5.24 sizes weight_zero_point as
    # [out, G] where the compressor packs [ceil(out / 8), G] (docs/format.md).
    [("gptq", "1"), ("gptq", "0"), ("awq", "1"), ("awq", "0"), ("compressed-tensors", "1")],
)
def test_transformers_loads_the_export(fmt: str, sym: str, capsys: pytest.CaptureFixture[str]) -> None:
    wikitext("test")
    env = {**os.environ, "REF_PY": str(torch_python()), "LOWBIT_SHARED": str(SHARED)}
    r = subprocess.run(
        [sys.executable, SCRIPT, "--format", fmt, "--sym", sym], env=env, capture_output=True, text=True
    )
    summary = [line for line in r.stdout.splitlines() if line.startswith("RESULT")]
    with capsys.disabled():  # the agreement figures belong in the CI log
        print("", *summary, sep="\n")
    assert r.returncode == 0, (
        f"{SCRIPT.name} --format {fmt} --sym {sym}:\n{r.stdout[-3000:]}{r.stderr[-3000:]}"
    )
    assert summary, r.stdout[-2000:]
