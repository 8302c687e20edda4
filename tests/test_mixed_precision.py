"""Mixed precision to a byte budget (``target_bpw`` / ``max_size``): bits and group size per block
linear from measured sensitivity, from Python and the CLI, on a tiny random Llama (seconds)."""

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
from lowbit.cli import byte_size, main
from lowbit.model import LoadWarning
from test_export_gguf import write_tokenizer
from test_pipeline import quantized_linears
from tiny_llama import write_safetensors, write_tiny_llama

LAYERS = 2
# Calibration small enough for seconds: 8 windows of 16 tokens of the tiny model's ids.
CALIB = {"nsamples": 8, "seqlen": 16}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # Rows of 128 and 256: the candidate group sizes (32, 64, 128, channel) differ in bytes.
    return write_tiny_llama(tmp_path_factory.mktemp("tiny"), hidden=128, ffn=256, layers=LAYERS)


def mixed(tiny: Path, out: Path, **options: Any) -> lowbit.QuantizeReport:
    return lowbit.quantize_model(tiny, out, calib=tiny / "ids.npy", **{**CALIB, **options})


@pytest.mark.parametrize("method", ["gptq", "rtn"])
def test_budget_is_met_and_each_layer_keeps_its_scheme(tiny: Path, tmp_path: Path, method: str) -> None:
    out = tmp_path / method
    report = mixed(tiny, out, method=method, target_bpw=3.5)
    alloc = report.to_dict()["allocation"]
    assert alloc["target_bpw"] == 3.5
    assert report.bits_per_weight <= 3.5
    assert report.linear_bytes_after == alloc["predicted_linear_bytes"] <= alloc["budget_bytes"]
    assert report.params["bits"] == "mixed"
    assert report.params["target_bpw"] == 3.5
    layers = {f"model.layers.{x['block']}.{x['name']}.weight": x for x in alloc["layers"]}
    assert len(layers) == 7 * LAYERS
    assert len({(x["bits"], x["group_size"]) for x in layers.values()}) > 1, "one scheme for all"
    qs = quantized_linears(out)
    assert set(qs) == set(layers)
    for name, q in qs.items():
        assert q.bits == layers[name]["bits"], name
        assert q.group_size == layers[name]["group_size"], name
        assert q.nbytes == layers[name]["bytes"], name
    manifest = json.loads((out / "lowbit_manifest.json").read_text())
    assert manifest["allocation"]["layers"] == alloc["layers"]

    ids = np.load(tiny / "ids.npy").reshape(-1)[:40].tolist()
    assert np.isfinite(lowbit.Model.load(out).logits(ids)).all()


def test_packed_mixed_model_equals_its_dense_twin(tiny: Path, tmp_path: Path) -> None:
    # Loaded packed, every layer with its own scheme, it computes what its dequantized weights
    # compute as a dense f32 model (the embedding kept as loaded in both), window by window in
    # the evaluation protocol's f32 activations.
    out = tmp_path / "q"
    mixed(tiny, out, method="gptq", target_bpw=3.5, embed="keep")
    dense = tmp_path / "dense"
    shutil.copytree(tiny, dense)
    tensors = load_file(dense / "model.safetensors")
    for name, q in quantized_linears(out).items():
        tensors[name] = q.dequantize()
    write_safetensors(dense / "model.safetensors", tensors)
    ids = np.load(tiny / "ids.npy").reshape(-1)[:64].tolist()
    packed, ref = (lowbit.Model.load(d).perplexity(ids=ids, window=16) for d in (out, dense))
    assert packed.windows == 4
    np.testing.assert_allclose(packed.window_nll, ref.window_nll, rtol=1e-5)
    # And not the unquantized model's: the comparison can tell them apart.
    original = lowbit.Model.load(tiny).perplexity(ids=ids, window=16)
    assert not np.allclose(original.window_nll, ref.window_nll, rtol=1e-5)


def test_more_budget_predicts_less_error(tiny: Path, tmp_path: Path) -> None:
    lo = mixed(tiny, tmp_path / "lo", target_bpw=2.8).to_dict()["allocation"]
    hi = mixed(tiny, tmp_path / "hi", target_bpw=4.5).to_dict()["allocation"]
    assert hi["predicted_error"] < lo["predicted_error"]
    assert sum(x["bits"] for x in hi["layers"]) > sum(x["bits"] for x in lo["layers"])


