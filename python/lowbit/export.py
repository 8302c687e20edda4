"""``lowbit.export``: write a model in a format other runtimes load (GGUF for llama.cpp; HF GPTQ,
AWQ GEMM or compressed-tensors ``pack-quantized`` for transformers / vLLM)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Union

import numpy as np
import numpy.typing as npt

from . import _lowbit
from ._lowbit import UnsupportedError
from .progress import Progress

PathLike = Union[str, "os.PathLike[str]"]


def imatrix(
    model: PathLike,
    calib: PathLike,
    *,
    samples: int | None = None,
    seqlen: int = 512,
    progress: Progress | None = None,
) -> dict[str, npt.NDArray[np.float32]]:
    """The importance matrix :func:`export` weights GGUF requantization with (``imatrix_text``):
    for every block linear (``model.layers.0.self_attn.q_proj.weight``...), the mean over the
    calibration tokens of each input column's square, as ``llama-imatrix`` computes it.
    ``samples`` windows (default 32) of ``seqlen`` tokens (at most the model's context) are drawn
    from ``calib`` as calibration windows are (a ``[n, seqlen]`` ``.npy`` is taken as the windows).
    """
    return _lowbit.imatrix_of(os.fspath(model), os.fspath(calib), samples, seqlen, progress)


@dataclass(frozen=True)
class TensorExport:
    """One exported tensor: how lowbit stored it, what it became, and the measured difference."""

    name: str
    """The tensor's name in the output (``blk.0.attn_q.weight``; for GPTQ the module,
    ``model.layers.0.self_attn.q_proj``, or the dense tensor)."""
    source: str
    """lowbit's storage (``int4 g32 sym f16``, ``f32``)."""
    type: str
    """The output type (``Q4_0``, ``Q8_0``, ``F32``..., ``gptq int4 g64 v1``, ``awq int4 g64``,
    ``pack-quantized int4 g64 sym``)."""
    path: Literal["exact", "min-rounded", "requantized", "requantized-imatrix"]
    """``exact`` (codes and scales repacked, or a dense tensor kept), ``min-rounded`` (Q4_1:
    each group's minimum ``-zero * scale`` rounded to f16), ``requantized`` (llama.cpp's
    reference quantizer on lowbit's dequantized weights) or ``requantized-imatrix`` (llama.cpp's
    importance-weighted quantizer, with the export's importance matrix)."""
    max_abs_diff: float
    """Largest |exported - lowbit| over the tensor, measured by dequantizing what was written."""


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export` wrote."""

    path: Path
    bytes: int
    tensors: list[TensorExport]
    checkpoint_format: str | None = None
    """HF formats only: ``gptq`` (v1 zero points, symmetric models) or ``gptq_v2``; ``gemm``
    (AWQ); ``pack-quantized`` (compressed-tensors)."""
    notes: list[str] = field(default_factory=list)
    """HF formats only: loaders that will reject or fall back on the export, tensors dequantized."""
    imatrix_tokens: int = 0
    """GGUF with ``imatrix_text``: calibration tokens the importance matrix is averaged over."""


def export(
    model: PathLike,
    out: PathLike,
    *,
    format: Literal["gguf", "gptq", "awq", "compressed-tensors"] = "gguf",
    dense_type: str | None = None,
    imatrix_text: PathLike | None = None,
    imatrix_samples: int | None = None,
    progress: Progress | None = None,
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

    ``imatrix_text`` (a calibration file, as ``quantize_model``'s ``calib``: text, ``.jsonl``
    or token ids) makes the requantization importance-weighted, as ``llama-quantize --imatrix``:
    lowbit runs the model over ``imatrix_samples`` windows of 512 tokens (default 32) drawn as
    calibration windows are, takes each block linear's mean squared input per column, and
    requantizes with llama.cpp's weighted quantizers (Q4_0/Q4_1/Q5_0/Q5_1, Q2_K to Q6_K; the
    tensors are reported as ``requantized-imatrix``). ``progress`` sees phases ``calibrate`` and
    ``imatrix``.

    With ``format="gptq"`` the model must be a lowbit quantized model with integer codes (2, 4 or
    8 bits, f16 scales, one group size whose groups tile every row) and ``out`` a directory that
    does not exist or is empty: every block linear is repacked exactly as ``qweight`` /
    ``qzeros`` / ``scales`` / ``g_idx`` (``desc_act: false``), symmetric models with v1 zero
    points and asymmetric ones as ``gptq_v2``; the embedding and LM head stay dense (a
    quantized one is dequantized to f32, listed in ``notes``). See docs/format.md.

    ``format="awq"`` writes AutoAWQ's GEMM layout (4-bit only; ``qweight`` packed along the
    outputs with the ``[0,2,4,6,1,3,5,7]`` interleave, zero points stored explicitly, also for
    symmetric models); ``format="compressed-tensors"`` writes ``pack-quantized`` (2, 4 or 8
    bits; signed codes offset by ``2^(b-1)``, zero points packed along dim 0 for asymmetric
    models). Both need groups that tile every row and f16 scales, like GPTQ.

    Raises:
        FileNotFoundError: a missing model.
        UnsupportedError: another format, an architecture other than llama, an unknown type; for
            the HF formats a model the format cannot store exactly (not quantized, codebook, 3-bit
            for GPTQ and compressed-tensors, not 4-bit for AWQ, f32 scales, a group size that does
            not divide a row), with the constraint named.
        LowbitError: a model without a tokenizer, non-finite weights.
    """
    if format in ("gptq", "awq", "compressed-tensors"):
        if dense_type is not None or imatrix_text is not None:
            raise UnsupportedError("dense_type and imatrix_text apply to GGUF export only")
        g = _lowbit.export_hf(os.fspath(model), os.fspath(out), format)
        return ExportReport(
            path=Path(out),
            bytes=g["bytes"],
            tensors=[TensorExport(**t) for t in g["tensors"]],
            checkpoint_format=g["checkpoint_format"],
            notes=list(g["notes"]),
        )
    if format != "gguf":
        raise UnsupportedError(
            f"export format {format!r}: lowbit exports 'gguf', 'gptq', 'awq' and 'compressed-tensors'"
        )
    text = None if imatrix_text is None else os.fspath(imatrix_text)
    raw = _lowbit.export_gguf(os.fspath(model), os.fspath(out), dense_type, text, imatrix_samples, progress)
    tensors = [TensorExport(**t) for t in raw["tensors"]]
    tokens = raw["imatrix_tokens"]
    return ExportReport(path=Path(out), bytes=raw["bytes"], tensors=tensors, imatrix_tokens=tokens)
