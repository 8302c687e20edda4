"""Independent numpy float64 Llama decoder block with a handwritten backward pass (no autograd).

Forward, as Hugging Face's ``LlamaDecoderLayer`` computes it for one sequence at positions
``0..T``::

    h1 = rmsnorm(x) * g_attn
    q, k, v = h1 Wq^T, h1 Wk^T, h1 Wv^T            (weights [out, in])
    q, k = rope(q), rope(k)                         (rotate-half, cos/sin of p * theta^(-2i/d))
    a = softmax(q k^T / sqrt(d) + causal mask) v    (query head h reads kv head h // (H / KV))
    x2 = x + a Wo^T
    h2 = rmsnorm(x2) * g_mlp
    y = x2 + (silu(h2 Wg^T) * h2 Wu^T) Wd^T

``block_backward`` maps ``dy`` back through each op in reverse with its gradient derived by hand
(the derivation of each is in its docstring). ``directional_check`` holds it against central
finite differences in float64, so the reference is checked on its own before it judges lowbit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NAMES = ("attn_norm", "q", "k", "v", "o", "mlp_norm", "gate", "up", "down")


@dataclass(frozen=True)
class Config:
    hidden: int
    ffn: int
    heads: int
    kv_heads: int
    head_dim: int
    rope_theta: float
    eps: float

    def as_dict(self) -> dict[str, float]:
        return dict(self.__dict__)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        h, f, qd, kvd = self.hidden, self.ffn, self.heads * self.head_dim, self.kv_heads * self.head_dim
        return {
            "attn_norm": (h,),
            "q": (qd, h),
            "k": (kvd, h),
            "v": (kvd, h),
            "o": (h, qd),
            "mlp_norm": (h,),
            "gate": (f, h),
            "up": (f, h),
            "down": (h, f),
        }


# ---- RMSNorm -------------------------------------------------------------------------------


def rms_norm(x: np.ndarray, g: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * g


def rms_norm_backward(x: np.ndarray, g: np.ndarray, eps: float, dy: np.ndarray):
    """``y_j = g_j x_j s`` with ``s = (m + eps)^(-1/2)``, ``m = sum_k x_k^2 / n``.

    ``dy/dx_k`` has the direct term ``g_k s`` and, through ``s``, ``ds/dx_k = -s^3 x_k / n``:
    ``dx_k = s g_k dy_k - (s^3 / n) x_k sum_j dy_j g_j x_j``; ``dg_j = sum_t dy_j x_j s``.
    """
    n = x.shape[-1]
    s = 1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
    dyg = dy * g
    dx = s * dyg - (s**3 / n) * x * np.sum(dyg * x, axis=-1, keepdims=True)
    dg = np.sum(dy * x * s, axis=0)
    return dx, dg


# ---- RoPE ----------------------------------------------------------------------------------


def rope_cos_sin(tokens: int, head_dim: int, theta: float):
    """``cos``/``sin`` ``[T, d]`` of ``emb = cat(freqs, freqs)``, as Hugging Face builds them."""
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    freqs = np.outer(np.arange(tokens, dtype=np.float64), inv_freq)
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb), np.sin(emb)


def rotate_half(x: np.ndarray) -> np.ndarray:
    half = x.shape[-1] // 2
    return np.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def rotate_half_transpose(y: np.ndarray) -> np.ndarray:
    """The adjoint of ``rotate_half`` (a linear map ``R``): ``R^T [y1, y2] = [y2, -y1]``."""
    half = y.shape[-1] // 2
    return np.concatenate([y[..., half:], -y[..., :half]], axis=-1)


def apply_rope(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """``x [T, heads, d]``: ``x cos + rotate_half(x) sin``."""
    return x * cos[:, None, :] + rotate_half(x) * sin[:, None, :]


def apply_rope_backward(dy: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """``y = C x + S R x`` (diagonal ``C``, ``S``), so ``dx = C dy + R^T (S dy)``."""
    return dy * cos[:, None, :] + rotate_half_transpose(dy * sin[:, None, :])


# ---- causal grouped-query attention --------------------------------------------------------


def repeat_kv(x: np.ndarray, n_rep: int) -> np.ndarray:
    """``[T, kv_heads, d]`` -> ``[T, kv_heads * n_rep, d]``, each kv head repeated in place
    (Hugging Face's ``repeat_kv``)."""
    return np.repeat(x, n_rep, axis=1)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray):
    """``q [T, H, d]``, ``k``/``v [T, KV, d]`` -> output ``[T, H, d]`` and probabilities ``[H, T, T]``."""
    t, heads, d = q.shape
    n_rep = heads // k.shape[1]
    kr, vr = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    scores = np.einsum("ihd,jhd->hij", q, kr) / np.sqrt(d)
    scores = np.where(np.tril(np.ones((t, t), dtype=bool)), scores, -np.inf)
    scores = scores - scores.max(axis=-1, keepdims=True)
    p = np.exp(scores)
    p /= p.sum(axis=-1, keepdims=True)
    return np.einsum("hij,jhd->ihd", p, vr), p


