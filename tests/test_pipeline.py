"""The quantization pipeline from Python and the CLI, on a tiny random Llama (seconds)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest

import lowbit
from conftest import smollm2_gguf, wikitext
from lowbit import _lowbit
from lowbit.cli import main
from tiny_llama import Recorder, write_tiny_llama

HIDDEN, FFN, VOCAB, LAYERS, HEADS, KV_HEADS = 32, 64, 61, 2, 4, 2


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_llama(
        tmp_path_factory.mktemp("tiny"), hidden=HIDDEN, ffn=FFN, vocab=VOCAB, layers=LAYERS, heads=HEADS,
        kv_heads=KV_HEADS,
    )  # fmt: skip


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
    progress = Recorder()
    report = lowbit.quantize_model(
        tiny_model,
        tmp_path / "q",
        method=method,
        bits=4,
        group_size=32,
        calib=tiny_model / "ids.npy",
        nsamples=8,
        seqlen=16,
        progress=progress,
    )
    assert isinstance(report, lowbit.QuantizeReport)
    assert len(report.layers) == 7 * LAYERS
    calibrated = [("calibrate", 8)] if method != "rtn" else []
    assert progress.phases() == [*calibrated, ("blocks", LAYERS), ("write", 0)]
    assert progress.events.count(("finish", None)) == len(progress.phases())
    assert progress.events.count(("metric", "loss")) == LAYERS
    assert 4 < report.bits_per_weight < 5
    assert report.peak_rss_bytes is not None
    assert report.peak_rss_bytes > 0
    cfg = json.loads((tmp_path / "q" / "config.json").read_text())
    assert cfg["quantization_config"]["method"] == method
    manifest = json.loads((tmp_path / "q" / "lowbit_manifest.json").read_text())
    assert manifest["calibration"]["sha256_token_ids_u32le"] == report.calib_sha256
    m = lowbit.Model.load(tmp_path / "q")
    assert m.weight_bytes < lowbit.Model.load(tiny_model).weight_bytes


@pytest.mark.parametrize("embed", ["int8", "int4-g32", "f16", "keep"])
def test_embedding_storage_and_sizes(tiny_model: Path, tmp_path: Path, embed: str) -> None:
    out = tmp_path / "q"
    report = lowbit.quantize_model(tiny_model, out, method="rtn", group_size=32, embed=embed)
    files = sum(p.stat().st_size for p in out.iterdir())
    assert report.out_bytes == files, "every byte of every file of the directory"
    manifest = json.loads((out / "lowbit_manifest.json").read_text())
    assert manifest["sizes"]["out_bytes"] == files
    assert report.params["embed"] == embed
    tied = json.loads((tiny_model / "config.json").read_text()).get("tie_word_embeddings", False)
    assert (report.lm_head_bytes is None) == tied
    bytes_per = {"int8": 1 + 2 / HIDDEN, "int4-g32": 0.5 + 3 / 32, "f16": 2, "keep": 4}[embed]
    assert report.embed_bytes == pytest.approx(VOCAB * HIDDEN * bytes_per)
    linears = report.linear_bytes_after
    norms = 4 * HIDDEN * (2 * LAYERS + 1)
    assert report.tensor_bytes == report.embed_bytes + (report.lm_head_bytes or 0) + linears + norms
    assert report.bits_per_weight_all == pytest.approx(report.tensor_bytes * 8 / report.num_params)
    assert report.file_bits_per_weight == pytest.approx(files * 8 / report.num_params)
    assert report.to_dict()["file_bits_per_weight"] == report.file_bits_per_weight
    assert report.input_bytes == sum(p.stat().st_size for p in tiny_model.iterdir() if p.is_file())
    ppl = lowbit.Model.load(out).perplexity(ids=[t % VOCAB for t in range(7, 7 + 64)], window=32, windows=2)
    assert np.isfinite(ppl.perplexity)


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
    labels = ("bits per weight (all tensors)", "output directory (every file)", "embedding / LM head")
    for label in (*labels, "peak RAM", "worst layer loss"):
        assert label in text
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["params"]["desc_act"] is True
    assert report["params"]["bits"] == 3
    assert main([*argv[:3], str(tmp_path / "cli2"), *argv[4:]]) == 0
    assert main(["quantize", str(tiny_model), "-o", str(out), "--method", "rtn", "-q"]) == 1  # out exists


@pytest.mark.slow
def test_smollm2_gptq_w4_protocol(tmp_path: Path) -> None:
    valid, test = wikitext("valid"), wikitext("test")
    report = lowbit.quantize_model(smollm2_gguf(), tmp_path / "q", method="gptq", bits=4, calib=valid)
    ppl = lowbit.Model.load(tmp_path / "q").perplexity(path=test).perplexity
    assert ppl <= 28.5849, (ppl, report.wall_seconds)


def quantized_linears(d: Path) -> dict[str, lowbit.QTensor]:
    out: dict[str, lowbit.QTensor] = {}
    for f in sorted(d.glob("*.safetensors")):
        # The dense shard is plain safetensors.
        with contextlib.suppress(lowbit.CorruptFileError):
            out.update(lowbit.load_tensors(f))
    return {k: v for k, v in out.items() if k.startswith("model.layers.")}


@pytest.mark.parametrize("fmt", ["nf4", "fp4"])
@pytest.mark.parametrize("double_quant", [False, True])
def test_rtn_codebooks_through_the_pipeline(
    tiny_model: Path, tmp_path: Path, fmt: str, double_quant: bool
) -> None:
    from safetensors.numpy import load_file

    report = lowbit.quantize_model(
        tiny_model, tmp_path / "q", method="rtn", format=fmt, double_quant=double_quant, group_size=16
    )
    original = load_file(tiny_model / "model.safetensors")
    linears = quantized_linears(tmp_path / "q")
    assert len(linears) == 7 * LAYERS
    for name, q in linears.items():
        assert (q.format, q.double_quant, q.group_size) == (fmt, double_quant, 16)
        # The pipeline's RTN is lowbit's direct codebook quantization, bit for bit.
        direct = lowbit.quantize(original[name], format=fmt, block_size=16, double_quant=double_quant)  # type: ignore[arg-type]
        assert q == direct, name
    # 4-bit codes plus the absmax: f32 per 16 weights, or int8 per 16 plus f32 per 256 blocks.
    absmax_bits = 8 / 16 if double_quant else 32 / 16
    assert 4 + absmax_bits <= report.bits_per_weight < 4 + absmax_bits + 0.1
    qc = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    assert (qc["weight_format"], qc["double_quant"]) == (fmt, double_quant)
    assert not {"sym", "scale_dtype", "clip"} & set(qc)  # integer knobs a codebook does not have
    m = lowbit.Model.load(tmp_path / "q")
    ppl = m.perplexity(ids=np.load(tiny_model / "ids.npy").tolist()[:64], window=32, windows=2).perplexity
    assert np.isfinite(ppl)


def test_gptq_nf4_end_to_end(tiny_model: Path, tmp_path: Path) -> None:
    # The solver itself is checked against textbook GPTQ on a codebook grid in Rust
    # (crates/lowbit-solvers/tests/gptq.rs); here the pipeline runs it and the model loads.
    opts = {"format": "nf4", "double_quant": True, "group_size": 16, "calib": tiny_model / "ids.npy"}
    rtn = lowbit.quantize_model(tiny_model, tmp_path / "rtn", method="rtn", **opts)
    gptq = lowbit.quantize_model(tiny_model, tmp_path / "gptq", method="gptq", nsamples=8, seqlen=16, **opts)
    linears = quantized_linears(tmp_path / "gptq")
    assert {(q.format, q.double_quant) for q in linears.values()} == {("nf4", True)}
    # The absmax blocks are chosen from the original weights as RTN does: same absmax, same bytes.
    rtn_linears = quantized_linears(tmp_path / "rtn")
    assert gptq.bits_per_weight == rtn.bits_per_weight
    assert any(not np.array_equal(q.codes(), rtn_linears[k].codes()) for k, q in linears.items())
    ids = np.load(tiny_model / "ids.npy").tolist()[:64]
    assert np.isfinite(
        lowbit.Model.load(tmp_path / "gptq").perplexity(ids=ids, window=32, windows=2).perplexity
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"format": "nf4", "bits": 3}, "bits must be 4"),
        ({"format": "nf4", "group_size": None}, "block size"),
        ({"format": "int", "double_quant": True}, "double_quant applies"),
        ({"format": "nf4", "method": "awq"}, "integer codes"),
        ({"format": "fp4", "group_size": 24}, "multiple of the block size"),
    ],
)
def test_codebook_options_are_checked(
    tiny_model: Path, tmp_path: Path, options: dict[str, object], message: str
) -> None:
    opts = {"method": "rtn", "group_size": 16, "calib": tiny_model / "ids.npy", **options}
    with pytest.raises(lowbit.LowbitError, match=message):
        lowbit.quantize_model(tiny_model, tmp_path / "q", **opts)  # type: ignore[arg-type]
    assert not (tmp_path / "q").exists()
