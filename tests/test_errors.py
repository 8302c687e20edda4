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
