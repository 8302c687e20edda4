"""GGUF export, proven by other readers: the ``gguf`` package reads every tensor and its
dequantizers agree with lowbit's weights (exactly on the lossless routes), lowbit -> GGUF -> lowbit
is bit-exact for the lossless pairs, and SmolLM2's export carries llama.cpp's own tokenizer
metadata. The llama.cpp binaries' check is benches/interop/gguf_llama_cpp.py."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file

import lowbit
from conftest import smollm2_gguf
from lowbit.cli import main
from tiny_llama import write_tiny_llama

VOCAB = 61


def write_tokenizer(d: Path) -> None:
    """A byte-level BPE with SmolLM2's pre-tokenizer and three special tokens."""
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    special = [
        {"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False,
         "special": True}
        for i, c in enumerate(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    ]  # fmt: skip
    vocab = {t["content"]: t["id"] for t in special} | {"a": 3, "b": 4, "ab": 5, "Ġ": 6, "Ġa": 7}
    tok = {
        "version": "1.0",
        "added_tokens": special,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [{"type": "Digits", "individual_digits": True}, byte_level],
        },
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "vocab": vocab, "merges": ["a b", "Ġ a"]},
    }
    (d / "tokenizer.json").write_text(json.dumps(tok))
    cfg = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "chat_template": "{{ messages }}"}
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))


def tiny(d: Path, hidden: int, ffn: int) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    write_tiny_llama(d, hidden=hidden, ffn=ffn, vocab=VOCAB, heads=4, kv_heads=2)
    write_tokenizer(d)
    return d


def lowbit_weights(d: Path) -> dict[str, np.ndarray]:
    """Every tensor of a lowbit directory as lowbit dequantizes it, by Hugging Face name."""
    out: dict[str, np.ndarray] = {}
    for f in sorted(d.glob("*.safetensors")):
        try:
            qs = lowbit.load_tensors(f)
        except lowbit.CorruptFileError:  # the dense shard is plain safetensors
            out.update({k: v.astype(np.float32) for k, v in load_file(f).items()})
        else:
            out.update({k: q.dequantize().reshape(q.shape) for k, q in qs.items()})
    return out


HF = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
PARTS = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def hf_name(g: str) -> str:
    if g in HF:
        return HF[g]
    _, i, part, kind = g.split(".")
    return f"model.layers.{i}.{PARTS[part]}.{kind}"


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """transformers' reverse_permute_weights: llama.cpp's q/k row order back to Hugging Face's."""
    rows = w.shape[0]
    out: np.ndarray = w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    return out


def gguf_weights(path: Path, heads: int = 4, kv_heads: int = 2) -> dict[str, np.ndarray]:
    """Every tensor of a GGUF as the gguf package reads and dequantizes it, by HF name and order."""
    out = {}
    for t in GGUFReader(path).tensors:
        shape = tuple(int(x) for x in reversed(t.shape))
        w = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
        if ".attn_q." in t.name:
            w = unpermute(w, heads)
        elif ".attn_k." in t.name:
            w = unpermute(w, kv_heads)
        out[hf_name(t.name)] = w
    return out


def check_export(src: Path, work: Path, **options: Any) -> lowbit.ExportReport:
    """Quantizes ``src`` with RTN ``options``, exports it, and checks both readers against lowbit."""
    q = work / "q"
    lowbit.quantize_model(src, q, method="rtn", calib=src / "ids.npy", nsamples=2, seqlen=16, **options)
    report = lowbit.export(q, work / "m.gguf")
    ours = lowbit_weights(q)
    theirs = gguf_weights(work / "m.gguf")
    lowbit.import_gguf(work / "m.gguf", work / "back")
    back = load_file(work / "back" / "model.safetensors")
    assert set(theirs) == set(ours)
    assert set(back) == set(ours)
    for t in report.tensors:
        name = hf_name(t.name)
        measured = float(np.max(np.abs(theirs[name] - ours[name])))
        # The report is what the gguf package measures too (bitwise equal dequantizers).
        assert measured == pytest.approx(t.max_abs_diff, abs=0), (t, measured)
        if t.path == "exact":
            assert np.array_equal(theirs[name], ours[name]), t
            assert np.array_equal(back[name], ours[name]), f"round trip {t}"
        else:
            assert np.array_equal(back[name], theirs[name]), t
    return report


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    bits=st.sampled_from([4, 8]),
    sym=st.booleans(),
    group=st.sampled_from([32, 64, "channel"]),
    hidden=st.sampled_from([32, 64, 96]),
    ffn=st.sampled_from([32, 64, 96, 160]),
    embed=st.sampled_from(["int8", "int4-g32", "f16"]),
)
def test_lossless_pairs_round_trip_bit_exact(
    tmp_path_factory: pytest.TempPathFactory, bits: int, sym: bool, group: int | str, hidden: int, ffn: int,
    embed: str,
) -> None:  # fmt: skip
    if isinstance(group, int) and (hidden % group or ffn % group):
        group = 32
    work = tmp_path_factory.mktemp("rt")
    src = tiny(work / "src", hidden, ffn)
    report = check_export(src, work, bits=bits, group_size=group, sym=sym, embed=embed)
    want = {(4, True): ("Q4_0", "exact"), (8, True): ("Q8_0", "exact"), (4, False): ("Q4_1", "min-rounded")}
    want_type, want_path = want.get((bits, sym), ("Q8_0", "requantized"))
    for t in report.tensors:
        if t.name.startswith("blk.") and "norm" not in t.name:
            assert (t.type, t.path) == (want_type, want_path), t
    embed_type = {"int8": ("Q8_0", "exact"), "int4-g32": ("Q4_1", "min-rounded"), "f16": ("F16", "exact")}
    emb = next(t for t in report.tensors if t.name == "token_embd.weight")
    assert (emb.type, emb.path) == embed_type[embed]


