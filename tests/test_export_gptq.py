"""HF GPTQ export and import, proven by an independent reader: a numpy GPTQ reader written
here from INTEROP.md section 1 (unpack qweight along inputs and qzeros along outputs, LSB first,
add 1 to v1 zeros, ``W[n, i] = scales[g, n] * (q - z)`` with ``g = g_idx[i]``) agrees exactly
with lowbit's dequantized weights; lowbit -> GPTQ -> lowbit is bit-exact; mislabelled v1/v2
checkpoints are detected from the stored zeros; truncated and lying files are refused. The
transformers check is benches/interop/transformers_check.py."""

from __future__ import annotations

import contextlib
import json
import os
import stat
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


def unpack_words(words: np.ndarray, bits: int) -> np.ndarray:
    """int32 words -> codes, LSB first, the codes of word ``j`` at ``j * 32/bits + k`` along the
    last axis for qzeros; qweight unpacks along axis 0 (see ``read_gptq``)."""
    u = words.astype(np.uint32)
    shifts = np.arange(0, 32, bits, dtype=np.uint32)
    return (u[..., None] >> shifts) & np.uint32((1 << bits) - 1)


def read_gptq(d: Path) -> dict[str, np.ndarray]:
    """Every tensor of a GPTQ directory as a GPTQ reader sees it, by HF name, in f32."""
    qc = json.loads((d / "config.json").read_text())["quantization_config"]
    bits, v1 = qc["bits"], qc.get("checkpoint_format", "gptq") == "gptq"
    t = load_file(d / "model.safetensors")
    out: dict[str, np.ndarray] = {}
    for name, arr in t.items():
        if name.endswith((".qzeros", ".scales", ".g_idx")):
            continue
        if not name.endswith(".qweight"):
            out[name] = arr.astype(np.float32)
            continue
        m = name[: -len(".qweight")]
        assert arr.dtype == t[m + ".qzeros"].dtype == np.int32
        assert t[m + ".scales"].dtype == np.float16
        # qweight [in/p, out]: word r of column n holds inputs r*p .. r*p+p-1.
        q = unpack_words(arr, bits).transpose(0, 2, 1).reshape(-1, arr.shape[1])  # [in, out]
        z = unpack_words(t[m + ".qzeros"], bits).reshape(t[m + ".qzeros"].shape[0], -1)  # [G, out]
        if v1:
            z = z + 1
        s = t[m + ".scales"].astype(np.float32)
        g = t[m + ".g_idx"]
        w = (q.astype(np.float32) - z[g].astype(np.float32)) * s[g]  # [in, out]
        out[m + ".weight"] = np.ascontiguousarray(w.T)
    return out


def quantize(src: Path, q: Path, **options: Any) -> Path:
    lowbit.quantize_model(src, q, method="rtn", calib=src / "ids.npy", nsamples=2, seqlen=16, **options)
    return q


def quant_tensors(d: Path) -> dict[str, lowbit.QTensor]:
    out: dict[str, lowbit.QTensor] = {}
    for f in sorted(d.glob("*.safetensors")):
        with contextlib.suppress(lowbit.CorruptFileError):  # the dense shard is plain safetensors
            out.update(lowbit.load_tensors(f))
    return out


def same_nll(a: Path, b: Path, ids: list[int], window: int) -> bool:
    """Both models give bitwise the same per-window NLL (and so perplexity)."""
    p1, p2 = (lowbit.Model.load(m).perplexity(ids=ids, window=window, windows=None) for m in (a, b))
    return p1.window_nll == p2.window_nll and p1.perplexity == p2.perplexity and p1.windows > 0


