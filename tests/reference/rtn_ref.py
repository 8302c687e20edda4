"""Independent numpy implementation of lowbit's formats, written from docs/format.md.

It shares no code with the Rust crates: agreement between the two is the test that the spec,
the Rust code and this file say the same thing.
"""

from __future__ import annotations

import numpy as np

# The 16 NF4 values published with QLoRA (bitsandbytes `create_normal_map()`), as float32.
NF4 = np.array(
    [
        -1.0,
        -0.6961928009986877,
        -0.5250730514526367,
        -0.39491748809814453,
        -0.28444138169288635,
        -0.18477343022823334,
        -0.09105003625154495,
        0.0,
        0.07958029955625534,
        0.16093020141124725,
        0.24611230194568634,
        0.33791524171829224,
        0.44070982933044434,
        0.5626170039176941,
        0.7229568362236023,
        1.0,
    ],
    dtype=np.float32,
)
_E2M1 = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0], dtype=np.float32) / np.float32(6.0)
FP4 = np.concatenate([_E2M1, -_E2M1]).astype(np.float32)


def group_params(
    groups: np.ndarray, bits: int, symmetric: bool, scale_dtype: str
) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero of each row of ``groups`` (float32 arithmetic, as the spec states)."""
    groups = groups.astype(np.float32)
    maxq = np.float32(2**bits - 1)
    lo = np.minimum(groups.min(axis=1), np.float32(0))
    hi = np.maximum(groups.max(axis=1), np.float32(0))
    if symmetric:
        absmax = np.maximum(np.abs(lo), np.abs(hi))
        raw = absmax / np.float32(2 ** (bits - 1) - 1)
    else:
        raw = (hi - lo) / maxq
    scale = raw.astype(np.float16).astype(np.float32) if scale_dtype == "f16" else raw
    scale = np.where(scale == 0, np.float32(np.float16(2**-24)), scale)
    scale = np.where(raw == 0, np.float32(1.0), scale).astype(np.float32)
    if symmetric:
        zero = np.full(scale.shape, 2 ** (bits - 1), dtype=np.float32)
    else:
        zero = np.clip(np.rint(-lo / scale), 0, maxq).astype(np.float32)
    return scale, zero


def group_ids(shape: tuple[int, ...], group_size: int | str) -> np.ndarray:
    """The scale group of each element (flat, row-major) of a tensor viewed as [rows, cols]."""
    rows, cols = int(np.prod(shape[:-1])), shape[-1]
    if group_size == "tensor":
        return np.zeros(rows * cols, dtype=np.int64)
    if group_size == "channel":
        return np.repeat(np.arange(rows), cols)
    g = int(group_size)
    per_row = -(-cols // g)  # the last group of a row may be shorter (GPTQ convention)
    return (np.arange(rows)[:, None] * per_row + np.arange(cols)[None, :] // g).reshape(-1)


def rtn(
    w: np.ndarray, bits: int, group_size: int | str, symmetric: bool, scale_dtype: str = "f16"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Codes (uint8, w's shape), scales and zeros (float32, one per group) of min-max RTN."""
    gid = group_ids(w.shape, group_size)
    values = w.reshape(-1).astype(np.float32)
    ngroups = int(gid.max()) + 1
    scale = np.empty(ngroups, dtype=np.float32)
    zero = np.empty(ngroups, dtype=np.float32)
    for k in range(ngroups):
        s, z = group_params(values[gid == k][None, :], bits, symmetric, scale_dtype)
        scale[k], zero[k] = s[0], z[0]
    q = np.rint(values / scale[gid]) + zero[gid]
    codes = np.clip(q, 0, 2**bits - 1).astype(np.uint8)
    return codes.reshape(w.shape), scale, zero


def dequantize(codes: np.ndarray, scale: np.ndarray, zero: np.ndarray, group_size: int | str) -> np.ndarray:
    """``(q - zero) * scale`` with the group layout of :func:`rtn`."""
    gid = group_ids(codes.shape, group_size)
    q = codes.reshape(-1).astype(np.float32)
    return ((q - zero[gid]) * scale[gid]).reshape(codes.shape).astype(np.float32)


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """The LSB-first bitstream of ``codes`` in row-major order."""
    flat = codes.reshape(-1).astype(np.uint8)
    bitplanes = ((flat[:, None] >> np.arange(bits, dtype=np.uint8)) & 1).astype(np.uint8)
    stream = bitplanes.reshape(-1)
    pad = (-len(stream)) % 8
    stream = np.concatenate([stream, np.zeros(pad, dtype=np.uint8)])
    return np.packbits(stream.reshape(-1, 8), axis=1, bitorder="little").reshape(-1)


def unpack(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    """Inverse of :func:`pack`."""
    stream = np.unpackbits(packed.astype(np.uint8), bitorder="little")[: n * bits].reshape(n, bits)
    return (stream.astype(np.uint16) << np.arange(bits, dtype=np.uint16)).sum(axis=1).astype(np.uint8)


def codebook_quantize(w: np.ndarray, table: np.ndarray, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Codes and f32 absmax of QLoRA block-wise codebook quantization (nearest entry, ties low)."""
    flat = w.reshape(-1).astype(np.float32)
    nblocks = -(-len(flat) // block_size)
    absmax = np.array(
        [np.abs(flat[i * block_size : (i + 1) * block_size]).max() for i in range(nblocks)], dtype=np.float32
    )
    c = np.repeat(absmax, block_size)[: len(flat)]
    x = np.divide(flat, c, out=np.zeros_like(flat), where=c != 0)
    codes = np.argmin(np.abs(x[:, None] - table[None, :]), axis=1).astype(np.uint8)
    return codes, absmax


def double_quantize(absmax: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.float32]:
    """Int8 codes, per-256 f32 scales and the f32 offset of double-quantized absmax values."""
    absmax = absmax.astype(np.float32)
    offset = np.float32(absmax.astype(np.float64).mean())
    centred = (absmax - offset).astype(np.float32)
    scales = np.empty(-(-len(absmax) // 256), dtype=np.float32)
    codes = np.empty(len(absmax), dtype=np.int8)
    for b in range(len(scales)):
        block = centred[b * 256 : (b + 1) * 256]
        m = np.abs(block).max()
        scales[b] = np.float32(1.0) if m == 0 else m / np.float32(127.0)
        codes[b * 256 : (b + 1) * 256] = np.clip(np.rint(block / scales[b]), -127, 127).astype(np.int8)
    return codes, scales, offset
