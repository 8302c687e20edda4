"""``lowbit.export``: write a model in a format other runtimes load (GGUF for llama.cpp)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Union

from . import _lowbit
from ._lowbit import UnsupportedError

PathLike = Union[str, "os.PathLike[str]"]


@dataclass(frozen=True)
class TensorExport:
    """One exported tensor: how lowbit stored it, what it became, and the measured difference."""

    name: str
    """The tensor's name in the output (``blk.0.attn_q.weight``)."""
    source: str
    """lowbit's storage (``int4 g32 sym f16``, ``f32``)."""
    type: str
    """The output type (``Q4_0``, ``Q8_0``, ``F32``...)."""
    path: Literal["exact", "min-rounded", "requantized"]
    """``exact`` (codes and scales repacked, or a dense tensor kept), ``min-rounded`` (Q4_1:
    each group's minimum ``-zero * scale`` rounded to f16) or ``requantized`` (llama.cpp's
    reference quantizer on lowbit's dequantized weights)."""
    max_abs_diff: float
    """Largest |exported - lowbit| over the tensor, measured by dequantizing what was written."""


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export` wrote."""

    path: Path
    bytes: int
    tensors: list[TensorExport]


def export(
    model: PathLike,
    out: PathLike,
    *,
    format: Literal["gguf"] = "gguf",
    dense_type: str | None = None,
) -> ExportReport:
    """Export a model for another runtime.

    ``model`` is anything :func:`lowbit.load` reads: a ``lowbit quantize`` output directory, a
    Hugging Face directory or a GGUF file. With ``format="gguf"`` the output is a llama GGUF for
    llama.cpp: lowbit's symmetric 4-bit and 8-bit codes are repacked losslessly as Q4_0 / Q8_0
    (asymmetric 4-bit as Q4_1, rounding each group's minimum to f16 once); other schemes are
    requantized with llama.cpp's reference quantizers (Q4_K, Q6_K for the embedding, Q8_0 for
    8-bit, with llama.cpp's fallbacks for rows that are not a multiple of 256); dense weights
    keep their dtype unless ``dense_type`` (``"Q8_0"``, ``"Q4_0"``, ``"Q4_K"``...) is given.
    The file is written under a temporary name and renamed, so a failure leaves none.

    Raises:
        FileNotFoundError: a missing model.
        UnsupportedError: another format, an architecture other than llama, an unknown type.
        LowbitError: a model without a tokenizer, non-finite weights.
    """
    if format != "gguf":
        raise UnsupportedError(f"export format {format!r}: lowbit exports 'gguf'")
    raw = _lowbit.export_gguf(os.fspath(model), os.fspath(out), dense_type)
    tensors = [TensorExport(**t) for t in raw["tensors"]]
    return ExportReport(path=Path(out), bytes=raw["bytes"], tensors=tensors)
