"""NF4 / FP4 codebooks and double quantization."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import lowbit
from lowbit import _lowbit
from reference import rtn_ref


def test_nf4_table_is_the_published_one() -> None:
    # reference.rtn_ref.NF4 holds the values published with QLoRA (bitsandbytes `create_normal_map()`)
    np.testing.assert_array_equal(np.float32(_lowbit.codebook_table("nf4")), rtn_ref.NF4)


def test_fp4_table_is_e2m1() -> None:
    mags = np.float32([0, 0.5, 1, 1.5, 2, 3, 4, 6])
    table = np.float32(_lowbit.codebook_table("fp4")) * 6
    np.testing.assert_array_equal(table[:8], mags)
    np.testing.assert_array_equal(table[8:], -mags)


@settings(max_examples=100, deadline=None)
@given(
    fmt=st.sampled_from(["nf4", "fp4"]),
    n=st.integers(1, 700),
    block_size=st.sampled_from([1, 7, 32, 64, 256]),
    seed=st.integers(0, 2**32 - 1),
)
def test_codebook_matches_reference(fmt: str, n: int, block_size: int, seed: int) -> None:
    w = np.random.default_rng(seed).standard_normal(n).astype(np.float32)
    q = lowbit.quantize(w, format=fmt, block_size=block_size)  # type: ignore[arg-type]
    table = rtn_ref.NF4 if fmt == "nf4" else rtn_ref.FP4
    codes, absmax = rtn_ref.codebook_quantize(w, table, block_size)
    np.testing.assert_array_equal(q.codes(), codes)
    np.testing.assert_array_equal(q.scales, absmax)
    np.testing.assert_array_equal(q.packed, rtn_ref.pack(codes, 4))
    np.testing.assert_array_equal(q.dequantize(), table[codes] * np.repeat(absmax, block_size)[:n])


@pytest.mark.parametrize("fmt", ["nf4", "fp4"])
def test_double_quant_reconstructs_scales_within_bound(fmt: str) -> None:
    w = np.random.default_rng(7).standard_normal((300, 256)).astype(np.float32)
    plain = lowbit.quantize(w, format=fmt, block_size=64)  # type: ignore[arg-type]
    dq = lowbit.quantize(w, format=fmt, block_size=64, double_quant=True)  # type: ignore[arg-type]
    exact = plain.scales.astype(np.float64)
    approx = dq.scales.astype(np.float64)
    offset = exact.mean()
    blocks = np.arange(len(exact)) // 256
    bound = np.array([np.abs(exact[blocks == b] - offset).max() / 127 / 2 for b in blocks])
    assert np.all(np.abs(approx - exact) <= bound + 1e-6)
    # 8-bit scales: the footprint falls from 32 to ~8 bits per 64 weights
    assert dq.bits_per_weight < plain.bits_per_weight - 0.3
    assert dq.double_quant
    assert not plain.double_quant
