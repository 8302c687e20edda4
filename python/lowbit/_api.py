"""The documented Python surface over the native module."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, Union, overload

import numpy as np
import numpy.typing as npt

from . import _lowbit
from ._lowbit import QTensor
from .model import Model

GroupSize = Union[int, Literal["channel", "tensor"]]
PathLike = Union[str, "os.PathLike[str]"]


def quantize(
    weights: npt.NDArray[np.float32] | npt.NDArray[np.float16],
    *,
    bits: int = 4,
    group_size: GroupSize = 128,
    symmetric: bool = False,
    format: Literal["int", "nf4", "fp4"] = "int",
    scale_dtype: Literal["f16", "f32"] = "f16",
    clip: Literal["minmax", "mse"] = "minmax",
    block_size: int = 64,
    double_quant: bool = False,
    allow_partial_group: bool = False,
) -> QTensor:
    """Quantize a float32 or float16 array with round-to-nearest.

    The array is read as a matrix ``[prod(shape[:-1]), shape[-1]]`` (rows = output channels).
    A C-contiguous float32 array is borrowed without copying; float16 is widened once.

    Args:
        weights: the tensor to quantize (rank >= 1, finite).
        bits: 2, 3, 4 or 8 for ``format="int"``; 4 for the codebooks.
        group_size: elements per group along the last axis (a positive int that divides it),
            ``"channel"`` for one scale per row, ``"tensor"`` for a single scale (the same
            spelling as :func:`lowbit.quantize_model` and ``lowbit quantize --group-size``).
        symmetric: no zero point (implied ``2**(bits-1)``); otherwise a uint8 zero per group.
        format: ``"int"`` (uniform grid), ``"nf4"`` or ``"fp4"`` (QLoRA codebooks).
        scale_dtype: storage of scales, ``"f16"`` (default) or ``"f32"``.
        clip: ``"minmax"`` ranges or an ``"mse"`` search over shrunken ranges.
        block_size: elements per absmax block for the codebooks (QLoRA uses 64).
        double_quant: quantize codebook absmax values to 8 bits in blocks of 256.
        allow_partial_group: let the last group of each row be shorter when ``group_size`` does
            not divide the row (the GPTQ convention: a 576-wide row at group 128 has groups of
            128, 128, 128, 128 and 64). Off by default, so a mistyped group size is an error.

    Raises:
        NonFiniteError: NaN or Inf weights.
        ShapeError: empty or 0-d arrays, non-contiguous arrays, a group size that does not
            divide the last axis.
        UnsupportedError: unsupported bits, dtype, format or option.
    """
    return _lowbit.quantize(
        weights,
        format=format,
        bits=bits,
        group_size=group_size,
        symmetric=symmetric,
        scale_dtype=scale_dtype,
        clip=clip,
        block_size=block_size,
        double_quant=double_quant,
        allow_partial_group=allow_partial_group,
    )


def save(
    path: PathLike,
    tensors: QTensor | Mapping[str, QTensor],
    *,
    metadata: Mapping[str, str] | None = None,
) -> None:
    """Write QTensors to a safetensors file atomically (a lone tensor is named ``"weight"``)."""
    named = {"weight": tensors} if isinstance(tensors, QTensor) else dict(tensors)
    _lowbit.save_tensors(os.fspath(path), named, dict(metadata) if metadata else None)


def load_tensors(path: PathLike) -> dict[str, QTensor]:
    """Read every QTensor of a file written by :func:`save`, by name.

    Raises:
        CorruptFileError: the file is truncated, corrupted or not a lowbit file.
        FileNotFoundError: the path does not exist.
    """
    tensors, _metadata = _lowbit.load_tensors(os.fspath(path))
    return tensors


@overload
def load(path: PathLike, *, kind: Literal["tensors"]) -> dict[str, QTensor]: ...
@overload
def load(path: PathLike, *, kind: Literal["model"]) -> Model: ...
@overload
def load(path: PathLike, *, kind: None = None) -> dict[str, QTensor] | Model: ...
def load(path: PathLike, *, kind: Literal["tensors", "model"] | None = None) -> dict[str, QTensor] | Model:
    """Load a model or a tensor file.

    A directory (Hugging Face layout or a lowbit checkpoint) or a ``.gguf`` file gives a
    :class:`~lowbit.Model`; any other file is read as a lowbit tensor file (see :func:`save`)
    and gives its QTensors by name. ``kind`` forces one reading.
    """
    p = Path(os.fspath(path))
    if kind is None:
        kind = "model" if p.is_dir() or p.suffix.lower() == ".gguf" else "tensors"
    if kind == "model":
        return Model.load(p)
    return load_tensors(p)


def load_metadata(path: PathLike) -> dict[str, str]:
    """The string metadata stored beside the tensors of a lowbit file."""
    return _lowbit.load_tensors(os.fspath(path))[1]


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text_atomic(path: PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename, so readers never see
    a partial file."""
    import tempfile

    target = Path(os.fspath(path))
    fd, tmp = tempfile.mkstemp(dir=target.parent or ".", prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 is not what a user expects
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
