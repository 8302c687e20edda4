"""``lowbit convert`` / ``lowbit.convert``: lossless pairs both ways, lossy conversions refused
before writing unless allowed, report figures checked against the gguf package; GGUF import's
load warnings reach Python as ``LoadWarning``."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf import GGUFReader

import lowbit
from lowbit.cli import main
from test_export_gguf import gguf_weights, hf_name, lowbit_weights, tiny


def quantized(src: Path, out: Path, **options: Any) -> Path:
    lowbit.quantize_model(src, out, method="rtn", calib=src / "ids.npy", nsamples=2, seqlen=16, **options)
    return out


def tensor_bytes(path: Path) -> dict[str, bytes]:
    return {t.name: bytes(np.asarray(t.data).tobytes()) for t in GGUFReader(path).tensors}


def test_q4_0_gguf_and_lowbit_int4_g32_convert_both_ways_exactly(tmp_path: Path) -> None:
    src = tiny(tmp_path / "src", 64, 96)
    q = quantized(src, tmp_path / "q", bits=4, group_size=32, sym=True, embed="int8")
    to_gguf = lowbit.convert(q, tmp_path / "a.gguf", format="gguf")
    assert all(t.path == "exact" and t.max_abs_diff == 0 for t in to_gguf.tensors)
    assert {t.type for t in to_gguf.tensors if t.name.startswith("blk.") and "norm" not in t.name} == {"Q4_0"}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Q4_0 runs packed: no load warning
        back = lowbit.convert(tmp_path / "a.gguf", tmp_path / "back", format="lowbit")
    assert all(t.max_abs_diff == 0 for t in back.tensors), back.tensors
    # Q4_0 blocks come back as int4 g32; the Q8_0 embedding (lowbit's int8 per channel) as int8 g32.
    assert {t.type for t in back.tensors} == {"int4 g32 sym f16", "int8 g32 sym f16"}
    a, b = lowbit_weights(q), lowbit_weights(tmp_path / "back")
    assert set(a) == set(b)
    for name in a:
        assert np.array_equal(a[name], b[name]), name
    lowbit.convert(tmp_path / "back", tmp_path / "again.gguf", format="gguf")
    assert tensor_bytes(tmp_path / "a.gguf") == tensor_bytes(tmp_path / "again.gguf")


def test_hf_formats_convert_into_each_other_exactly(tmp_path: Path) -> None:
    # lowbit -> GPTQ -> AWQ -> compressed-tensors -> lowbit: every hop exact, same weights at the end.
    src = tiny(tmp_path / "src", 64, 96)
    q = quantized(src, tmp_path / "q", bits=4, group_size=32, sym=True, embed="f32")
    path = q
    for fmt in ["gptq", "awq", "compressed-tensors", "lowbit"]:
        nxt = tmp_path / fmt
        report = lowbit.convert(path, nxt, format=fmt)
        assert all(t.path == "exact" and t.max_abs_diff == 0 for t in report.tensors), (fmt, report.tensors)
        path = nxt
    a, b = lowbit_weights(q), lowbit_weights(path)
    assert set(a) == set(b)
    for name in a:
        assert np.array_equal(a[name], b[name]), name


def test_lossy_conversion_refused_unless_allowed_and_its_report_is_measured(tmp_path: Path) -> None:
    src = tiny(tmp_path / "src", 64, 64)
    q = quantized(src, tmp_path / "q", bits=4, group_size=32, sym=False)
    out = tmp_path / "m.gguf"
    with pytest.raises(
        lowbit.UnsupportedError, match=r"lossy for 14 tensors: blk\.0\.attn_q\.weight .*min-rounded"
    ):
        lowbit.convert(q, out, format="gguf")
    assert not out.exists()
    report = lowbit.convert(q, out, format="gguf", allow_requantize=True)
    ours, theirs = lowbit_weights(q), gguf_weights(out)
    for t in report.tensors:
        measured = float(np.max(np.abs(theirs[hf_name(t.name)] - ours[hf_name(t.name)])))
        assert measured == t.max_abs_diff, t
    assert sum(t.max_abs_diff > 0 for t in report.tensors) == 14
    # Requantizing to a GGUF type is lossy too, so refused without the flag.
    with pytest.raises(lowbit.UnsupportedError, match="Q8_0, requantized"):
        lowbit.convert(src, tmp_path / "d.gguf", format="gguf", gguf_type="q8_0")
    with pytest.raises(
        lowbit.UnsupportedError, match='convert format "onnx": lowbit converts to lowbit, gguf, gptq'
    ):
        lowbit.convert(src, tmp_path / "x", format="onnx")


def test_cli_convert_prints_the_table_and_refuses_lossy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tiny(tmp_path / "src", 32, 64)
    assert (
        main(["convert", str(src), str(tmp_path / "d.gguf"), "--format", "gguf", "--gguf-type", "q4_0"]) == 1
    )
    err = capsys.readouterr().err
    assert err.startswith("lowbit: error: converting to gguf is lossy for 15 tensors")
    assert "--allow-requantize" in err
    assert not (tmp_path / "d.gguf").exists()
    args = ["convert", str(src), str(tmp_path / "d.gguf"), "--format", "gguf", "--gguf-type", "q4_0"]
    assert main([*args, "--allow-requantize"]) == 0
    out = capsys.readouterr().out
    assert "blk.0.attn_q.weight" in out
    assert "Q4_0" in out
    assert "requantized" in out
    assert "15 tensors changed" in out.splitlines()[-1]
    assert main(["convert", str(tmp_path / "d.gguf"), str(tmp_path / "lb"), "--format", "lowbit"]) == 0
    assert "int4 g32 sym f16" in capsys.readouterr().out


def test_dequantized_gguf_types_warn_once(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tiny(tmp_path / "src", 32, 64)
    lowbit.convert(src, tmp_path / "q5.gguf", format="gguf", gguf_type="Q5_0", allow_requantize=True)
    with pytest.warns(lowbit.LoadWarning, match=r"15 tensors dequantized to f32 \(Q5_0 x15\)") as caught:
        model = lowbit.Model.load(tmp_path / "q5.gguf")
    assert len(caught) == 1
    assert model.load_warnings == [str(caught[0].message)]
    text = tmp_path / "t.txt"
    text.write_text("a b ab " * 40)
    assert (
        main(
            ["eval", str(tmp_path / "q5.gguf"), "--text", str(text), "--window", "16", "--windows", "1", "-q"]
        )
        == 0
    )
    err = capsys.readouterr().err
    assert err.count("lowbit: warning:") == 1
    assert "Q5_0 x15" in err


def test_smollm2_gguf_warns_about_its_q4_1_blocks() -> None:
    from conftest import smollm2_gguf

    with pytest.warns(lowbit.LoadWarning, match=r"210 tensors dequantized to f32 \(Q4_1 x210\)"):
        model = lowbit.Model.load(smollm2_gguf())
    assert len(model.load_warnings) == 1
