"""AWQ GEMM and compressed-tensors ``pack-quantized`` export and import, proven by independent
readers: numpy readers written here from INTEROP.md sections 2 and 3 (AWQ: nibbles of
``qweight [in, out/8]`` and ``qzeros`` interleaved ``[0,2,4,6,1,3,5,7]`` along the outputs, zeros
unchanged; compressed-tensors: ``weight_packed [out, ceil(in/p)]`` LSB first with the signed
codes offset by ``2^(b-1)``, ``weight_scale [out, G]``, ``weight_zero_point`` packed along dim 0)
agree exactly with lowbit's dequantized weights; lowbit -> format -> lowbit is bit-exact; what
lowbit cannot hold is dequantized with a warning; lying and truncated files are refused. The
transformers check is benches/interop/transformers_check.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file, save_file

import lowbit
from conftest import smollm2_gguf
from lowbit.cli import main
from test_export_gguf import lowbit_weights, tiny
from test_export_gptq import quant_tensors, quantize, same_nll

AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]


def awq_unpack(words: np.ndarray) -> np.ndarray:
    """``[rows, cols/8]`` int32 -> ``[rows, cols]``: nibble ``k`` of word ``c`` is ``8c + ORDER[k]``."""
    nib = (words.astype(np.uint32)[..., None] >> (4 * np.arange(8, dtype=np.uint32))) & np.uint32(15)
    out = np.empty_like(nib)
    out[..., AWQ_ORDER] = nib
    return out.reshape(words.shape[0], -1)


def read_awq(d: Path) -> dict[str, np.ndarray]:
    """Every tensor of an AWQ GEMM directory as an AWQ reader sees it, by HF name, in f32."""
    qc = json.loads((d / "config.json").read_text())["quantization_config"]
    assert (qc["quant_method"], qc["version"], qc["bits"]) == ("awq", "gemm", 4)
    assert qc["zero_point"] is True
    t = load_file(d / "model.safetensors")
    out: dict[str, np.ndarray] = {}
    for name, arr in t.items():
        if name.endswith((".qzeros", ".scales")):
            continue
        if not name.endswith(".qweight"):
            out[name] = arr.astype(np.float32)
            continue
        m = name[: -len(".qweight")]
        assert arr.dtype == t[m + ".qzeros"].dtype == np.int32
        assert t[m + ".scales"].dtype == np.float16
        q = awq_unpack(arr).astype(np.float32)  # [in, out]
        z = awq_unpack(t[m + ".qzeros"]).astype(np.float32)  # [G, out]
        s = t[m + ".scales"].astype(np.float32)
        gs = q.shape[0] // s.shape[0]
        g = np.arange(q.shape[0]) // gs
        out[m + ".weight"] = np.ascontiguousarray(((q - z[g]) * s[g]).T)
    return out


def ct_unpack(words: np.ndarray, bits: int, cols: int) -> np.ndarray:
    """``[rows, ceil(cols/p)]`` int32 -> signed ``[rows, cols]``: LSB first, minus the offset."""
    shifts = np.arange(0, 32, bits, dtype=np.uint32)
    u = (words.astype(np.uint32)[..., None] >> shifts) & np.uint32((1 << bits) - 1)
    return u.reshape(words.shape[0], -1)[:, :cols].astype(np.int64) - (1 << (bits - 1))


def read_ct(d: Path) -> dict[str, np.ndarray]:
    """Every tensor of a compressed-tensors pack-quantized directory as its reader sees it."""
    qc = json.loads((d / "config.json").read_text())["quantization_config"]
    assert (qc["quant_method"], qc["format"]) == ("compressed-tensors", "pack-quantized")
    w = qc["config_groups"]["group_0"]["weights"]
    bits, sym = w["num_bits"], w["symmetric"]
    t = load_file(d / "model.safetensors")
    out: dict[str, np.ndarray] = {}
    for name, arr in t.items():
        if name.endswith((".weight_scale", ".weight_zero_point", ".weight_shape")):
            continue
        if not name.endswith(".weight_packed"):
            out[name] = arr.astype(np.float32)
            continue
        m = name[: -len(".weight_packed")]
        n_out, n_in = (int(x) for x in t[m + ".weight_shape"])
        assert t[m + ".weight_shape"].dtype == np.int64
        assert arr.dtype == np.int32
        q = ct_unpack(arr, bits, n_in).astype(np.float32)  # [out, in], signed
        s = t[m + ".weight_scale"].astype(np.float32)  # [out, G]
        if sym:
            assert m + ".weight_zero_point" not in t
            zp = np.zeros_like(s)
        else:
            zw = t[m + ".weight_zero_point"]  # [ceil(out/p), G], packed along dim 0
            zp = ct_unpack(np.ascontiguousarray(zw.T), bits, n_out).T.astype(np.float32)
        gs = w["group_size"] or n_in
        g = np.arange(n_in) // gs
        out[m + ".weight"] = (q - zp[:, g]) * s[:, g]
    return out


READERS = {"awq": read_awq, "compressed-tensors": read_ct}


def check_round_trip(q: Path, work: Path, fmt: str) -> lowbit.ExportReport:
    d = work / fmt
    report = lowbit.export(q, d, format=fmt)
    ours = lowbit_weights(q)
    theirs = READERS[fmt](d)
    assert set(theirs) == set(ours)
    for name in ours:
        assert np.array_equal(theirs[name], ours[name]), name
    assert all(t.path == "exact" and t.max_abs_diff == 0 for t in report.tensors)
    back = work / f"back-{fmt}"
    lowbit.Model.load(d).save(back)
    before, after = quant_tensors(q), quant_tensors(back)
    linears = {n for n in before if n.startswith("model.layers.")}
    assert linears <= set(after)
    for n in linears:
        a, b = before[n], after[n]
        assert a.bits == b.bits, n
        assert (a.group_size or a.shape[1]) == (b.group_size or b.shape[1]), n
        assert np.array_equal(a.packed, b.packed), n
        assert np.array_equal(a.scales, b.scales), n
        if a.symmetric == b.symmetric:
            assert (a.zeros is None and b.zeros is None) or np.array_equal(a.zeros, b.zeros), n
        else:  # an asymmetric tensor whose zeros all happen to be 2^(b-1) comes back symmetric
            assert not a.symmetric, n
            assert (a.zeros == 1 << (a.bits - 1)).all(), n
    assert same_nll(q, d, list(range(1, 40)), 20)
    return report


@settings(max_examples=16, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    fmt_bits=st.sampled_from(
        [("awq", 4), ("compressed-tensors", 2), ("compressed-tensors", 4), ("compressed-tensors", 8)]
    ),
    sym=st.booleans(),
    group=st.sampled_from([16, 32, 64, "channel"]),
    hidden=st.sampled_from([32, 64, 96]),
    ffn=st.sampled_from([32, 64, 96, 128]),
    embed=st.sampled_from(["int8", "f16", "keep"]),
)
def test_round_trip_bit_exact(
    tmp_path_factory: pytest.TempPathFactory, fmt_bits: tuple[str, int], sym: bool, group: int | str,
    hidden: int, ffn: int, embed: str,
) -> None:  # fmt: skip
    fmt, bits = fmt_bits
    if isinstance(group, int) and (hidden % group or ffn % group):
        group = 32 if hidden % 32 == 0 and ffn % 32 == 0 else 16
    work = tmp_path_factory.mktemp("rt")
    src = tiny(work / "src", hidden, ffn)
    q = quantize(src, work / "q", bits=bits, group_size=group, sym=sym, embed=embed)
    report = check_round_trip(q, work, fmt)
    qc = json.loads((work / fmt / "config.json").read_text())["quantization_config"]
    gs = -1 if group == "channel" else group
    t = load_file(work / fmt / "model.safetensors")
    if fmt == "awq":
        assert report.checkpoint_format == "gemm"
        assert qc["group_size"] == gs
        # Symmetric models store their zero point 8 explicitly: every qzeros word 0x88888888.
        if sym:
            assert (t["model.layers.1.mlp.down_proj.qzeros"].view(np.uint32) == 0x88888888).all()
    else:
        assert report.checkpoint_format == "pack-quantized"
        w = qc["config_groups"]["group_0"]["weights"]
        assert (w["num_bits"], w["symmetric"]) == (bits, sym)
        assert w["strategy"] == ("channel" if group == "channel" else "group")
        assert w["group_size"] == (None if group == "channel" else group)
        assert ("model.layers.0.mlp.up_proj.weight_zero_point" in t) == (not sym)
    emb = next(r for r in report.tensors if r.name == "model.embed_tokens.weight")
    assert emb.type == {"int8": "F32", "f16": "F16", "keep": "F32"}[embed]


@pytest.mark.parametrize("fmt", ["awq", "compressed-tensors"])
def test_cli_and_generate(tmp_path: Path, capsys: pytest.CaptureFixture[str], fmt: str) -> None:
    q = quantize(tiny(tmp_path / "src", 32, 64), tmp_path / "q", bits=4, group_size=32, sym=False)
    assert main(["export", str(q), "-o", str(tmp_path / "x"), "--format", fmt]) == 0
    out = capsys.readouterr().out
    assert "model.layers.1.mlp.down_proj" in out
    assert ("awq int4 g32" if fmt == "awq" else "pack-quantized int4 g32 asym") in out
    # Re-export from the import, generate from it, and re-quantize it (dense through the pipeline).
    assert main(["export", str(tmp_path / "x"), "-o", str(tmp_path / "x2"), "--format", fmt]) == 0
    assert lowbit_weights(q).keys() == READERS[fmt](tmp_path / "x2").keys()
    m = lowbit.Model.load(tmp_path / "x")
    assert len(m.generate("ab", max_new_tokens=3, temperature=0.0).text) >= 0
    lowbit.quantize_model(tmp_path / "x", tmp_path / "rq", method="rtn", bits=8, calib=list(range(1, 33)),
                          nsamples=1, seqlen=16)  # fmt: skip
    assert lowbit.Model.load(tmp_path / "rq").config["num_hidden_layers"] == 2


def test_refusals_leave_nothing(tmp_path: Path) -> None:
    src = tiny(tmp_path / "src", 96, 64)
    out = tmp_path / "out"
    with pytest.raises(lowbit.UnsupportedError, match=r"AWQ.*not quantized"):
        lowbit.export(src, out, format="awq")
    q8 = quantize(src, tmp_path / "q8", bits=8, group_size=32, sym=True)
    with pytest.raises(
        lowbit.UnsupportedError, match="8-bit codes: AWQ's GEMM layout holds 4-bit codes only"
    ):
        lowbit.export(q8, out, format="awq")
    q64 = quantize(src, tmp_path / "q64", bits=4, group_size=64, sym=True)
    for fmt, who in [("awq", "AutoAWQ"), ("compressed-tensors", "vLLM")]:
        want = rf"in_features 96 is not a multiple of group size 64: {who}.*or 32"
        with pytest.raises(lowbit.UnsupportedError, match=want):
            lowbit.export(q64, out, format=fmt)
    q3 = quantize(src, tmp_path / "q3", bits=3, group_size=32, sym=True)
    with pytest.raises(lowbit.UnsupportedError, match="3-bit"):
        lowbit.export(q3, out, format="compressed-tensors")
    qf = quantize(src, tmp_path / "qf32", bits=4, group_size=32, sym=True, scale_dtype="f32")
    with pytest.raises(lowbit.UnsupportedError, match="not an f16 value"):
        lowbit.export(qf, out, format="awq")
    with pytest.raises(lowbit.UnsupportedError, match="GGUF"):
        lowbit.export(qf, out, format="compressed-tensors", dense_type="Q8_0")
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


# --- import: what lowbit cannot hold, and bad files -----------------------------------------


@pytest.fixture
def awq_dir(tmp_path: Path) -> Path:
    q = quantize(tiny(tmp_path / "src", 64, 128), tmp_path / "q", bits=4, group_size=32, sym=False)
    lowbit.export(q, tmp_path / "awq", format="awq")
    return tmp_path / "awq"


@pytest.fixture
def ct_dir(tmp_path: Path) -> Path:
    q = quantize(tiny(tmp_path / "src", 64, 128), tmp_path / "q", bits=4, group_size=32, sym=False)
    lowbit.export(q, tmp_path / "ct", format="compressed-tensors")
    return tmp_path / "ct"


def edit_tensors(d: Path, fn: Any) -> None:
    t = load_file(d / "model.safetensors")
    fn(t)
    save_file(t, d / "model.safetensors", metadata={"format": "pt"})


def edit_config(d: Path, fn: Any) -> None:
    cfg = json.loads((d / "config.json").read_text())
    fn(cfg["quantization_config"])
    (d / "config.json").write_text(json.dumps(cfg))


def loaded_weights(d: Path, tmp: Path) -> dict[str, np.ndarray]:
    out = tmp / f"saved-{d.name}"
    lowbit.Model.load(d).save(out)
    return lowbit_weights(out)


UP = "model.layers.0.mlp.up_proj"


def with_part(part: str, fn: Any) -> Any:
    """An edit replacing the up projection's ``part`` by ``fn(part)``."""
    return lambda t: t.update({f"{UP}.{part}": fn(t[f"{UP}.{part}"])})


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (with_part("scales", lambda a: a[:1]), r"up_proj\.scales: shape \[1, 128\], expected \[2, 128\]"),
        (with_part("qzeros", lambda a: a[:, :3]), r"up_proj\.qzeros: shape \[2, 3\], expected \[2, 16\]"),
        (with_part("qweight", lambda a: a.astype(np.float32)), r"up_proj\.qweight: dtype F32"),
        (with_part("qzeros", lambda a: a.astype(np.int64)), r"up_proj\.qzeros: dtype I64"),
        (with_part("scales", lambda a: a.astype(np.int16)), r"up_proj\.scales: dtype I16"),
        (lambda t: t.pop("model.layers.1.self_attn.o_proj.scales"), r"o_proj\.scales: missing"),
        (
            with_part("qweight", lambda a: a[:40]),
            r"qweight: in_features 40 is not a multiple of group_size 32",
        ),
    ],
)
def test_awq_lying_tensors_are_refused(awq_dir: Path, edit: Any, match: str) -> None:
    edit_tensors(awq_dir, edit)
    with pytest.raises(lowbit.CorruptFileError, match="AWQ checkpoint .*" + match):
        lowbit.Model.load(awq_dir)


