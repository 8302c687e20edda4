"""safetensors round trips, and the file format read and written independently of lowbit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

import lowbit
from reference import format_ref, rtn_ref

GOLDEN = Path(__file__).parent / "golden" / "qtensors_v1.safetensors"

SCHEMES: list[dict[str, object]] = [
    {"bits": b, "group_size": g, "symmetric": s, "scale_dtype": d}
    for b in (2, 3, 4, 8)
    for g in (32, "channel", "tensor")
    for s, d in ((False, "f16"), (True, "f32"))
] + [{"format": f, "block_size": 64, "double_quant": dq} for f in ("nf4", "fp4") for dq in (False, True)]


def weights() -> np.ndarray:
    return np.random.default_rng(11).standard_normal((6, 96)).astype(np.float32)


def test_round_trip_every_scheme(tmp_path: Path) -> None:
    w = weights()
    tensors = {f"t{i}": lowbit.quantize(w, **kw) for i, kw in enumerate(SCHEMES)}  # type: ignore[arg-type]
    path = tmp_path / "all.safetensors"
    lowbit.save(path, tensors, metadata={"source": "test"})
    loaded = lowbit.load(path)
    assert loaded.keys() == tensors.keys()
    for name, q in tensors.items():
        assert loaded[name] == q
        np.testing.assert_array_equal(loaded[name].dequantize(), q.dequantize())
    assert lowbit._api.load_metadata(path)["source"] == "test"
    assert [p.name for p in tmp_path.iterdir()] == ["all.safetensors"], "no temp files left"


def test_written_by_lowbit_read_by_an_independent_decoder(tmp_path: Path) -> None:
    w = weights()
    path = tmp_path / "q.safetensors"
    tensors = {f"t{i}": lowbit.quantize(w, **kw) for i, kw in enumerate(SCHEMES)}  # type: ignore[arg-type]
    lowbit.save(path, tensors)
    decoded = format_ref.read(path)
    assert decoded.keys() == tensors.keys()
    for name, q in tensors.items():
        np.testing.assert_allclose(format_ref.dequantize(decoded[name]), q.dequantize(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("symmetric", [False, True])
def test_written_independently_read_by_lowbit(tmp_path: Path, bits: int, symmetric: bool) -> None:
    w = weights()
    codes, scale, zero = rtn_ref.rtn(w, bits, 32, symmetric, "f16")
    arrays = {
        "layer.qweight": rtn_ref.pack(codes, bits),
        "layer.scales": scale.astype(np.float16).reshape(6, 3),
    }
    if not symmetric:
        arrays["layer.zeros"] = zero.astype(np.uint8).reshape(6, 3)
    meta = {
        "format": "int",
        "bits": bits,
        "shape": [6, 96],
        "granularity": "group",
        "group_size": 32,
        "symmetric": symmetric,
        "scale_dtype": "f16",
    }
    path = tmp_path / "numpy-written.safetensors"
    save_file(arrays, str(path), metadata={"lowbit.format_version": "1", "lowbit.layer": json.dumps(meta)})
    q = lowbit.load(path)["layer"]
    assert q == lowbit.quantize(w, bits=bits, group_size=32, symmetric=symmetric)
    np.testing.assert_array_equal(q.dequantize(), rtn_ref.dequantize(codes, scale, zero, 32))


def test_golden_file_written_by_rust_matches_reference() -> None:
    """tests/golden is written by the Rust test suite (crates/lowbit-core/tests/golden.rs); every
    stored field, read by the numpy reader, equals the numpy reference quantizer's."""
    w = (np.arange(4 * 64, dtype=np.float32).reshape(4, 64) * 0.37) % 5.0 - 2.5
    golden = format_ref.read(GOLDEN)
    assert set(golden) == {"int4_g32", "int3_g64_sym", "nf4_dq"}

    codes, scale, zero = rtn_ref.rtn(w, 4, 32, False, "f16")
    g = golden["int4_g32"]
    np.testing.assert_array_equal(g["codes"], codes.reshape(-1))
    np.testing.assert_array_equal(g["scales"], scale)
    np.testing.assert_array_equal(g["zeros"], zero.astype(np.uint8))

    codes, scale, _ = rtn_ref.rtn(w, 3, 64, True, "f16")
    g = golden["int3_g64_sym"]
    np.testing.assert_array_equal(g["codes"], codes.reshape(-1))
    np.testing.assert_array_equal(g["scales"], scale)
    assert g["zeros"] is None, "symmetric: the zero point is implied, not stored"

    codes, absmax = rtn_ref.codebook_quantize(w, rtn_ref.NF4, 64)
    q, s2, offset = rtn_ref.double_quantize(absmax)
    g = golden["nf4_dq"]
    np.testing.assert_array_equal(g["codes"], codes)
    np.testing.assert_array_equal(g["absmax_q"], q)
    np.testing.assert_array_equal(g["dq_scales"], s2)
    assert g["dq_offset"] == offset
    np.testing.assert_array_equal(g["absmax"], q.astype(np.float32) * s2[0] + offset)

    # lowbit's own reader agrees with the numpy one.
    loaded = lowbit.load(GOLDEN)
    for name, fields in golden.items():
        np.testing.assert_array_equal(loaded[name].dequantize(), format_ref.dequantize(fields))
    assert loaded["int4_g32"] == lowbit.quantize(w, bits=4, group_size=32)
