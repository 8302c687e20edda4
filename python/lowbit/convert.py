"""``lowbit.convert``: any model lowbit reads, written in another format, refused when lossy."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from . import _lowbit
from .export import ExportReport, TensorExport

PathLike = Union[str, "os.PathLike[str]"]


def convert(
    model: PathLike,
    out: PathLike,
    *,
    format: str,
    allow_requantize: bool = False,
    gguf_type: str | None = None,
) -> ExportReport:
    """Convert ``model`` (anything :func:`lowbit.load` reads: a lowbit directory, a Hugging Face
    f32/f16 directory, a GGUF file, an HF GPTQ / AWQ / compressed-tensors directory) to ``out`` in
    ``format``: ``"lowbit"`` (a directory as ``lowbit quantize`` writes), ``"gguf"``, ``"gptq"``,
    ``"awq"`` or ``"compressed-tensors"`` (see :func:`lowbit.export`).

    Every tensor's route and difference is computed before anything is written; if any tensor's
    values would change (requantized, or Q4_1's rounded minimum) the conversion is refused with
    nothing written, naming the first such tensors, unless ``allow_requantize``. ``gguf_type``
    (``"Q4_K"``, ``"Q8_0"``...) requantizes dense weight matrices in a GGUF output. The output
    is written atomically. The report's ``notes`` hold the input's load warnings and the
    exporter's notes.

    Raises:
        UnsupportedError: an unknown format, a lossy conversion without ``allow_requantize``, or
            what the target cannot store (see :func:`lowbit.export`).
    """
    raw = _lowbit.convert(os.fspath(model), os.fspath(out), format, allow_requantize, gguf_type)
    return ExportReport(
        path=Path(out),
        bytes=raw["bytes"],
        tensors=[TensorExport(**t) for t in raw["tensors"]],
        notes=list(raw["notes"]),
    )
