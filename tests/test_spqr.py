"""SpQR (``method="spqr"``) from Python and the CLI on a tiny random Llama (seconds): the saved
layers hold 3-bit statistics and f16 outliers, load packed, and bad settings are refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

import lowbit
from lowbit.cli import main
from test_pipeline import LAYERS, tiny_model  # noqa: F401  (the fixture)


def test_spqr_from_python_counts_every_byte(tiny_model: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "q"
    kw = {"calib": tiny_model / "ids.npy", "nsamples": 8, "seqlen": 16}
    report = lowbit.quantize_model(tiny_model, out, method="spqr", bits=3, outlier_threshold=0.1, **kw)
    assert report.params["method"] == "spqr"
    assert report.params["group_size"] == 16
    assert len(report.layers) == 7 * LAYERS
    # 3-bit codes, 2 x 3 bits of statistics per 16 weights, 2 x 2 f16 per 256: 3.625, plus the
    # outliers (a u32 row offset costs a whole bit per weight on these 32-wide rows).
    assert 3.625 < report.bits_per_weight < 5.5
    cfg = json.loads((out / "config.json").read_text())["quantization_config"]
    assert cfg["stats_bits"] == 3
    assert cfg["outlier_relative_threshold"] == 0.1
    names: list[str] = []
    for f in out.glob("*.safetensors"):
        with safe_open(f, "np") as st:
            names += list(st.keys())
    assert any(n.endswith("q_proj.weight.outlier_values") for n in names)
    assert any(n.endswith("q_proj.weight.scale_codes") for n in names)

    m = lowbit.Model.load(out)
    assert m.weight_bytes < lowbit.Model.load(tiny_model).weight_bytes
    ids = np.load(tiny_model / "ids.npy").tolist()[:64]
    assert np.isfinite(m.perplexity(ids=ids, window=32, windows=2).perplexity)

    none = lowbit.quantize_model(tiny_model, tmp_path / "none", method="spqr", bits=3,
                                 outlier_threshold=float("inf"), **kw)  # fmt: skip
    assert none.bits_per_weight == pytest.approx(3.625, abs=0.01)


def test_spqr_cli_and_bad_settings(tiny_model: Path, tmp_path: Path) -> None:  # noqa: F811
    args = ["quantize", str(tiny_model), "--method", "spqr", "--calib", str(tiny_model / "ids.npy"),
            "--nsamples", "4", "--seqlen", "16"]  # fmt: skip
    assert main([*args, "-o", str(tmp_path / "q"), "--stats-bits", "4", "--outlier-max-percent", "0.5"]) == 0
    cfg = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    assert cfg["stats_bits"] == 4
    assert cfg["outlier_max_percent"] == 0.5
    for kw, match in [
        ({"outlier_max_percent": 150.0}, "outlier_max_percent"),
        ({"outlier_threshold": float("nan")}, "outlier_threshold"),
        ({"sym": True}, "asymmetric"),
    ]:
        with pytest.raises(lowbit.LowbitError, match=match):
            lowbit.quantize_model(
                tiny_model, tmp_path / "bad", method="spqr", calib=tiny_model / "ids.npy", **kw
            )
        assert not (tmp_path / "bad").exists()
    with pytest.raises(ValueError, match="stats_bits applies to spqr, not gptq"):
        lowbit.quantize_model(tiny_model, tmp_path / "bad", method="gptq", stats_bits=3)
