"""SqueezeLLM (``method="squeezellm"``) from Python and the CLI on a tiny random Llama (seconds):
per-row codebooks with f16 sparse outliers, stored and counted byte for byte, running packed with
the same logits as a dense model holding the dequantized weights; bad settings refused."""

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

# Rows of 64 and 128: the fast kernels' chunks at 3 and 4 bits on every level.
LAYERS, HIDDEN, FFN = 2, 64, 128


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(tmp_path_factory.mktemp("tiny"), hidden=HIDDEN, ffn=FFN, layers=LAYERS)


def raw_arrays(d: Path) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def dequantized(name: str, q: lowbit.QTensor, raw: dict[str, np.ndarray]) -> np.ndarray:
    """``table[row][code]`` plus the CSR outliers, from the stored arrays (numpy, not lowbit)."""
    rows = q.shape[0]
    table = raw[f"{name}.lut"].astype(np.float32)
    assert table.shape == (rows, 2**q.bits)
    w = np.take_along_axis(table, q.codes().astype(np.int64), axis=1)
    offsets = raw.get(f"{name}.outlier_offsets")
    if offsets is not None:
        columns, values = raw[f"{name}.outlier_columns"], raw[f"{name}.outlier_values"].astype(np.float32)
        for r in range(rows):
            for i in range(offsets[r], offsets[r + 1]):
                w[r, columns[i]] += values[i]
    return w


@pytest.mark.parametrize(("bits", "feedback"), [(3, False), (4, False), (3, True)])
def test_row_codebooks_run_packed_with_the_dense_logits(
    tiny: Path, tmp_path: Path, bits: int, feedback: bool
) -> None:
    out = tmp_path / "sq"
    kw: dict[str, Any] = {"calib": tiny / "ids.npy", "nsamples": 8, "seqlen": 16}
    report = lowbit.quantize_model(
        tiny, out, method="squeezellm", bits=bits, embed="keep", squeeze_error_feedback=feedback, **kw
    )
    assert report.params["method"] == "squeezellm"
    assert report.params["error_feedback"] is feedback
    assert report.params["weight_format"] == "rowlut"
    assert "not Fisher" in report.params["sensitivity"]
    assert "group_size" not in report.params
    qs = quantized_linears(out)
    assert len(qs) == 7 * LAYERS
    raw = raw_arrays(out)
    original = load_file(tiny / "model.safetensors")
    sparse = 0
    for name, q in qs.items():
        assert q.format == "rowlut", name
        assert q.bits == bits, name
        assert q.scales.shape == (q.shape[0], 2**bits), name
        assert q.scales.dtype == np.float16, name
        ref = dequantized(name, q, raw)
        np.testing.assert_array_equal(q.dequantize(), ref, err_msg=name)
        # The 0.45% largest and 0.05% most sensitive weights are reproduced to f16 precision.
        n = int(raw[f"{name}.outlier_offsets"][-1])
        assert n == round(0.0045 * q.numel) + round(0.0005 * q.numel), name
        sparse += n
        # Codes + [rows, 2^bits] f16 tables + u32 offsets, u16 columns and f16 values.
        rows = q.shape[0]
        assert q.nbytes == q.numel * bits // 8 + 2 * rows * 2**bits + 4 * (rows + 1) + 4 * n, name
        # Near the Lloyd-Max error of a Gaussian at 8/16 levels (0.19/0.10 of its rms; the
        # weighting trades some plain error for weighted error).
        # (The error feedback trades weight error for output error: not bounded here.)
        rms = float(np.sqrt(np.mean(np.square(original[name]))))
        assert (
            feedback or float(np.sqrt(np.mean(np.square(ref - original[name])))) < 0.5 ** (bits - 1) * rms
        ), name
    assert sparse > 0

    # The same weights as a dense f32 model give the same logits: the row-LUT kernels run packed.
    dense = tmp_path / "dense"
    shutil.copytree(tiny, dense)
    tensors = load_file(dense / "model.safetensors")
    for name, q in qs.items():
        tensors[name] = q.dequantize()
    write_safetensors(dense / "model.safetensors", tensors)
    ids = np.load(tiny / "ids.npy").reshape(-1)[:40].tolist()
    packed, ref_logits = (lowbit.Model.load(d).logits(ids) for d in (out, dense))
    np.testing.assert_allclose(packed, ref_logits, rtol=1e-4, atol=1e-4)
    assert lowbit.Model.load(out).weight_bytes < lowbit.Model.load(tiny).weight_bytes


def test_weighted_codebooks_beat_uniform_ones(tiny: Path, tmp_path: Path) -> None:
    """k-means tables fit the weights better than the uniform grid of the same width (RTN 3-bit
    per channel has 8 evenly spaced levels per row, as a uniform row table would)."""
    kw: dict[str, Any] = {"calib": tiny / "ids.npy", "nsamples": 8, "seqlen": 16}
    lowbit.quantize_model(tiny, tmp_path / "sq", method="squeezellm", bits=3, squeeze_outlier_percent=0.0,
                          squeeze_sensitive_percent=0.0, **kw)  # fmt: skip
    lowbit.quantize_model(tiny, tmp_path / "rtn", method="rtn", bits=3, group_size=None)
    original = load_file(tiny / "model.safetensors")

    def sq_err(d: Path) -> float:
        return sum(
            float(np.square(original[n] - q.dequantize()).sum()) for n, q in quantized_linears(d).items()
        )

    err = {m: sq_err(tmp_path / m) for m in ("sq", "rtn")}
    assert err["sq"] < 0.8 * err["rtn"], err


def test_cli_reports_every_stored_byte_and_refuses_bad_settings(tiny: Path, tmp_path: Path) -> None:
    out, report = tmp_path / "cli", tmp_path / "report.json"
    args = ["quantize", str(tiny), "-o", str(out), "--method", "squeezellm", "--bits", "3",
            "--calib", str(tiny / "ids.npy"), "--nsamples", "4", "--seqlen", "16"]  # fmt: skip
    assert main([*args, "--squeeze-outlier-percent", "1.0", "--json", str(report), "-q"]) == 0
    r = json.loads(report.read_text())
    stored = sum(q.nbytes for q in quantized_linears(out).values())
    numel = sum(q.numel for q in quantized_linears(out).values())
    assert r["bits_per_weight"] == pytest.approx(8 * stored / numel)
    manifest = json.loads((out / "config.json").read_text())["quantization_config"]
    assert manifest["outlier_percent"] == 1.0
    assert manifest["sensitive_percent"] == 0.05
    bad: list[tuple[dict[str, Any], str]] = [
        ({"squeeze_outlier_percent": math.nan}, "outlier_percent"),
        ({"squeeze_outlier_percent": 150.0}, "outlier_percent"),
        ({"squeeze_sensitive_percent": -1.0}, "sensitive_percent"),
        ({"bits": 2}, "3- or 4-bit"),
        ({"bits": 8}, "3- or 4-bit"),
    ]
    for options, message in bad:
        with pytest.raises(lowbit.LowbitError, match=message):
            lowbit.quantize_model(
                tiny, tmp_path / "bad", method="squeezellm", calib=tiny / "ids.npy", **options
            )
        assert not (tmp_path / "bad").exists()
    with pytest.raises(ValueError, match="squeeze_outlier_percent applies to squeezellm, not gptq"):
        lowbit.quantize_model(tiny, tmp_path / "bad", method="gptq", squeeze_outlier_percent=1.0)
