"""lowbit-solvers against independent numpy references (tests/reference/gptq_ref.py, awq_ref.py).

The Rust solvers are reached through the bindings ``lowbit._lowbit.gptq_quantize`` / ``awq_search``.

Agreement criterion (GPTQ): both sides run the sweep in float64 and choose codes with the same
float32 rule, so codes agree exactly except where ``w / scale`` falls within float64 noise of a
rounding tie (or a float16 scale-rounding tie); we allow at most one differing code per problem
(it then differs by one step), and require exact equality of scales and zeros when all codes agree.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lowbit import _lowbit
from reference import awq_ref, gptq_ref


def rust_gptq() -> Callable[..., Any]:
    return _lowbit.gptq_quantize


def correlated_problem(rng: np.random.Generator, rows: int, cols: int, tokens: int, dead: int):
    """Weights and a Hessian 2/N X X^T of correlated activations with a few outlier channels."""
    mix = rng.standard_normal((cols, cols)) / (1.0 + 0.3 * np.arange(cols))[:, None]
    chan = np.where(rng.random(cols) < 0.05, 10 + 10 * rng.random(cols), 0.5 + rng.random(cols))
    x = (rng.standard_normal((tokens, cols)) @ mix) * chan / np.sqrt(cols)
    x = x.astype(np.float32)
    if dead:
        x[:, rng.choice(cols, size=dead, replace=False)] = 0
    xd = x.astype(np.float64)
    h = 2.0 / tokens * xd.T @ xd
    w = (rng.standard_normal((rows, cols)) * 0.05).astype(np.float32)
    return w, h, x


@st.composite
def gptq_case(draw: st.DrawFn):
    bits = draw(st.sampled_from([2, 3, 4, 8]))
    cols = draw(st.sampled_from([8, 16, 24, 40, 64, 96]))
    group = draw(st.sampled_from([-1, 8, 16, 32]))
    return dict(
        bits=bits,
        rows=draw(st.integers(1, 12)),
        cols=cols,
        group_size=group,
        symmetric=draw(st.booleans()),
        act_order=draw(st.booleans()),
        static_groups=draw(st.booleans()),
        block_size=draw(st.sampled_from([4, 16, 128])),
        dead=draw(st.integers(0, 2)),
        seed=draw(st.integers(0, 2**32 - 1)),
    )


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=gptq_case())
def test_gptq_matches_numpy_reference_code_for_code(case: dict) -> None:
    run = rust_gptq()
    rng = np.random.default_rng(case["seed"])
    w, h, _ = correlated_problem(rng, case["rows"], case["cols"], 4 * case["cols"], case["dead"])
    opts = dict(
        bits=case["bits"],
        group_size=case["group_size"],
        symmetric=case["symmetric"],
        act_order=case["act_order"],
        static_groups=case["static_groups"],
        percdamp=0.01,
        block_size=case["block_size"],
    )
    want_codes, want_scales, want_zeros, want_loss = gptq_ref.gptq(w, h, **opts)
    # The numpy oracle spells per channel -1; lowbit's one spelling is "channel".
    native_group = "channel" if case["group_size"] <= 0 else case["group_size"]
    codes, scales, zeros, loss = run(w, h, **{**opts, "group_size": native_group})
    codes = np.asarray(codes)
    diff = codes != want_codes
    assert diff.sum() <= 1, f"{diff.sum()} of {codes.size} codes differ"
    if diff.any():
        assert np.abs(codes.astype(int) - want_codes.astype(int)).max() == 1
    else:
        np.testing.assert_array_equal(np.asarray(scales, dtype=np.float32), want_scales)
        np.testing.assert_array_equal(np.asarray(zeros, dtype=np.uint8), want_zeros)
        assert loss == pytest.approx(want_loss, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize("act_order", [False, True])
def test_numpy_reference_gptq_beats_rtn(bits: int, act_order: bool) -> None:
    """The reference itself is sane: on correlated activations it beats RTN on the layer output."""
    rng = np.random.default_rng(bits * 10 + act_order)
    w, h, x = correlated_problem(rng, 32, 64, 512, 0)
    codes, scales, zeros, _ = gptq_ref.gptq(w, h, bits, 16, False, act_order)
    zeros_f = zeros.astype(np.float32)
    deq = gptq_ref.dequantize(codes, np.repeat(scales, 16, axis=1), np.repeat(zeros_f, 16, axis=1))
    rtn = gptq_ref.rtn_dequantized(w, bits, 16, False)
    err = lambda q: float(np.sum(((w - q).astype(np.float64) @ x.T.astype(np.float64)) ** 2))  # noqa: E731
    assert err(deq) < 0.9 * err(rtn)


def test_numpy_reference_damping_escalates() -> None:
    h = np.array([[1.0, 2.0], [2.0, 1.5]])  # eigenvalues 3.27, -0.77: needs lambda > 0.77
    _, lam, raises = gptq_ref.inverse_cholesky_upper(h)
    assert lam > 0.77
    assert raises == 2
    with pytest.raises(gptq_ref.SingularHessianError):
        gptq_ref.inverse_cholesky_upper(np.array([[1.0, 1e9], [1e9, 1.0]]))


def test_awq_matches_numpy_reference() -> None:
    awq_search = _lowbit.awq_search
    rng = np.random.default_rng(5)
    _, _, x = correlated_problem(rng, 1, 64, 256, 0)
    weights = [(rng.standard_normal((r, 64)) * 0.05).astype(np.float32) for r in (24, 40)]
    for bits, group, sym in [(4, 32, False), (3, 16, False), (4, -1, True)]:
        got = awq_search(x, weights, bits, "channel" if group <= 0 else group, sym)
        alpha, s, losses = awq_ref.search_scales(x, weights, bits, group, sym)
        assert got["alpha"] == pytest.approx(alpha)
        np.testing.assert_allclose(got["scales"], s, rtol=1e-6)
        np.testing.assert_allclose(got["grid_losses"], losses, rtol=1e-4)
        xs = x / s
        for w, clip in zip(weights, got["clip"]):
            # lowbit's clip search scores every token (from the second moment); llm-awq samples 512.
            want = awq_ref.search_clip(w * s, xs, bits, group, sym, clip_tokens=len(xs))
            assert np.mean(np.isclose(np.asarray(clip).reshape(want.shape), want, rtol=1e-6)) >= 0.98
