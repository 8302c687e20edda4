"""RTN quantization against the independent numpy reference, code for code."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lowbit
from reference import rtn_ref

BITS = [2, 3, 4, 8]


@st.composite
def weight_and_scheme(draw: st.DrawFn) -> tuple[np.ndarray, int, int | str, bool, str]:
    bits = draw(st.sampled_from(BITS))
    granularity = draw(st.sampled_from(["group", "channel", "tensor"]))
    g = draw(st.sampled_from([8, 16, 32, 64, 128]))
    groups = draw(st.integers(1, 4))
    rows = draw(st.integers(1, 9))
    partial = granularity == "group" and draw(st.booleans())
    cols = (
        g * groups + (g // 2 if partial else 0)
        if granularity == "group"
        else draw(st.sampled_from([8, 24, 40, 64]))
    )
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    scale = draw(st.sampled_from([1e-3, 0.05, 1.0, 300.0]))
    w = (rng.standard_normal((rows, cols)) * scale).astype(np.float32)
    if draw(st.booleans()):
        w[rng.integers(0, rows), rng.integers(0, cols)] *= 20  # an outlier
    group_size: int | str = g if granularity == "group" else granularity
    return w, bits, group_size, draw(st.booleans()), draw(st.sampled_from(["f16", "f32"]))


def quantize_case(
    w: np.ndarray, bits: int, group_size: int | str, symmetric: bool, scale_dtype: str
) -> lowbit.QTensor:
    return lowbit.quantize(
        w,
        bits=bits,
        group_size=group_size,
        symmetric=symmetric,
        scale_dtype=scale_dtype,
        allow_partial_group=True,
    )


@settings(max_examples=300, deadline=None)
@given(weight_and_scheme())
def test_rtn_matches_numpy_reference_code_for_code(
    case: tuple[np.ndarray, int, int | str, bool, str],
) -> None:
    q = quantize_case(*case)
    w, bits, group_size, symmetric, scale_dtype = case
    codes, scale, zero = rtn_ref.rtn(w, bits, group_size, symmetric, scale_dtype)
    np.testing.assert_array_equal(q.codes(), codes)
    np.testing.assert_array_equal(q.scales.astype(np.float32).reshape(-1), scale)
    if symmetric:
        assert q.zeros is None
    else:
        assert q.zeros is not None
        np.testing.assert_array_equal(q.zeros.reshape(-1), zero.astype(np.uint8))
    np.testing.assert_array_equal(q.packed, rtn_ref.pack(codes, bits))
    np.testing.assert_array_equal(q.dequantize(), rtn_ref.dequantize(codes, scale, zero, group_size))


@settings(max_examples=200, deadline=None)
@given(weight_and_scheme())
def test_rtn_error_bound_and_symmetric_zero(case: tuple[np.ndarray, int, int | str, bool, str]) -> None:
    q = quantize_case(*case)
    w, bits, group_size, symmetric, scale_dtype = case
    _, scale, zero = rtn_ref.rtn(w, bits, group_size, symmetric, scale_dtype)
    gid = rtn_ref.group_ids(w.shape, group_size)
    s = scale[gid].reshape(w.shape)
    z = zero[gid].reshape(w.shape)
    lo, hi = -z * s, (2**bits - 1 - z) * s
    in_range = (w >= lo) & (w <= hi)
    err = np.abs(q.dequantize() - w)
    slack = 1e-6 * np.maximum(np.abs(w), s)
    assert np.all(err[in_range] <= s[in_range] / 2 + slack[in_range])
    if symmetric:
        w0 = w.copy()
        w0[0, 0] = 0.0
        q0 = quantize_case(w0, bits, group_size, True, scale_dtype)
        assert q0.dequantize()[0, 0] == 0.0


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("symmetric", [False, True])
def test_constant_groups_do_not_divide_by_zero(bits: int, symmetric: bool) -> None:
    w = np.zeros((3, 64), dtype=np.float32)
    w[1] = 2.5
    w[2] = -0.75
    dq = lowbit.quantize(w, bits=bits, group_size=32, symmetric=symmetric).dequantize()
    assert np.all(np.isfinite(dq))
    np.testing.assert_array_equal(dq[0], 0.0)
    step = np.abs(w).max(axis=1, keepdims=True) / (2 ** (bits - 1) - 1)
    assert np.all(np.abs(dq - w) <= step / 2 + 1e-6)


@pytest.mark.parametrize("bits", BITS)
def test_nbytes_is_exact(bits: int) -> None:
    w = np.random.default_rng(1).standard_normal((7, 128)).astype(np.float32)
    q = lowbit.quantize(w, bits=bits, group_size=64)
    groups = 7 * 2
    assert q.packed.nbytes == -(-w.size * bits // 8)
    assert q.nbytes == q.packed.nbytes + groups * 2 + groups
    assert q.bits_per_weight == pytest.approx(q.nbytes * 8 / w.size)


def test_mse_clip_never_worse_than_minmax() -> None:
    rng = np.random.default_rng(3)
    w = (rng.standard_t(3, size=(64, 256)) * 0.02).astype(np.float32)
    for bits in (2, 3, 4):
        base = lowbit.quantize(w, bits=bits, group_size=128).dequantize()
        mse = lowbit.quantize(w, bits=bits, group_size=128, clip="mse").dequantize()
        assert np.sum((mse - w) ** 2) <= np.sum((base - w) ** 2)


def test_float16_input_is_accepted() -> None:
    w = np.random.default_rng(2).standard_normal((4, 64)).astype(np.float16)
    q16 = lowbit.quantize(w, bits=4, group_size=32)
    q32 = lowbit.quantize(w.astype(np.float32), bits=4, group_size=32)
    assert q16 == q32


def test_higher_rank_is_quantized_over_the_last_axis() -> None:
    w = np.random.default_rng(5).standard_normal((2, 3, 64)).astype(np.float32)
    q = lowbit.quantize(w, bits=4, group_size=32)
    assert q.shape == (2, 3, 64)
    flat = lowbit.quantize(w.reshape(6, 64), bits=4, group_size=32)
    np.testing.assert_array_equal(q.dequantize().reshape(6, 64), flat.dequantize())


def test_partial_last_group_follows_gptq_convention() -> None:
    w = np.random.default_rng(9).standard_normal((3, 576)).astype(np.float32)
    with pytest.raises(lowbit.ShapeError, match="divide"):
        lowbit.quantize(w, bits=4, group_size=128)
    q = lowbit.quantize(w, bits=4, group_size=128, allow_partial_group=True)
    assert q.scales.shape == (3, 5)
    tail = lowbit.quantize(np.ascontiguousarray(w[:, 512:]), bits=4, group_size=64)
    np.testing.assert_array_equal(q.dequantize()[:, 512:], tail.dequantize())