def test_max_size_bounds_every_byte_of_the_directory(tiny: Path, tmp_path: Path) -> None:
    uniform = mixed(tiny, tmp_path / "w4", bits=4)
    limit = uniform.out_bytes + 90_000  # the margin max_size holds for headers and manifest rows
    report = mixed(tiny, tmp_path / "m", max_size=limit)
    assert report.out_bytes <= limit
    assert report.to_dict()["allocation"]["max_size"] == limit


def test_cli_prints_and_records_the_allocation(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, js = tmp_path / "cli", tmp_path / "r.json"
    args = ["quantize", str(tiny), "-o", str(out), "--calib", str(tiny / "ids.npy"), "--nsamples", "8"]
    assert main([*args, "--seqlen", "16", "--target-bpw", "3.5", "--json", str(js), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "mixed precision" in printed
    assert "target 3.5 bits per weight" in printed
    assert "allocation (bits/group: layers)" in printed
    r = json.loads(js.read_text())
    assert r["allocation"]["target_bpw"] == 3.5
    assert len(r["allocation"]["layers"]) == 7 * LAYERS
    assert r["bits_per_weight"] <= 3.5


def test_cli_sizes() -> None:
    assert byte_size("70MB") == 70_000_000
    assert byte_size("64MiB") == 64 * 2**20
    assert byte_size("1.5kb") == 1500
    assert byte_size("12345") == 12345
    for bad in ("70XB", "-1MB", "MB", "0"):
        with pytest.raises(Exception, match="size"):
            byte_size(bad)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"target_bpw": 1.0}, ValueError, "below the smallest allocation"),
        ({"target_bpw": 12.0}, ValueError, "above the largest allocation"),
        ({"target_bpw": math.nan}, ValueError, "target_bpw must be a positive number"),
        ({"target_bpw": -3.0}, ValueError, "target_bpw must be a positive number"),
        ({"target_bpw": 3.5, "max_size": 10**6}, ValueError, "not both"),
        ({"max_size": 1000}, ValueError, "leaves nothing for the block linears"),
        ({"method": "awq", "target_bpw": 3.5}, ValueError, "applies to rtn, gptq, not awq"),
        ({"target_bpw": "3.5"}, TypeError, "expected float"),
    ],
)
def test_bad_budgets_are_refused(
    tiny: Path, tmp_path: Path, options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        mixed(tiny, tmp_path / "bad", **options)
    assert not (tmp_path / "bad").exists()


def test_cli_bad_budgets_exit_with_one_line(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["quantize", str(tiny), "-o", str(tmp_path / "x"), "--calib", str(tiny / "ids.npy"), "-q"]
    assert main([*base, "--target-bpw", "3.5", "--max-size", "1MB"]) == 1
    assert "not both" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main([*base, "--max-size", "70XB"])
    assert e.value.code == 2


def test_exports_handle_or_refuse_a_mixed_model(tiny: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    shutil.copytree(tiny, src)
    write_tokenizer(src)
    out = tmp_path / "q"
    mixed(src, out, target_bpw=3.5)
    # GGUF picks a block type per tensor: every layer gets one, and llama.cpp's reader loads it.
    gguf = tmp_path / "m.gguf"
    lowbit.export(out, gguf, format="gguf")
    ids = np.load(tiny / "ids.npy").reshape(-1)[:24].tolist()
    # The 2- and 3-bit layers become K-quants, which lowbit runs as f32 (and says so).
    with pytest.warns(LoadWarning, match="dequantized to f32"):
        model = lowbit.Model.load(gguf)
    assert np.isfinite(model.logits(ids)).all()
    # The HF formats hold one bit width and group size in their config: a clear refusal.
    for fmt in ("gptq", "awq", "compressed-tensors"):
        with pytest.raises(ValueError, match="one bit width and group size"):
            lowbit.export(out, tmp_path / fmt, format=fmt)
        assert not (tmp_path / fmt).exists()