def test_awq_bad_configs_and_truncation(awq_dir: Path) -> None:
    for key, value, error, match in [
        ("version", "gemv_fast", lowbit.UnsupportedError, "gemv_fast"),
        ("bits", 8, lowbit.UnsupportedError, "8-bit checkpoints"),
        ("bits", 5, lowbit.CorruptFileError, "quantization_config.bits"),
        ("zero_point", False, lowbit.UnsupportedError, "zero_point: false"),
        ("group_size", 0, lowbit.CorruptFileError, "quantization_config.group_size"),
        ("group_size", 64, lowbit.CorruptFileError, r"scales: shape \[2, \d+\], expected \[1, \d+\]"),
    ]:
        edit_config(
            awq_dir, lambda qc, k=key, v=value: qc.update({k: v, **({} if k == "bits" else {"bits": 4})})
        )
        with pytest.raises(error, match=match):
            lowbit.Model.load(awq_dir)
        edit_config(awq_dir, lambda qc: qc.update(version="gemm", bits=4, zero_point=True, group_size=32))
    # vLLM's key names are read too.
    edit_config(awq_dir, lambda qc: qc.update(w_bit=qc.pop("bits"), q_group_size=qc.pop("group_size")))
    lowbit.Model.load(awq_dir)
    st_file = awq_dir / "model.safetensors"
    st_file.write_bytes(st_file.read_bytes()[:-100])
    with pytest.raises(lowbit.CorruptFileError):
        lowbit.Model.load(awq_dir)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (
            with_part("weight_scale", lambda a: a[:, :1]),
            r"weight_scale: shape \[128, 1\], expected \[128, 2\]",
        ),
        (
            with_part("weight_shape", lambda _: np.array([128, 40], np.int64)),
            r"weight_shape: \[128, 40\] disagrees with weight_packed \[128, 8\]",
        ),
        (with_part("weight_shape", lambda a: a.astype(np.float32)), r"weight_shape: dtype F32"),
        (lambda t: t.pop(UP + ".weight_shape"), r"weight_shape: missing"),
        (
            lambda t: t.pop(UP + ".weight_zero_point"),
            r"weight_zero_point: missing \(the config says asymmetric\)",
        ),
        (with_part("weight_zero_point", lambda a: a[:3]), r"weight_zero_point: I32 shape \[3, 2\]"),
        (with_part("weight_packed", lambda a: a.view(np.float32)), r"weight_packed: dtype F32"),
        (lambda t: t.update({UP + ".weight_g_idx": np.full(64, 5, np.int32)}), r"group 5 outside 0\.\.2"),
        (
            with_part("weight_zero_point", lambda _: np.full((128, 2), 9, np.int8)),
            r"zero point 9 outside the 4-bit range",
        ),
    ],
)
def test_ct_lying_tensors_are_refused(ct_dir: Path, edit: Any, match: str) -> None:
    edit_tensors(ct_dir, edit)
    with pytest.raises(lowbit.CorruptFileError, match="compressed-tensors checkpoint .*" + match):
        lowbit.Model.load(ct_dir)


