"""Independent numpy GPTQ, written from the paper (Frantar et al. 2022, Algorithm 1) and the
shape of its reference code (``gptq.py``: lazy blocks, ``find_params`` as the sweep reaches a
group, ``static_groups``, ``actorder``), with lowbit's conventions:

* ``H`` arrives as given; dead inputs (``H_ii == 0``) get ``H_ii = 1`` and a zero weight column;
* act-order permutes columns by descending ``diag(H)`` (stable: ties keep the original order);
* damping ``lambda = percdamp * mean(diag H)``, multiplied by 10 (at least ``1e-8 * mean``) while
  a Cholesky factorization fails, at most 6 times;
* ``U = chol(chol_inverse(chol(H + lambda I)), upper)`` in float64;
* groups are groups of consecutive *original* columns (the last one may be shorter); without
  static groups a group's parameters come from the current, error-updated weights of all its
  columns when the sweep first reaches one of them (pending lazy updates applied first); with
  static groups or per-channel, from the (dead-zeroed) original weights before the sweep;
* the sweep runs in float64; codes and group parameters use lowbit's float32 RTN rule: asym range
  ``[min(min, 0), max(max, 0)]``, ``scale = (hi - lo) / maxq`` rounded to float16, ``zero =
  clip(rint(-lo / scale), 0, maxq)``; sym ``scale = absmax / (2^(b-1) - 1)``, ``zero = 2^(b-1)``;
  ``q = clip(rint(w / scale) + zero, 0, maxq)``, ``w ~ (q - zero) * scale``, all float32.

It shares no code with the Rust crates.
"""

from __future__ import annotations

import numpy as np

from . import rtn_ref


class SingularHessianError(ValueError):
    """The damped Hessian stays singular."""


def group_params(
    vals: np.ndarray, bits: int, symmetric: bool, scale_dtype: str = "f16"
) -> tuple[np.ndarray, np.ndarray]:
    """Per-row scale and zero (float32) of ``vals[rows, n]``: lowbit's RTN rule (rtn_ref)."""
    with np.errstate(over="ignore"):
        scale, zero = rtn_ref.group_params(vals, bits, symmetric, scale_dtype)
    if not np.all(np.isfinite(scale)):
        raise OverflowError("scale does not fit float16")
    return scale, zero


def quantize(w: np.ndarray, scale: np.ndarray, zero: np.ndarray, bits: int) -> np.ndarray:
    """Codes (uint8) of float32 ``w`` under per-element scale and zero."""
    q = np.rint(w.astype(np.float32) / scale) + zero
    return np.clip(q, 0, 2**bits - 1).astype(np.uint8)


def dequantize(q: np.ndarray, scale: np.ndarray, zero: np.ndarray) -> np.ndarray:
    """``(q - zero) * scale`` in float32."""
    return ((q.astype(np.float32) - zero) * scale).astype(np.float32)


def inverse_cholesky_upper(
    h: np.ndarray, percdamp: float = 0.01, factor: float = 10.0, max_raises: int = 6
) -> tuple[np.ndarray, float, int]:
    """``U`` with ``(H + lambda I)^-1 = U^T U``; returns ``(U, lambda, raises)``."""
    n = h.shape[0]
    scale = max(abs(float(np.mean(np.diag(h)))), np.finfo(np.float64).tiny)
    lam = percdamp * scale
    for attempt in range(max_raises + 1):
        if attempt:
            lam = max(lam * factor, 1e-8 * scale)
        try:
            lower = np.linalg.cholesky(h + lam * np.eye(n))
            linv = np.linalg.inv(lower)
            hinv = linv.T @ linv  # torch.cholesky_inverse
            u = np.linalg.cholesky(hinv).T
        except np.linalg.LinAlgError:
            continue
        if np.all(np.isfinite(u)):
            return u, lam, attempt
    raise SingularHessianError(f"Hessian stays singular up to lambda={lam}")


def gptq(
    w: np.ndarray,
    h: np.ndarray,
    bits: int,
    group_size: int,
    symmetric: bool,
    act_order: bool = False,
    static_groups: bool = False,
    percdamp: float = 0.01,
    block_size: int = 128,
    scale_dtype: str = "f16",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """GPTQ of ``w[rows, cols]`` against ``h[cols, cols]``.

    ``group_size <= 0`` means per channel. Returns ``(codes uint8 [rows, cols] in original column
    order, scales float32 [rows, groups], zeros uint8 [rows, groups], loss)`` where ``loss`` is the
    GPTQ reference's ``sum((w - q)^2 / U_kk^2) / 2``.
    """
    w = np.array(w, dtype=np.float32)
    h = np.array(h, dtype=np.float64)
    rows, cols = w.shape
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    g = cols if group_size <= 0 else min(group_size, cols)
    ngroups = -(-cols // g)
    scales = np.ones((rows, ngroups), dtype=np.float32)
    zeros = np.zeros((rows, ngroups), dtype=np.float32)
    ready = np.zeros(ngroups, dtype=bool)
    if static_groups or group_size <= 0:
        for grp in range(ngroups):
            blk = w[:, grp * g : grp * g + g]
            scales[:, grp], zeros[:, grp] = group_params(blk, bits, symmetric, scale_dtype)
        ready[:] = True

    perm = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(cols)
    invperm = np.argsort(perm)
    u, _, _ = inverse_cholesky_upper(h[perm][:, perm], percdamp)

    wp = w[:, perm].astype(np.float64)
    codes = np.zeros((rows, cols), dtype=np.uint8)
    loss = 0.0
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        count = i2 - i1
        w1 = wp[:, i1:i2].copy()
        err1 = np.zeros((rows, count))
        for i in range(count):
            k = i1 + i
            c = perm[k]
            grp = c // g
            if not ready[grp]:
                cs = np.arange(grp * g, min(grp * g + g, cols))
                vals = np.empty((rows, len(cs)))
                for j, p in enumerate(invperm[cs]):
                    if p < i2:
                        vals[:, j] = w1[:, p - i1]
                    else:  # a later block: apply this block's pending updates first
                        vals[:, j] = wp[:, p] - err1[:, :i] @ u[i1:k, p]
                scales[:, grp], zeros[:, grp] = group_params(vals, bits, symmetric, scale_dtype)
                ready[grp] = True
            col = w1[:, i]
            q = quantize(col, scales[:, grp], zeros[:, grp], bits)
            deq = dequantize(q, scales[:, grp], zeros[:, grp]).astype(np.float64)
            d = u[k, k]
            err = (col - deq) / d
            loss += float(np.sum(err * err) / 2)
            w1[:, i:] -= np.outer(err, u[k, k:i2])
            err1[:, i] = err
            codes[:, c] = q
        wp[:, i2:] -= err1 @ u[i1:i2, i2:]
    return codes, scales, zeros.astype(np.uint8), loss


def rtn_dequantized(w: np.ndarray, bits: int, group_size: int, symmetric: bool) -> np.ndarray:
    """Min-max RTN dequantized weights with the same group rule (for error comparisons)."""
    cols = w.shape[1]
    g = cols if group_size <= 0 else min(group_size, cols)
    out = np.empty_like(w, dtype=np.float32)
    for start in range(0, cols, g):
        blk = w[:, start : start + g].astype(np.float32)
        s, z = group_params(blk, bits, symmetric)
        s, z = s[:, None], z[:, None]
        out[:, start : start + g] = dequantize(quantize(blk, s, z, bits), s, z)
    return out
