"""LLM.int8() (``method="llm-int8"``) from Python and the CLI, on a tiny random Llama whose
norms plant two outlier columns in the q/k/v and gate/up inputs (seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import lowbit
from lowbit import _lowbit
from lowbit.cli import main
from tiny_llama import write_safetensors, write_tiny_llama

HIDDEN, LAYERS = 32, 2
OUTLIERS = [3, 17]
W8A8 = {"bits": 8, "group_size": "channel", "sym": True}


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = write_tiny_llama(tmp_path_factory.mktemp("tiny"), hidden=HIDDEN, layers=LAYERS)
    t = {k: v.astype(np.float64) for k, v in load_file(d / "model.safetensors").items()}
    for k, v in t.items():
        if k.endswith("layernorm.weight"):
            v[OUTLIERS] *= 40.0
    write_safetensors(d / "model.safetensors", t)
    return d


def test_needs_no_calibration_and_counts_the_planted_columns(planted: Path, tmp_path: Path) -> None:
    # no calib, no $LOWBIT_CALIB_TEXT needed: the decomposition happens at run time
    report = lowbit.quantize_model(planted, tmp_path / "dec", method="llm-int8", **W8A8)
    assert report.params["method"] == "llm-int8"
    assert report.params["outlier_threshold"] == 6.0
    lowbit.quantize_model(
        planted, tmp_path / "plain", method="llm-int8", outlier_threshold=float("inf"), **W8A8
    )
    lowbit.quantize_model(planted, tmp_path / "w8", method="rtn", scale_dtype="f32", **W8A8)
    dec, plain, w8 = (lowbit.Model.load(tmp_path / n) for n in ("dec", "plain", "w8"))
    assert dec.config["quantization_config"]["outlier_threshold"] == 6.0
    assert plain.outlier_counts() == []
    assert dec.outlier_counts()[0]["batches"] == 0

    # Against the same int8 weights with f32 activations (RTN W8 in an evaluation, which keeps
    # f32 activations), per window of 16 tokens: what quantizing the activations costs.
    ids = np.random.default_rng(2).integers(0, 61, 96).tolist()
    nll = {
        n: np.array(m.perplexity(ids=ids, window=16).window_nll)
        for n, m in (("dec", dec), ("plain", plain), ("w8", w8))
    }
    e_dec, e_plain = np.abs(nll["dec"] - nll["w8"]).max(), np.abs(nll["plain"] - nll["w8"]).max()
    assert e_dec * 3 < e_plain, (e_dec, e_plain)

    counts = {c["name"]: c for c in dec.outlier_counts()}
    assert len(counts) == 7 * LAYERS
    # block 0 reads the embedding through its norm: exactly the planted columns reach |x| >= 6
    for name in ("q_proj", "k_proj", "v_proj"):
        c = counts[f"model.layers.0.self_attn.{name}"]
        assert (c["batches"], c["outlier_columns"], c["columns"]) == (6, 12, HIDDEN)
        assert c["fraction"] == 2 / HIDDEN
    dec.reset_outlier_counts()
    assert all(c["batches"] == 0 for c in dec.outlier_counts())


def test_cli_quantize_without_calibration(
    planted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LOWBIT_CALIB_TEXT", raising=False)
    out = tmp_path / "q"
    args = ["quantize", str(planted), "-o", str(out), "--method", "llm-int8", "--bits", "8", "--sym"]
    assert main([*args, "--group-size", "channel", "--outlier-threshold", "5.5"]) == 0
    assert json.loads((out / "config.json").read_text())["quantization_config"]["outlier_threshold"] == 5.5
    assert "outlier_threshold" in capsys.readouterr().out
    model = lowbit.Model.load(out)
    ids = np.random.default_rng(3).integers(0, 61, 64).tolist()
    model.perplexity(ids=ids, window=32)
    counts = {c["name"]: c for c in model.outlier_counts()}
    assert counts["model.layers.0.self_attn.q_proj"]["batches"] == 2  # one per window
    assert counts["model.layers.0.self_attn.q_proj"]["fraction"] == 2 / HIDDEN


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"outlier_threshold": float("nan"), **W8A8}, "outlier_threshold"),
        ({"outlier_threshold": 0.0, **W8A8}, "outlier_threshold"),
        ({"outlier_threshold": -6.0, **W8A8}, "outlier_threshold"),
        ({"bits": 4, "group_size": 128}, "bits 8, per-channel"),
        ({"bits": 8, "group_size": "channel", "sym": False}, "symmetric"),
    ],
)
def test_bad_options_are_refused(
    planted: Path, tmp_path: Path, options: dict[str, object], message: str
) -> None:
    with pytest.raises(_lowbit.LowbitError, match=message):
        lowbit.quantize_model(planted, tmp_path / "bad", method="llm-int8", **options)
    assert not (tmp_path / "bad").exists()


def test_method_aliases_and_calibration_flag() -> None:
    for name in ("llm-int8", "int8", "llm_int8", "rtn"):
        assert not _lowbit.method_calibrated(name)
    assert _lowbit.method_calibrated("smoothquant")
    with pytest.raises(ValueError, match="llm-int8"):
        _lowbit.method_calibrated("int7")