def test_ct_bad_configs(ct_dir: Path) -> None:
    def weights(**kw: Any) -> Any:
        return lambda qc: qc["config_groups"]["group_0"]["weights"].update(kw)

    for edit, error, match in [
        # 8 bits over 4-bit words: the packed width disagrees with weight_shape.
        (
            weights(num_bits=8),
            lowbit.CorruptFileError,
            r"weight_shape: \[\d+, \d+\] disagrees with weight_packed",
        ),
        (weights(num_bits=3), lowbit.UnsupportedError, "3-bit weights"),
        (weights(num_bits=4, type="float"), lowbit.UnsupportedError, "type Some"),
        (weights(type="int", strategy="token"), lowbit.UnsupportedError, "strategy"),
        (weights(strategy="group", group_size=None), lowbit.CorruptFileError, "group_size"),
        (
            weights(group_size=64),
            lowbit.CorruptFileError,
            r"weight_scale: shape \[\d+, 2\], expected \[\d+, 1\]",
        ),
        (
            lambda qc: qc["config_groups"]["group_0"].update(format="marlin-24"),
            lowbit.UnsupportedError,
            "marlin-24",
        ),
        (
            lambda qc: qc.update(sparsity_config={"format": "sparse-24-bitmask"}),
            lowbit.UnsupportedError,
            "sparse-24",
        ),
    ]:
        edit_config(ct_dir, edit)
        with pytest.raises(error, match=match):
            lowbit.Model.load(ct_dir)
        edit_config(ct_dir, lambda qc: qc.update(sparsity_config={}))
        edit_config(ct_dir, lambda qc: qc["config_groups"]["group_0"].update(format="pack-quantized"))
        edit_config(ct_dir, weights(num_bits=4, type="int", strategy="group", group_size=32))
    lowbit.Model.load(ct_dir)


