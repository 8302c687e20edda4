"""HQQ (``method="hqq"``): calibration-free quantization with float zero points, from Python
and the CLI, on a tiny random Llama (seconds)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file

import lowbit
from lowbit.cli import main
from test_pipeline import quantized_linears
from tiny_llama import write_safetensors, write_tiny_llama

LAYERS, GROUP = 2, 16


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("tiny"), layers=LAYERS)


def dequantized(q: lowbit.QTensor) -> np.ndarray:
    """``(code - zero) * scale`` per group of GROUP, from the stored arrays (numpy, not lowbit)."""
    rows, cols = q.shape
    codes = q.codes().astype(np.float32).reshape(rows, cols // GROUP, GROUP)
    zeros = np.asarray(q.zeros, dtype=np.float32)[..., None]
    scales = np.asarray(q.scales, dtype=np.float32)[..., None]
    return ((codes - zeros) * scales).reshape(rows, cols)


def test_float_zeros_are_stored_and_run_packed(tiny: Path, tmp_path: Path) -> None:
    report = lowbit.quantize_model(tiny, tmp_path / "hqq", method="hqq", group_size=GROUP, embed="keep")
    assert report.params["method"] == "hqq"
    assert report.calib_tokens == 0
    qs = quantized_linears(tmp_path / "hqq")
    assert len(qs) == 7 * LAYERS
    fractional = 0
    for name, q in qs.items():
        assert q.zeros is not None, name
        assert q.zeros.dtype == np.float16, name
        fractional += int(np.count_nonzero(q.zeros != np.round(q.zeros)))
        assert np.array_equal(q.dequantize(), dequantized(q)), name
    assert fractional > 0, "HQQ moved no zero point off the integers"

    # The same weights as a dense f32 model give the same logits: the kernels run float zeros.
    dense = tmp_path / "dense"
    shutil.copytree(tiny, dense)
    tensors = load_file(dense / "model.safetensors")
    for name, q in qs.items():
        assert tensors[name].shape == q.shape, name
        tensors[name] = dequantized(q)
    write_safetensors(dense / "model.safetensors", tensors)
    ids = np.load(tiny / "ids.npy").reshape(-1)[:40].tolist()
    packed, ref = (lowbit.Model.load(d).logits(ids) for d in (tmp_path / "hqq", dense))
    np.testing.assert_allclose(packed, ref, rtol=1e-4, atol=1e-4)


def test_hqq_lowers_the_weight_error_of_min_max_rounding(tiny: Path, tmp_path: Path) -> None:
    for method in ("hqq", "rtn"):
        lowbit.quantize_model(tiny, tmp_path / method, method=method, group_size=GROUP)
    original = load_file(tiny / "model.safetensors")
    hqq, rtn = quantized_linears(tmp_path / "hqq"), quantized_linears(tmp_path / "rtn")
    err = {
        m: sum(float(np.abs(original[n] - qs[n].dequantize()).sum()) for n in qs)
        for m, qs in (("hqq", hqq), ("rtn", rtn))
    }
    # HQQ starts from min-max ranges and keeps its best step, so it is never worse in |W - Wr|.
    assert err["hqq"] < 0.97 * err["rtn"], err


def test_cli_reports_every_stored_byte(tiny: Path, tmp_path: Path) -> None:
    out, report = tmp_path / "cli", tmp_path / "report.json"
    args = ["quantize", str(tiny), "-o", str(out), "--method", "hqq", "--group-size", str(GROUP)]
    assert main([*args, "--hqq-iters", "5", "--hqq-optimize-scale", "--json", str(report), "-q"]) == 0
    r = json.loads(report.read_text())
    # 4-bit codes plus an f16 scale and an f16 zero per group of 16
    assert r["bits_per_weight"] == pytest.approx(4 + 32 / GROUP)
    manifest = json.loads((out / "config.json").read_text())["quantization_config"]
    assert manifest["method"] == "hqq"
    assert manifest["iters"] == 5
    assert manifest["optimize_scale"] is True
    ids = np.load(tiny / "ids.npy").reshape(-1)[:48].tolist()
    assert lowbit.Model.load(out).perplexity(ids=ids, window=16).windows == 3


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"hqq_lp_norm": math.nan}, "lp_norm"),
        ({"hqq_lp_norm": 0.0}, "lp_norm"),
        ({"hqq_lp_norm": 1.5}, "lp_norm"),
        ({"hqq_iters": 0}, "iters"),
        ({"sym": True}, "asymmetric"),
        ({"format": "nf4", "group_size": 64}, "integer codes"),
    ],
)
def test_bad_options_are_refused(tiny: Path, tmp_path: Path, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        lowbit.quantize_model(tiny, tmp_path / "bad", method="hqq", **{"group_size": GROUP, **options})
    assert not (tmp_path / "bad").exists()


def test_hf_exports_refuse_float_zeros(tiny: Path, tmp_path: Path) -> None:
    lowbit.quantize_model(tiny, tmp_path / "hqq", method="hqq", group_size=GROUP)
    for fmt in ("gptq", "awq", "compressed-tensors"):
        with pytest.raises(ValueError, match="float zero points"):
            lowbit.export(tmp_path / "hqq", tmp_path / fmt, format=fmt)
        assert not (tmp_path / fmt).exists()