def check_round_trip(q: Path, work: Path) -> lowbit.ExportReport:
    g = work / "gptq"
    report = lowbit.export(q, g, format="gptq")
    ours = lowbit_weights(q)
    theirs = read_gptq(g)
    assert set(theirs) == set(ours)
    for name in ours:
        assert np.array_equal(theirs[name], ours[name]), name
    assert all(t.path == "exact" and t.max_abs_diff == 0 for t in report.tensors)
    # Back into lowbit: the same packed codes, scales and zeros, and the same evaluation.
    back = work / "back"
    lowbit.Model.load(g).save(back)
    before, after = quant_tensors(q), quant_tensors(back)
    linears = {n for n in before if n.startswith("model.layers.")}
    assert linears <= set(after)
    for n in linears:
        a, b = before[n], after[n]
        assert (a.bits, a.symmetric) == (b.bits, b.symmetric), n
        assert (a.group_size or a.shape[1]) == (b.group_size or b.shape[1]), n
        assert np.array_equal(a.packed, b.packed), n
        assert np.array_equal(a.scales, b.scales), n
        assert (a.zeros is None and b.zeros is None) or np.array_equal(a.zeros, b.zeros), n
    ids = list(range(1, 40))
    assert same_nll(q, g, ids, 20)
    return report


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    bits=st.sampled_from([2, 4, 8]),
    sym=st.booleans(),
    group=st.sampled_from([16, 32, 64, "channel"]),
    hidden=st.sampled_from([32, 64, 96]),
    ffn=st.sampled_from([32, 64, 96, 128]),
    embed=st.sampled_from(["int8", "f16", "keep"]),
)
def test_round_trip_bit_exact(
    tmp_path_factory: pytest.TempPathFactory, bits: int, sym: bool, group: int | str, hidden: int, ffn: int,
    embed: str,
) -> None:  # fmt: skip
    if isinstance(group, int) and (hidden % group or ffn % group):
        group = 32 if hidden % 32 == 0 and ffn % 32 == 0 else 16
    work = tmp_path_factory.mktemp("rt")
    src = tiny(work / "src", hidden, ffn)
    q = quantize(src, work / "q", bits=bits, group_size=group, sym=sym, embed=embed)
    report = check_round_trip(q, work)
    assert report.checkpoint_format == ("gptq" if sym else "gptq_v2")
    qc = json.loads((work / "gptq" / "config.json").read_text())["quantization_config"]
    assert qc == json.loads((work / "gptq" / "quantize_config.json").read_text())
    assert (qc["bits"], qc["sym"], qc["desc_act"]) == (bits, sym, False)
    assert qc["format"] == qc["checkpoint_format"] == report.checkpoint_format
    assert qc["group_size"] == (-1 if group == "channel" else group)
    t = load_file(work / "gptq" / "model.safetensors")
    gs = hidden if group == "channel" else int(group)
    assert np.array_equal(t["model.layers.0.self_attn.q_proj.g_idx"], np.arange(hidden) // gs)
    if sym:  # v1 symmetric words: 0x77777777 (4 bits), 0x7f7f7f7f (8 bits), 0x55555555 (2 bits)
        words = {2: 0x55555555, 4: 0x77777777, 8: 0x7F7F7F7F}[bits]
        assert (t["model.layers.1.mlp.down_proj.qzeros"].view(np.uint32) == words).all()
    emb = next(r for r in report.tensors if r.name == "model.embed_tokens.weight")
    assert emb.type == {"int8": "F32", "f16": "F16", "keep": "F32"}[embed]
    assert any("dequantized" in n for n in report.notes) == (embed == "int8")


def test_untied_head_and_files(tmp_path: Path) -> None:
    src = tiny(tmp_path / "src", 64, 128)
    cfg = json.loads((src / "config.json").read_text())
    cfg["tie_word_embeddings"] = False
    (src / "config.json").write_text(json.dumps(cfg))
    t = load_file(src / "model.safetensors")
    t["lm_head.weight"] = (t["model.embed_tokens.weight"][:, ::-1] * 0.5).copy()
    save_file(t, src / "model.safetensors")
    q = quantize(src, tmp_path / "q", bits=4, group_size=32, sym=True, lm_head="int8")
    check_round_trip(q, tmp_path)
    g = tmp_path / "gptq"
    names = sorted(p.name for p in g.iterdir())
    want = [
        "config.json",
        "model.safetensors",
        "quantize_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert names == sorted(want)
    assert all(stat.S_IMODE(os.stat(g / n).st_mode) == 0o644 for n in names)
    cfg = json.loads((g / "config.json").read_text())
    assert cfg["torch_dtype"] == "float16"
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    assert "lm_head.weight" in load_file(g / "model.safetensors")


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    q = quantize(tiny(tmp_path / "src", 32, 64), tmp_path / "q", bits=4, group_size=32, sym=False)
    assert main(["export", str(q), "-o", str(tmp_path / "g"), "--format", "gptq"]) == 0
    out = capsys.readouterr().out
    assert "model.layers.1.mlp.down_proj" in out
    assert "gptq int4 g32 v2" in out
    assert "checkpoint_format gptq_v2" in out.splitlines()[-1]
    assert "note: asymmetric: written as gptq_v2" in out
    assert main(["export", str(tmp_path / "g"), "-o", str(tmp_path / "g2"), "--format", "gptq"]) == 0


def test_refusals_leave_nothing(tmp_path: Path) -> None:
    src = tiny(tmp_path / "src", 96, 64)
    out = tmp_path / "out"
    with pytest.raises(lowbit.UnsupportedError, match="not quantized"):
        lowbit.export(src, out, format="gptq")
    q = quantize(src, tmp_path / "q64", bits=4, group_size=64, sym=True)
    with pytest.raises(
        lowbit.UnsupportedError, match=r"in_features 96 is not a multiple of group size 64.*or 32"
    ):
        lowbit.export(q, out, format="gptq")
    q = quantize(src, tmp_path / "q3", bits=3, group_size=32, sym=True)
    with pytest.raises(lowbit.UnsupportedError, match="3-bit"):
        lowbit.export(q, out, format="gptq")
    q = quantize(src, tmp_path / "qf32", bits=4, group_size=32, sym=True, scale_dtype="f32")
    with pytest.raises(lowbit.UnsupportedError, match="not an f16 value"):
        lowbit.export(q, out, format="gptq")
    with pytest.raises(lowbit.UnsupportedError, match="GGUF"):
        lowbit.export(q, out, format="gptq", dense_type="Q8_0")
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]
    q = quantize(src, tmp_path / "q32", bits=4, group_size=32, sym=True)
    out.mkdir()
    (out / "x").write_text("keep")
    with pytest.raises(OSError, match="not empty"):
        lowbit.export(q, out, format="gptq")
    assert [p.name for p in out.iterdir()] == ["x"]


# --- import: labels, values and bad files ---------------------------------------------------


@pytest.fixture
def exported(tmp_path: Path) -> tuple[Path, Path]:
    """A symmetric W4 g32 lowbit model and its v1 GPTQ export."""
    q = quantize(tiny(tmp_path / "src", 64, 128), tmp_path / "q", bits=4, group_size=32, sym=True)
    lowbit.export(q, tmp_path / "g", format="gptq")
    return q, tmp_path / "g"


def relabel(d: Path, **fields: Any) -> None:
    for f, nested in [("config.json", True), ("quantize_config.json", False)]:
        cfg = json.loads((d / f).read_text())
        qc = cfg["quantization_config"] if nested else cfg
        qc.update(fields)
        (d / f).write_text(json.dumps(cfg))


def edit_tensors(d: Path, fn: Any) -> None:
    t = load_file(d / "model.safetensors")
    fn(t)
    save_file(t, d / "model.safetensors", metadata={"format": "pt"})


def weights_of(d: Path, tmp: Path) -> dict[str, np.ndarray]:
    out = tmp / f"saved-{d.name}"
    lowbit.Model.load(d).save(out)
    return lowbit_weights(out)


def test_v1_label_over_v2_zeros_is_read_by_value(exported: tuple[Path, Path], tmp_path: Path) -> None:
    """GPTQModel v5+ wrote v2 zeros (0x88888888) under the "gptq" label (vLLM #26343)."""
    q, g = exported

    def to_v2(t: dict[str, np.ndarray]) -> None:
        for n in [n for n in t if n.endswith(".qzeros")]:
            t[n] = (t[n].view(np.uint32) + np.uint32(0x11111111)).view(np.int32)

    edit_tensors(g, to_v2)
    with pytest.warns(lowbit.LoadWarning) as caught:
        w = weights_of(g, tmp_path)
    err = "\n".join(str(c.message) for c in caught)
    assert "labelled v1" in err
    assert "model.layers.0.self_attn.q_proj" in err
    assert "read as gptq_v2" in err
    ours = lowbit_weights(q)
    assert all(np.array_equal(w[n], ours[n]) for n in ours)


def test_v2_label_over_v1_zeros_is_read_by_value(exported: tuple[Path, Path], tmp_path: Path) -> None:
    q, g = exported
    relabel(g, checkpoint_format="gptq_v2", format="gptq_v2")
    with pytest.warns(lowbit.LoadWarning) as caught:
        w = weights_of(g, tmp_path)
    err = "\n".join(str(c.message) for c in caught)
    assert "labelled gptq_v2" in err
    assert "read as v1" in err
    ours = lowbit_weights(q)
    assert all(np.array_equal(w[n], ours[n]) for n in ours)


def test_v1_label_with_a_zero_v1_cannot_hold_is_refused(tmp_path: Path) -> None:
    q = quantize(tiny(tmp_path / "src", 64, 128), tmp_path / "q", bits=4, group_size=32, sym=False)
    g = tmp_path / "g"
    lowbit.export(q, g, format="gptq")

    def zero_15(t: dict[str, np.ndarray]) -> None:
        z = t["model.layers.1.mlp.up_proj.qzeros"].view(np.uint32)
        z[0, 0] |= np.uint32(0xF)

    edit_tensors(g, zero_15)
    relabel(g, checkpoint_format="gptq", format="gptq")
    with pytest.raises(lowbit.CorruptFileError, match=r"model\.layers\.1\.mlp\.up_proj\.qzeros.*mislabelled"):
        lowbit.Model.load(g)
    # Under its own label the same values load (the v2 zero point 15 is legal).
    relabel(g, checkpoint_format="gptq_v2", format="gptq_v2")
    w = weights_of(g, tmp_path)["model.layers.1.mlp.up_proj.weight"]
    assert np.array_equal(w, read_gptq(g)["model.layers.1.mlp.up_proj.weight"])


def test_act_order_g_idx_is_dequantized_with_a_warning(exported: tuple[Path, Path], tmp_path: Path) -> None:
    """A g_idx from act-order without static groups (groups of permuted columns) has no lowbit
    layout: that module is dequantized as the GPTQ reader does."""
    _, g = exported
    perm = np.random.default_rng(0).permutation(64)

    def act_order(t: dict[str, np.ndarray]) -> None:
        t["model.layers.0.self_attn.k_proj.g_idx"] = (np.argsort(perm) // 32).astype(np.int32)

    edit_tensors(g, act_order)
    with pytest.warns(lowbit.LoadWarning, match="g_idx is not i / group_size"):
        w = weights_of(g, tmp_path)
    theirs = read_gptq(g)
    for n in theirs:
        assert np.array_equal(w[n], theirs[n]), n


UP = "model.layers.0.mlp.up_proj"


@pytest.mark.parametrize(
    ("edit", "error", "match"),
    [
        (lambda t: t.update({UP + ".scales": t[UP + ".scales"][:1]}),
         lowbit.CorruptFileError, r"up_proj\.scales: shape \[1, 128\], expected \[2, 128\]"),
        (lambda t: t.update({UP + ".qzeros": t[UP + ".qzeros"][:, :3]}), lowbit.CorruptFileError,
         r"up_proj\.qzeros: shape"),
        (lambda t: t.update({UP + ".g_idx": np.full(64, 7, np.int32)}), lowbit.CorruptFileError,
         r"up_proj\.g_idx: group 7 outside 0\.\.2"),
        (lambda t: t.update({UP + ".qweight": t[UP + ".qweight"].astype(np.float32)}),
         lowbit.CorruptFileError, r"qweight: dtype F32"),
        (lambda t: t.pop("model.layers.1.self_attn.o_proj.scales"), lowbit.CorruptFileError,
         r"o_proj\.scales: missing"),
        (lambda t: t.update({UP + ".qweight": t[UP + ".qweight"][:4]}), lowbit.LowbitError, r"up_proj"),
    ],
)  # fmt: skip
def test_lying_tensors_are_refused(exported: tuple[Path, Path], edit: Any, error: type, match: str) -> None:
    _, g = exported
    edit_tensors(g, edit)
    with pytest.raises(error, match=match):
        lowbit.Model.load(g)


def test_bad_configs_and_truncation(exported: tuple[Path, Path]) -> None:
    _, g = exported
    relabel(g, bits=3)
    with pytest.raises(lowbit.UnsupportedError, match="3-bit"):
        lowbit.Model.load(g)
    relabel(g, bits=4, format="marlin")
    with pytest.raises(lowbit.UnsupportedError, match="marlin"):
        lowbit.Model.load(g)
    relabel(g, format="gptq", group_size=0)
    with pytest.raises(lowbit.CorruptFileError, match="group_size"):
        lowbit.Model.load(g)
    relabel(g, group_size=64)
    with pytest.raises(lowbit.CorruptFileError, match="scales: shape"):
        lowbit.Model.load(g)
    relabel(g, group_size=32)
    lowbit.Model.load(g)
    st = g / "model.safetensors"
    st.write_bytes(st.read_bytes()[:-100])
    with pytest.raises(lowbit.CorruptFileError):
        lowbit.Model.load(g)


def test_smollm2_w4_g64(tmp_path: Path) -> None:
    """RTN W4 g64 symmetric SmolLM2: exact export (v1), the Marlin constraint reported, and the
    same perplexity back in lowbit; group 128 is refused (576 % 128) with the suggestion."""
    ref = smollm2_gguf()
    q = tmp_path / "q"
    lowbit.quantize_model(ref, q, method="rtn", bits=4, group_size=64, sym=True, calib=list(range(64)),
                          nsamples=1, seqlen=64)  # fmt: skip
    report = lowbit.export(q, tmp_path / "g", format="gptq")
    assert report.checkpoint_format == "gptq"
    assert all(t.path == "exact" and t.max_abs_diff == 0 for t in report.tensors)
    assert any("in_features 576 is not a multiple of 128" in n for n in report.notes)
    ids = lowbit.Model.load(q).encode("The quick brown fox jumps over the lazy dog. " * 6)
    assert same_nll(q, tmp_path / "g", ids, 32)
    q128 = tmp_path / "q128"
    lowbit.quantize_model(ref, q128, method="rtn", bits=4, group_size=128, sym=True, calib=list(range(64)),
                          nsamples=1, seqlen=64)  # fmt: skip
    with pytest.raises(lowbit.UnsupportedError, match="576 is not a multiple of group size 128"):
        lowbit.export(q128, tmp_path / "g128", format="gptq")
