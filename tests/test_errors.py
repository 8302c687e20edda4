"""Bad input gets a named lowbit exception with a clear message."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import lowbit


def w(rows: int = 4, cols: int = 64) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((rows, cols)).astype(np.float32)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_weights(bad: float) -> None:
    a = w()
    a[2, 5] = bad
    with pytest.raises(lowbit.NonFiniteError, match="finite"):
        lowbit.quantize(a, group_size=32)
    with pytest.raises(lowbit.NonFiniteError):
        lowbit.quantize(a, format="nf4")


def test_group_size_must_divide_row() -> None:
    with pytest.raises(lowbit.ShapeError, match="divide"):
        lowbit.quantize(w(4, 96), group_size=64)
    with pytest.raises(lowbit.ShapeError, match="group_size"):
        lowbit.quantize(w(), group_size=-5)


@pytest.mark.parametrize("bits", [0, 1, 5, 6, 7, 16])
def test_unsupported_bits(bits: int) -> None:
    with pytest.raises(lowbit.UnsupportedError, match="bit width"):
        lowbit.quantize(w(), bits=bits, group_size=32)


@pytest.mark.parametrize("dtype", [np.float64, np.int32, np.uint8, np.complex64])
def test_wrong_dtype(dtype: type) -> None:
    with pytest.raises(lowbit.UnsupportedError, match="float32"):
        lowbit.quantize(w().astype(dtype), group_size=32)


def test_not_an_array() -> None:
    with pytest.raises(lowbit.UnsupportedError, match="numpy array"):
        lowbit.quantize([[1.0, 2.0]])  # type: ignore[arg-type]


def test_wrong_rank_and_empty() -> None:
    with pytest.raises(lowbit.ShapeError, match="0-d"):
        lowbit.quantize(np.array(1.0, dtype=np.float32), group_size=32)
    with pytest.raises(lowbit.ShapeError, match="empty"):
        lowbit.quantize(np.zeros((0, 64), dtype=np.float32), group_size=32)


def test_non_contiguous_is_refused() -> None:
    with pytest.raises(lowbit.ShapeError, match="contiguous"):
        lowbit.quantize(w(64, 64).T, group_size=32)  # Fortran order
    with pytest.raises(lowbit.ShapeError, match="contiguous"):
        lowbit.quantize(w(64, 128)[:, ::2], group_size=32)


def test_errors_are_value_errors() -> None:
    assert issubclass(lowbit.LowbitError, ValueError)
    for cls in (lowbit.NonFiniteError, lowbit.ShapeError, lowbit.UnsupportedError, lowbit.CorruptFileError):
        assert issubclass(cls, lowbit.LowbitError)


def test_truncated_and_corrupted_files(tmp_path: Path) -> None:
    path = tmp_path / "q.safetensors"
    lowbit.save(
        path,
        {
            "a": lowbit.quantize(w(), group_size=32),
            "b": lowbit.quantize(w(), format="nf4", double_quant=True),
        },
    )
    data = path.read_bytes()
    for cut in (0, 5, 8, 50, len(data) // 2, len(data) - 1):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(data[:cut])
        with pytest.raises(lowbit.CorruptFileError):
            lowbit.load(bad)
    flipped = bytearray(data)
    flipped[12] ^= 0xFF
    bad = tmp_path / "flipped.safetensors"
    bad.write_bytes(bytes(flipped))
    with pytest.raises(lowbit.CorruptFileError):
        lowbit.load(bad)


def test_plain_safetensors_is_not_a_lowbit_file(tmp_path: Path) -> None:
    from safetensors.numpy import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"x": np.zeros(4, dtype=np.float32)}, str(path))
    with pytest.raises(lowbit.CorruptFileError, match="not a lowbit file"):
        lowbit.load(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        lowbit.load(tmp_path / "nope.safetensors")


# Every Rust error class reaches Python as its own exception (crates/lowbit-py/src/errors.rs maps
# each variant by name, no wildcard). One trigger per class, from each crate.


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tiny_llama import write_tiny_llama

    return write_tiny_llama(tmp_path_factory.mktemp("errors-tiny"))


@pytest.fixture(scope="module")
def nan_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny model whose embedding of every token holds a NaN: its activations are not finite."""
    from tiny_llama import write_tiny_llama

    d = write_tiny_llama(tmp_path_factory.mktemp("nan-tiny"))
    raw = bytearray((d / "model.safetensors").read_bytes())
    import json
    import struct

    (n,) = struct.unpack("<Q", raw[:8])
    entry = json.loads(raw[8 : 8 + n])["model.embed_tokens.weight"]
    begin, end = (8 + n + o for o in entry["data_offsets"])
    emb = np.frombuffer(bytes(raw[begin:end]), dtype="<f4").copy()
    emb[:: entry["shape"][1]] = np.nan  # channel 0 of every token
    raw[begin:end] = emb.tobytes()
    (d / "model.safetensors").write_bytes(bytes(raw))
    return d


