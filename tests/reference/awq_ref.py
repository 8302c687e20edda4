"""Independent numpy AWQ (Lin et al. 2023), written from llm-awq's ``auto_scale`` and
``auto_clip_layer`` with lowbit's RTN rule (see gptq_ref.group_params) for the quantizer.

Scale search: ``s_x = mean_t |x|``; for ``alpha = i / n_grid`` (i < n_grid),
``s = max(s_x^alpha, 1e-4) / sqrt(max * min)`` (float32); loss = mean over the group's outputs of
``(X W^T - (X / s) Q(W s)^T)^2`` (float64 here); the first least loss wins.
Clipping: per layer on ``W s`` and ``X / s`` with every ``tokens // clip_tokens``-th token;
``max_val = absmax * (1 - i / clip_grid)`` for ``i < max_shrink * clip_grid`` per row and group,
least mean squared partial output error wins (first on ties).
"""

from __future__ import annotations

import numpy as np

from reference.gptq_ref import rtn_dequantized as rtn


def scales_for_alpha(s_x: np.ndarray, alpha: float) -> np.ndarray:
    s = np.maximum(np.power(s_x, np.float32(alpha)), np.float32(1e-4)).astype(np.float32)
    return (s / np.sqrt(s.max() * s.min())).astype(np.float32)


def search_scales(
    x: np.ndarray, weights: list[np.ndarray], bits: int, group_size: int, symmetric: bool, n_grid: int = 20
) -> tuple[float, np.ndarray, list[float]]:
    """``(alpha, s, grid losses)``."""
    s_x = np.abs(x.astype(np.float64)).mean(axis=0).astype(np.float32)
    xd = x.astype(np.float64)
    best = (np.inf, 0.0, np.ones(x.shape[1], dtype=np.float32))
    losses = []
    for i in range(n_grid):
        alpha = i / n_grid
        s = scales_for_alpha(s_x, alpha)
        total, count = 0.0, 0
        for w in weights:
            q = rtn(w * s, bits, group_size, symmetric).astype(np.float64)
            org = xd @ w.astype(np.float64).T
            new = (xd / s) @ q.T
            total += float(np.sum((org - new) ** 2))
            count += org.size
        loss = total / count
        losses.append(loss)
        if loss < best[0]:
            best = (loss, alpha, s)
    return best[1], best[2], losses


def search_clip(
    ws: np.ndarray,
    xs: np.ndarray,
    bits: int,
    group_size: int,
    symmetric: bool,
    clip_grid: int = 20,
    max_shrink: float = 0.5,
    clip_tokens: int = 512,
) -> np.ndarray:
    """Best clipping bound per ``[row, group]`` of scaled weights ``ws`` for scaled inputs ``xs``."""
    rows, cols = ws.shape
    g = cols if group_size <= 0 else min(group_size, cols)
    groups = -(-cols // g)
    step = max(xs.shape[0] // max(clip_tokens, 1), 1)
    sub = xs[::step].astype(np.float64)
    absmax = np.stack([np.abs(ws[:, k * g : (k + 1) * g]).max(axis=1) for k in range(groups)], axis=1)
    best = absmax.copy()
    best_err = np.full((rows, groups), np.inf)
    for i_s in range(max(int(np.float32(max_shrink) * clip_grid), 1)):
        max_val = (absmax * np.float32(1 - i_s / clip_grid)).astype(np.float32)
        bound = np.repeat(max_val, g, axis=1)[:, :cols]
        q = rtn(np.clip(ws, -bound, bound), bits, group_size, symmetric)
        delta = (ws - q).astype(np.float64)
        for k in range(groups):
            out = sub[:, k * g : (k + 1) * g] @ delta[:, k * g : (k + 1) * g].T  # tokens x rows
            err = (out**2).mean(axis=0)
            better = err < best_err[:, k]
            best_err[better, k] = err[better]
            best[better, k] = max_val[better, k]
    return best