def test_ct_unpacked_int8_zero_points_are_exact(ct_dir: Path, tmp_path: Path) -> None:
    """Older compressed-tensors wrote the zero point unpacked, int8 ``[out, G]``."""
    before = read_ct(ct_dir)

    def unpack_zp(t: dict[str, np.ndarray]) -> None:
        for n in [n for n in t if n.endswith(".weight_zero_point")]:
            n_out = int(t[n.replace("weight_zero_point", "weight_shape")][0])
            t[n] = ct_unpack(np.ascontiguousarray(t[n].T), 4, n_out).T.astype(np.int8).copy()

    edit_tensors(ct_dir, unpack_zp)
    w = loaded_weights(ct_dir, tmp_path)
    assert all(np.array_equal(w[n], before[n]) for n in before)
    assert isinstance(quant_tensors(tmp_path / "saved-ct")[UP + ".weight"], lowbit.QTensor)


def test_ct_what_lowbit_cannot_hold_is_dequantized_with_a_warning(ct_dir: Path, tmp_path: Path) -> None:
    """Float zero points that are not integers, and act-order groups, are dequantized as the
    compressed-tensors reader does (``(q - zp) * s`` with the group ``g_idx[i]``)."""
    t = load_file(ct_dir / "model.safetensors")
    s = t[UP + ".weight_scale"].astype(np.float32)
    q = ct_unpack(t[UP + ".weight_packed"], 4, 64).astype(np.float32)
    zp = ct_unpack(np.ascontiguousarray(t[UP + ".weight_zero_point"].T), 4, 128).T.astype(np.float32) + 0.5
    perm = np.random.default_rng(0).permutation(64)
    g_idx = (np.argsort(perm) // 32).astype(np.int32)

    def edit(t: dict[str, np.ndarray]) -> None:
        t[UP + ".weight_zero_point"] = np.ascontiguousarray(zp, np.float32)  # .T made it Fortran-ordered
        k = "model.layers.0.self_attn.k_proj"
        t[k + ".weight_g_idx"] = g_idx

    edit_tensors(ct_dir, edit)
    with pytest.warns(lowbit.LoadWarning) as caught:
        w = loaded_weights(ct_dir, tmp_path)
    err = "\n".join(str(c.message) for c in caught)
    assert f"compressed-tensors {UP}: its zero points are not integers" in err
    assert "compressed-tensors model.layers.0.self_attn.k_proj: weight_g_idx is not i / group_size" in err
    assert "dequantized to f32" in err
    want = (q - zp[:, np.arange(64) // 32]) * s[:, np.arange(64) // 32]
    assert np.array_equal(w[UP + ".weight"], want)
    assert not isinstance(quant_tensors(tmp_path / "saved-ct").get(UP + ".weight"), lowbit.QTensor)


def test_smollm2_w4_g64(tmp_path: Path) -> None:
    """RTN W4 g64 SmolLM2 (symmetric for compressed-tensors, asymmetric for AWQ): exact exports,
    the Marlin constraint reported, the same perplexity back in lowbit; group 128 is refused
    (576 % 128) with the suggestion."""
    ref = smollm2_gguf()
    ids = list(range(64))
    for sym, fmt in [(False, "awq"), (True, "compressed-tensors")]:
        q = tmp_path / f"q{sym}"
        lowbit.quantize_model(
            ref, q, method="rtn", bits=4, group_size=64, sym=sym, calib=ids, nsamples=1, seqlen=64
        )
        report = lowbit.export(q, tmp_path / fmt, format=fmt)
        assert all(t.path == "exact" and t.max_abs_diff == 0 for t in report.tensors)
        assert any("in_features 576 is not a multiple of 128" in n for n in report.notes)
        text = lowbit.Model.load(q).encode("The quick brown fox jumps over the lazy dog. " * 6)
        assert same_nll(q, tmp_path / fmt, text, 32)
    q128 = tmp_path / "q128"
    lowbit.quantize_model(
        ref, q128, method="rtn", bits=4, group_size=128, sym=True, calib=ids, nsamples=1, seqlen=64
    )
    for fmt in ["awq", "compressed-tensors"]:
        with pytest.raises(
            lowbit.UnsupportedError, match=r"576 is not a multiple of group size 128.*--group-size 64 or 32"
        ):
            lowbit.export(q128, tmp_path / f"{fmt}128", format=fmt)
