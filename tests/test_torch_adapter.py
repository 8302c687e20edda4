"""``lowbit.torch`` (the ``lowbit[torch]`` extra) in the PyTorch loaders' venv of ``make loaders``.

``tests/torch_adapter_check.py`` runs there with this checkout's lowbit on its path: the fake
quantization equals ``lowbit.quantize(...).dequantize()`` bit for bit on 48 schemes, a tiny
Llama trains through it (straight-through gradients, falling loss), and ``convert`` gives
QTensors and a model directory holding exactly the trained weights, which lowbit runs packed;
bad schemes, shapes and NaN weights get clear errors.
Where the CPU torch wheel is not installed the test is skipped naming the venv (a failure in CI).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

import lowbit
from conftest import ROOT, torch_python

SCRIPT = ROOT / "tests" / "torch_adapter_check.py"


def test_torch_fake_quant_trains_and_converts_bit_exactly(capsys: pytest.CaptureFixture[str]) -> None:
    package_root = Path(lowbit.__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(package_root), os.environ.get("PYTHONPATH", "")])}
    cmd = [str(torch_python()), str(SCRIPT)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    with capsys.disabled():
        print("", *r.stdout.strip().splitlines(), sep="\n")
    assert r.returncode == 0, f"{SCRIPT.name}:\n{r.stdout[-3000:]}{r.stderr[-3000:]}"
    assert "RESULT lowbit.torch ok" in r.stdout
