"""The quantization pipeline from Python and the CLI, on a tiny random Llama (seconds)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

import lowbit
from conftest import smollm2_gguf, wikitext
from lowbit import _lowbit
from lowbit.cli import main

HIDDEN, FFN, VOCAB, LAYERS, HEADS, KV_HEADS = 32, 64, 61, 2, 4, 2


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    header: dict[str, object] = {}
    offset = 0
    blobs = []
    for name in sorted(tensors):
        data = np.ascontiguousarray(tensors[name], dtype="<f4").tobytes()
        header[name] = {
            "dtype": "F32",
            "shape": list(tensors[name].shape),
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
        blobs.append(data)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    hd = HIDDEN // HEADS
    t: dict[str, np.ndarray] = {"model.embed_tokens.weight": rng.standard_normal((VOCAB, HIDDEN)) * 0.5}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = 1 + 0.1 * rng.standard_normal(HIDDEN)
        t[p + "post_attention_layernorm.weight"] = 1 + 0.1 * rng.standard_normal(HIDDEN)
        for name, shape in [
            ("self_attn.q_proj", (HEADS * hd, HIDDEN)),
            ("self_attn.k_proj", (KV_HEADS * hd, HIDDEN)),
            ("self_attn.v_proj", (KV_HEADS * hd, HIDDEN)),
            ("self_attn.o_proj", (HIDDEN, HEADS * hd)),
            ("mlp.gate_proj", (FFN, HIDDEN)),
            ("mlp.up_proj", (FFN, HIDDEN)),
            ("mlp.down_proj", (HIDDEN, FFN)),
        ]:
            t[p + name + ".weight"] = 0.2 * rng.standard_normal(shape)
    t["model.norm.weight"] = np.ones(HIDDEN)
    write_safetensors(d / "model.safetensors", t)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 128,
        "tie_word_embeddings": True,
        "hidden_act": "silu",
    }
    (d / "config.json").write_text(json.dumps(config))
    np.save(d / "ids.npy", np.random.default_rng(1).integers(0, VOCAB, 500).astype(np.int32))
    return d


def test_windows_match_numpy_protocol() -> None:
    ids = np.arange(10_000)
    got = lowbit.calibration_windows(ids.tolist(), nsamples=16, seqlen=64, seed=0)
    offsets = np.random.default_rng(0).integers(0, len(ids) - 64, 16)
    assert np.array_equal(got[:, 0], offsets)
    assert np.array_equal(got, np.stack([ids[o : o + 64] for o in offsets]))
    for seed in (1, 12345678901):
        assert np.array_equal(
            lowbit.calibration_windows(ids.tolist(), 5, 100, seed)[:, 0],
            np.random.default_rng(seed).integers(0, len(ids) - 100, 5),
        )


@pytest.mark.parametrize("method", ["rtn", "gptq", "awq"])
def test_quantize_model_api(tiny_model: Path, tmp_path: Path, method: str) -> None:
    events: list[tuple[str, int]] = []
    report = lowbit.quantize_model(
        tiny_model,
        tmp_path / "q",
        method=method,
        bits=4,
        group_size=32,
        calib=tiny_model / "ids.npy",
        nsamples=8,
        seqlen=16,
        progress=lambda stage, done, total, loss, elapsed, eta: events.append((stage, done)),
    )
    assert isinstance(report, lowbit.QuantizeReport)
    assert len(report.layers) == 7 * LAYERS
    assert ("block", LAYERS) in events
    assert 4 < report.bits_per_weight < 5
    assert report.peak_rss_bytes is not None
    assert report.peak_rss_bytes > 0
    cfg = json.loads((tmp_path / "q" / "config.json").read_text())
    assert cfg["quantization_config"]["method"] == method
    manifest = json.loads((tmp_path / "q" / "lowbit_manifest.json").read_text())
    assert manifest["calibration"]["sha256_token_ids_u32le"] == report.calib_sha256
    m = lowbit.Model.load(tmp_path / "q")
    assert m.weight_bytes < lowbit.Model.load(tiny_model).weight_bytes


def test_in_memory_ids_equal_file(tiny_model: Path, tmp_path: Path) -> None:
    ids = np.load(tiny_model / "ids.npy")
    a = lowbit.quantize_model(tiny_model, tmp_path / "a", calib=ids, nsamples=4, seqlen=16, group_size=32)
    b = lowbit.quantize_model(
        tiny_model, tmp_path / "b", calib=tiny_model / "ids.npy", nsamples=4, seqlen=16, group_size=32
    )
    assert a.calib_sha256 == b.calib_sha256
    files = sorted(p.name for p in (tmp_path / "a").iterdir() if p.suffix == ".safetensors")
    for name in files:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_resume_and_errors(tiny_model: Path, tmp_path: Path) -> None:
    kw = dict(method="gptq", bits=4, group_size=32, calib=str(tiny_model / "ids.npy"), nsamples=4, seqlen=16)
    with pytest.raises(lowbit.LowbitError, match="stopped after block 0"):
        _lowbit.quantize_model(str(tiny_model), str(tmp_path / "r"), stop_after_block=0, **kw)  # type: ignore[arg-type]
    assert not (tmp_path / "r").exists()
    assert (tmp_path / "r.partial").is_dir()
    report = lowbit.quantize_model(tiny_model, tmp_path / "r", resume=True, **kw)  # type: ignore[arg-type]
    assert report.resumed_from_block == 1
    with pytest.raises(lowbit.LowbitError, match="beyond the model's context"):
        lowbit.quantize_model(
            tiny_model, tmp_path / "e", calib=np.arange(600) % VOCAB, seqlen=200, group_size=32
        )
    with pytest.raises(lowbit.LowbitError, match="too few"):
        lowbit.quantize_model(tiny_model, tmp_path / "e", calib=[1, 2, 3], seqlen=16, group_size=32)
    assert not (tmp_path / "e").exists()


def test_cli_quantize(tiny_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    argv = [
        "quantize", str(tiny_model), "-o", str(out), "--method", "gptq", "--bits", "3", "--group-size", "32",
        "--act-order", "--calib", str(tiny_model / "ids.npy"), "--nsamples", "4", "--seqlen", "16", "-q",
        "--json", str(tmp_path / "r.json"),
    ]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    for label in ("bits per weight", "peak RAM", "worst layer loss"):
        assert label in text
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["params"]["desc_act"] is True
    assert report["params"]["bits"] == 3
    assert main([*argv[:3], str(tmp_path / "cli2"), *argv[4:]]) == 0
    assert main(["quantize", str(tiny_model), "-o", str(out), "--method", "rtn", "-q"]) == 2  # out exists


@pytest.mark.slow
def test_smollm2_gptq_w4_protocol(tmp_path: Path) -> None:
    valid, test = wikitext("valid"), wikitext("test")
    report = lowbit.quantize_model(smollm2_gguf(), tmp_path / "q", method="gptq", bits=4, calib=valid)
    ppl = lowbit.Model.load(tmp_path / "q").perplexity(path=test).perplexity
    assert ppl <= 28.5849, (ppl, report.wall_seconds)