def test_requantized_routes_are_reported(tmp_path: Path) -> None:
    src = tiny(tmp_path / "src", 64, 256)
    report = check_export(src, tmp_path, bits=3, group_size=32, embed="int4-g64")
    types = {t.name: (t.type, t.path) for t in report.tensors}
    # down_proj rows are 256 wide: Q4_K; the 64-wide rows take llama.cpp's fallback, Q5_0.
    assert types["blk.0.ffn_down.weight"] == ("Q4_K", "requantized")
    assert types["blk.0.attn_q.weight"] == ("Q5_0", "requantized")
    assert types["token_embd.weight"] == ("Q4_1", "min-rounded")
    assert all(0 < t.max_abs_diff < 0.2 for t in report.tensors if t.path == "requantized")


def test_cli_prints_a_per_tensor_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = tiny(tmp_path / "src", 32, 64)
    q = tmp_path / "q"
    lowbit.quantize_model(
        src, q, method="rtn", calib=src / "ids.npy", nsamples=2, seqlen=16, group_size=32, sym=True
    )
    assert main(["export", str(q), "-o", str(tmp_path / "m.gguf"), "--format", "gguf"]) == 0
    out = capsys.readouterr().out
    assert "blk.1.ffn_down.weight" in out
    assert "int4 g32 sym f16" in out
    assert "Q4_0" in out
    assert "20 exact; largest difference 0" in out.splitlines()[-1]
    assert main(["export", str(src), "-o", str(tmp_path / "d.gguf"), "--dense-type", "q8_0"]) == 0
    assert "requantized" in capsys.readouterr().out
    r = GGUFReader(tmp_path / "d.gguf")
    assert {t.tensor_type for t in r.tensors if t.name.startswith("blk.") and "norm" not in t.name} == {
        GGMLQuantizationType.Q8_0
    }


def test_bad_input_leaves_no_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        lowbit.export(tmp_path / "missing", tmp_path / "x.gguf")
    src = tiny(tmp_path / "src", 32, 64)
    with pytest.raises(lowbit.UnsupportedError, match="format"):
        lowbit.export(src, tmp_path / "x.gguf", format="onnx")  # type: ignore[arg-type]
    with pytest.raises(lowbit.UnsupportedError, match="ggml type"):
        lowbit.export(src, tmp_path / "x.gguf", dense_type="Q9_9")
    (src / "tokenizer.json").unlink()
    with pytest.raises(lowbit.LowbitError, match="tokenizer"):
        lowbit.export(src, tmp_path / "x.gguf")
    assert not [p for p in tmp_path.iterdir() if "x.gguf" in p.name]


def test_smollm2_export_has_llama_cpp_metadata(tmp_path: Path) -> None:
    """RTN W4 g32 symmetric SmolLM2: every block linear repacked exactly to Q4_0, the int8
    embedding to Q8_0, and the tokenizer metadata equal to what llama.cpp's converter wrote."""
    ref_path = smollm2_gguf()
    q = tmp_path / "q"
    lowbit.quantize_model(ref_path, q, method="rtn", bits=4, group_size=32, sym=True, calib=list(range(64)),
                          nsamples=1, seqlen=64)  # fmt: skip
    report = lowbit.export(q, tmp_path / "m.gguf")
    assert all(t.path == "exact" for t in report.tensors)
    assert {t.type for t in report.tensors if t.name.startswith("blk.") and "norm" not in t.name} == {"Q4_0"}
    ours, ref = GGUFReader(tmp_path / "m.gguf"), GGUFReader(ref_path)
    for key in [
        "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
        "tokenizer.ggml.merges", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.add_bos_token", "tokenizer.chat_template", "llama.block_count",
        "llama.context_length",
        "llama.embedding_length", "llama.feed_forward_length", "llama.attention.head_count",
        "llama.attention.head_count_kv", "llama.rope.freq_base", "llama.attention.layer_norm_rms_epsilon",
        "llama.vocab_size", "llama.rope.dimension_count",
    ]:  # fmt: skip
        a, b = ours.fields[key], ref.fields[key]
        assert a.types == b.types, key
        assert a.contents() == b.contents(), key
    names = {t.name for t in ref.tensors}
    assert {t.name for t in ours.tensors} == names