@pytest.mark.parametrize("method", ["gptq", "awq"])
def test_non_finite_activation_is_a_non_finite_error(nan_model: Path, tmp_path: Path, method: str) -> None:
    # gptq meets it in the solver's Hessian (a typed solver error), awq in the pipeline's own check.
    # The embedding is kept as loaded so that its NaN reaches the activations.
    with pytest.raises(lowbit.NonFiniteError, match="block 0"):
        lowbit.quantize_model(
            nan_model, tmp_path / "q", method=method, calib=nan_model / "ids.npy", nsamples=2, seqlen=8,
            group_size=32, embed="keep",
        )  # fmt: skip
    assert not (tmp_path / "q").exists()
    assert not (tmp_path / "q.partial").exists()


def test_non_finite_embedding_is_refused_when_quantized(nan_model: Path, tmp_path: Path) -> None:
    # The default int8 embedding quantizes the table first and refuses its NaN.
    with pytest.raises(lowbit.NonFiniteError, match="must be finite"):
        lowbit.quantize_model(nan_model, tmp_path / "q", method="rtn", group_size=32)
    assert not (tmp_path / "q").exists()
    assert not (tmp_path / "q.partial").exists()


def test_solver_errors_stay_typed() -> None:
    from lowbit import _lowbit

    weight = w(4, 16)
    # A Hessian no damping can make positive definite (not finite).
    with pytest.raises(lowbit.SolverFailedError, match="singular"):
        _lowbit.gptq_quantize(weight, np.where(np.eye(16) > 0, np.nan, 0.0), 4, 8, False)
    with pytest.raises(lowbit.UnsupportedError, match="percdamp"):
        _lowbit.gptq_quantize(weight, np.eye(16), 4, 8, False, percdamp=-1.0)
    with pytest.raises(lowbit.ShapeError, match="hessian"):
        _lowbit.gptq_quantize(weight, np.eye(8), 4, 8, False)
    assert issubclass(lowbit.SolverFailedError, lowbit.LowbitError)


@pytest.mark.parametrize("bad", [0, -1, "row", 12.5])
def test_group_size_has_one_spelling_everywhere(tiny: Path, tmp_path: Path, bad: object) -> None:
    from lowbit import _lowbit

    with pytest.raises(lowbit.ShapeError, match="positive int, 'channel' or 'tensor'"):
        lowbit.quantize(w(), group_size=bad)  # type: ignore[arg-type]
    with pytest.raises(lowbit.ShapeError, match="positive int, 'channel' or 'tensor'"):
        _lowbit.gptq_quantize(w(4, 16), np.eye(16), 4, bad, False)  # type: ignore[arg-type]
    with pytest.raises(lowbit.ShapeError, match="positive int, 'channel' or 'tensor'"):
        lowbit.quantize_model(tiny, tmp_path / "q", method="rtn", group_size=bad)  # type: ignore[arg-type]


def test_group_size_channel_and_tensor() -> None:
    assert lowbit.quantize(w(), group_size="channel").granularity == "channel"
    assert lowbit.quantize(w(), group_size="tensor").granularity == "tensor"
    assert lowbit.quantize(w(), group_size=32).group_size == 32


def test_model_errors_map_to_their_classes(tiny: Path, tmp_path: Path) -> None:
    import json
    import shutil

    with pytest.raises(FileNotFoundError):
        lowbit.Model.load(tmp_path / "nope")
    bad_arch = tmp_path / "arch"
    shutil.copytree(tiny, bad_arch)
    cfg = json.loads((bad_arch / "config.json").read_text())
    (bad_arch / "config.json").write_text(json.dumps({**cfg, "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(lowbit.UnsupportedError, match="architecture"):
        lowbit.Model.load(bad_arch)
    bad_cfg = tmp_path / "cfg"
    shutil.copytree(tiny, bad_cfg)
    (bad_cfg / "config.json").write_text("{ not json")
    with pytest.raises(lowbit.CorruptFileError):
        lowbit.Model.load(bad_cfg)
    model = lowbit.Model.load(tiny)
    with pytest.raises(lowbit.LowbitError, match="vocabulary"):
        model.generate([10_000], max_new_tokens=1)
    with pytest.raises(lowbit.LowbitError, match="tokenizer"):
        model.encode("hi")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(FileExistsError):
        lowbit.quantize_model(tiny, tmp_path / "full", method="rtn", group_size=32)
    with pytest.raises(lowbit.UnsupportedError, match="per tensor"):
        lowbit.quantize_model(tiny, tmp_path / "t", method="rtn", group_size="tensor")


def test_calibration_never_searched_for(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOWBIT_CALIB_TEXT", raising=False)
    with pytest.raises(lowbit.LowbitError, match="LOWBIT_CALIB_TEXT"):
        lowbit.quantize_model(tiny, tmp_path / "q", method="gptq", group_size=32)