def attention_backward(q, k, v, p, dout):
    """``S = Q K^T / sqrt(d)``, ``P = softmax(S)`` (masked entries are 0 and stay 0), ``O = P V``.

    ``dV = P^T dO``, ``dP = dO V^T``; the softmax's Jacobian ``diag(p) - p p^T`` per row gives
    ``dS = P * (dP - rowsum(dP * P))``; ``dQ = dS K / sqrt(d)``, ``dK = dS^T Q / sqrt(d)``. A kv
    head shared by ``n_rep`` query heads receives the sum of their gradients (the adjoint of
    the repeat).
    """
    t, heads, d = q.shape
    kv_heads = k.shape[1]
    n_rep = heads // kv_heads
    kr, vr = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    dvr = np.einsum("hij,ihd->jhd", p, dout)
    dp = np.einsum("ihd,jhd->hij", dout, vr)
    ds = p * (dp - np.sum(dp * p, axis=-1, keepdims=True)) / np.sqrt(d)
    dq = np.einsum("hij,jhd->ihd", ds, kr)
    dkr = np.einsum("hij,ihd->jhd", ds, q)
    unrepeat = lambda a: a.reshape(t, kv_heads, n_rep, d).sum(axis=2)  # noqa: E731
    return dq, unrepeat(dkr), unrepeat(dvr)


# ---- SiLU-gated MLP ------------------------------------------------------------------------


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def swiglu_backward(gate: np.ndarray, up: np.ndarray, dy: np.ndarray):
    """``y = silu(g) u``; ``silu'(g) = s + g s (1 - s)`` with ``s = sigmoid(g)``."""
    s = sigmoid(gate)
    return dy * up * (s + gate * s * (1.0 - s)), dy * gate * s


# ---- the block -----------------------------------------------------------------------------


def block_forward(c: Config, w: dict[str, np.ndarray], x: np.ndarray):
    """The block's output ``y [T, hidden]`` and what the backward pass needs."""
    t = x.shape[0]
    h1 = rms_norm(x, w["attn_norm"], c.eps)
    cos, sin = rope_cos_sin(t, c.head_dim, c.rope_theta)
    q = apply_rope((h1 @ w["q"].T).reshape(t, c.heads, c.head_dim), cos, sin)
    k = apply_rope((h1 @ w["k"].T).reshape(t, c.kv_heads, c.head_dim), cos, sin)
    v = (h1 @ w["v"].T).reshape(t, c.kv_heads, c.head_dim)
    a, p = attention(q, k, v)
    a = a.reshape(t, c.heads * c.head_dim)
    x2 = x + a @ w["o"].T
    h2 = rms_norm(x2, w["mlp_norm"], c.eps)
    gate, up = h2 @ w["gate"].T, h2 @ w["up"].T
    act = gate * sigmoid(gate) * up
    y = x2 + act @ w["down"].T
    saved = dict(x=x, h1=h1, cos=cos, sin=sin, q=q, k=k, v=v, p=p, a=a, x2=x2, h2=h2)
    return y, saved | dict(gate=gate, up=up, act=act)


def block_backward(c: Config, w: dict[str, np.ndarray], saved: dict[str, np.ndarray], dy: np.ndarray):
    """``(dx, grads)`` for a loss whose gradient with respect to ``y`` is ``dy``.

    A linear ``Y = X W^T`` gives ``dX = dY W`` and ``dW = dY^T X``; a residual ``y = x + f(x)``
    passes ``dy`` to ``x`` unchanged and adds what flows back through ``f``.
    """
    s = saved
    t = dy.shape[0]
    g: dict[str, np.ndarray] = {}
    # MLP branch and its residual.
    g["down"] = dy.T @ s["act"]
    dgate, dup = swiglu_backward(s["gate"], s["up"], dy @ w["down"])
    g["gate"], g["up"] = dgate.T @ s["h2"], dup.T @ s["h2"]
    dh2 = dgate @ w["gate"] + dup @ w["up"]
    dx2_branch, g["mlp_norm"] = rms_norm_backward(s["x2"], w["mlp_norm"], c.eps, dh2)
    dx2 = dy + dx2_branch
    # Attention branch and its residual.
    g["o"] = dx2.T @ s["a"]
    da = (dx2 @ w["o"]).reshape(t, c.heads, c.head_dim)
    dq, dk, dv = attention_backward(s["q"], s["k"], s["v"], s["p"], da)
    dq = apply_rope_backward(dq, s["cos"], s["sin"]).reshape(t, -1)
    dk = apply_rope_backward(dk, s["cos"], s["sin"]).reshape(t, -1)
    dv = dv.reshape(t, -1)
    g["q"], g["k"], g["v"] = dq.T @ s["h1"], dk.T @ s["h1"], dv.T @ s["h1"]
    dh1 = dq @ w["q"] + dk @ w["k"] + dv @ w["v"]
    dx_branch, g["attn_norm"] = rms_norm_backward(s["x"], w["attn_norm"], c.eps, dh1)
    return dx2 + dx_branch, {name: g[name] for name in NAMES}


def directional_check(c: Config, w: dict[str, np.ndarray], x: np.ndarray, dy: np.ndarray, rng, h=1e-5):
    """For the loss ``L = <dy, y>``: per parameter (and ``x``) a random direction ``u``, the
    analytic ``<grad, u>`` and the central difference ``(L(+h u) - L(-h u)) / 2h``."""
    _, saved = block_forward(c, w, x)
    dx, grads = block_backward(c, w, saved, dy)

    def loss(w_, x_):
        return float(np.sum(dy * block_forward(c, w_, x_)[0]))

    out = {}
    for name, grad in [("x", dx), *grads.items()]:
        u = rng.standard_normal(grad.shape)
        if name == "x":
            plus, minus = loss(w, x + h * u), loss(w, x - h * u)
        else:
            plus = loss({**w, name: w[name] + h * u}, x)
            minus = loss({**w, name: w[name] - h * u}, x)
        out[name] = (float(np.sum(grad * u)), (plus - minus) / (2 * h))
    return out
