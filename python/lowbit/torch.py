"""PyTorch adapter (the ``lowbit[torch]`` extra): quantization-aware training in PyTorch with
lowbit's exact rounding.

:func:`prepare_qat` swaps a model's ``nn.Linear`` layers for :class:`FakeQuantLinear`, whose
forward pass uses the weight rounded exactly as :func:`lowbit.quantize` rounds it (min-max range
that contains zero, the scale rounded to its storage dtype first, codes rounded half to even,
``(q - zero) * scale`` in f32) and whose backward pass is the straight-through estimator.
:func:`convert` turns the trained model into lowbit :class:`~lowbit.QTensor` objects, bit for
bit the weights the training saw, or into a lowbit model directory.

>>> model = lowbit.torch.prepare_qat(model, QatScheme(bits=4, group_size=128))  # doctest: +SKIP
>>> ...  # train as usual
>>> lowbit.torch.convert(model, "model-int4")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ._api import quantize
from ._lowbit import LowbitError, NonFiniteError, QTensor, ShapeError, UnsupportedError

#: The smallest positive f16 (a scale that underflows f16 becomes it, as in lowbit-core).
_F16_TINY = 2.0**-24


@dataclass(frozen=True)
class QatScheme:
    """The integer scheme trained for: ``bits`` 2, 3, 4 or 8; ``group_size`` a positive int
    dividing each layer's input width, or ``"channel"``; ``symmetric`` (zero point
    ``2**(bits-1)``) or a uint8 zero per group; scales stored as ``"f16"`` or ``"f32"``."""

    bits: int = 4
    group_size: int | str = 128
    symmetric: bool = False
    scale_dtype: str = "f16"

    def __post_init__(self) -> None:
        if self.bits not in (2, 3, 4, 8):
            raise UnsupportedError(f"QatScheme: bits must be 2, 3, 4 or 8, got {self.bits!r}")
        if self.scale_dtype not in ("f16", "f32"):
            raise UnsupportedError(f"QatScheme: scale_dtype must be 'f16' or 'f32', got {self.scale_dtype!r}")
        g = self.group_size
        if g != "channel" and not (isinstance(g, int) and not isinstance(g, bool) and g > 0):
            raise UnsupportedError(f"QatScheme: group_size must be a positive int or 'channel', got {g!r}")

    def group_len(self, cols: int) -> int:
        g = cols if self.group_size == "channel" else int(self.group_size)
        if cols % g:
            raise ShapeError(f"group size {g} does not divide the input width {cols}")
        return g


def dequantized(weight: torch.Tensor, scheme: QatScheme) -> torch.Tensor:
    """``weight`` (rows = output channels) quantized and dequantized with lowbit's round-to-
    nearest: equal bit for bit to ``lowbit.quantize(w, ...).dequantize()``. f32, no gradient."""
    w = weight.detach().to(torch.float32)
    rows = w.reshape(-1, w.shape[-1])
    g = scheme.group_len(rows.shape[1])
    groups = rows.reshape(rows.shape[0], -1, g)
    if not bool(torch.isfinite(groups).all()):
        raise NonFiniteError("fake quantization: the weight holds NaN or Inf")
    maxq = 2**scheme.bits - 1
    lo = groups.amin(-1).clamp(max=0.0)
    hi = groups.amax(-1).clamp(min=0.0)
    if scheme.symmetric:
        hi = torch.maximum(hi, -lo)
        raw = hi / float(2 ** (scheme.bits - 1) - 1)
    else:
        raw = (hi - lo) / float(maxq)
    rounded = raw.to(torch.float16).to(torch.float32) if scheme.scale_dtype == "f16" else raw
    if not bool(torch.isfinite(rounded).all()):
        raise LowbitError("fake quantization: a group's scale overflows f16 (use scale_dtype='f32')")
    scale = torch.where(raw == 0, 1.0, torch.where(rounded == 0, _F16_TINY, rounded))
    if scheme.symmetric:
        zero = torch.full_like(scale, float(2 ** (scheme.bits - 1)))
    else:
        zero = torch.round(-lo / scale).clamp(0, maxq)
    q = (torch.round(groups / scale[..., None]) + zero[..., None]).clamp(0, maxq)
    return ((q - zero[..., None]) * scale[..., None]).reshape(w.shape)


class FakeQuantLinear(nn.Module):  # type: ignore[misc]  # torch is untyped where it is absent
    """An ``nn.Linear`` whose forward pass sees its weight rounded as lowbit stores it; the
    gradient passes straight through the rounding to the f32 weight. Holds the original
    ``weight`` and ``bias`` parameters under the same names, so state dicts do not change."""

    def __init__(self, linear: nn.Linear, scheme: QatScheme) -> None:
        super().__init__()
        scheme.group_len(linear.in_features)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        self.scheme = scheme

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        wq = w + (dequantized(w, self.scheme).to(w.dtype) - w).detach()
        return nn.functional.linear(x, wq.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, scheme={self.scheme}"


def prepare_qat(
    model: nn.Module, scheme: QatScheme | None = None, *, skip: Iterable[str] = ("lm_head",)
) -> nn.Module:
    """Replaces every ``nn.Linear`` of ``model`` (in place) except those whose name ends with
    one of ``skip`` by a :class:`FakeQuantLinear` of ``scheme``; returns ``model``.

    Raises ShapeError naming the layer when the group size does not divide its input width."""
    scheme = scheme or QatScheme()
    skipped = tuple(skip)
    targets = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and not name.endswith(skipped) and name
    ]
    if not targets:
        raise UnsupportedError("prepare_qat: the model has no nn.Linear layer to quantize")
    for name, linear in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        try:
            setattr(parent, attr, FakeQuantLinear(linear, scheme))
        except ShapeError as e:
            raise ShapeError(f"{name}: {e}") from None
    return model


def _fake_quant_layers(model: nn.Module) -> list[tuple[str, FakeQuantLinear]]:
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, FakeQuantLinear)]
    if not layers:
        raise UnsupportedError("convert: the model has no FakeQuantLinear layer (call prepare_qat first)")
    return layers


def convert(model: nn.Module, out: str | os.PathLike[str] | None = None, **quantize_options: Any) -> Any:
    """The trained model in lowbit's format.

    Without ``out``: ``{layer name: QTensor}`` for every :class:`FakeQuantLinear`, whose
    dequantized weights equal what the layer's forward pass used, bit for bit.

    With ``out``: a Hugging Face model (``save_pretrained``) is saved to a temporary directory
    and quantized by :func:`lowbit.quantize_model` with RTN at the layers' scheme into ``out``,
    a directory :func:`lowbit.load` runs packed (RTN of the trained weights is exactly the
    rounding they were trained with); ``quantize_options`` go to ``quantize_model`` (e.g.
    ``embed="keep"``). Returns its :class:`lowbit.QuantizeReport`.
    """
    layers = _fake_quant_layers(model)
    schemes = {m.scheme for _, m in layers}
    if out is None:
        return {name: _quantize_layer(m.weight, m.scheme) for name, m in layers}
    if len(schemes) != 1:
        raise UnsupportedError(f"convert to a directory: one scheme for every layer, got {len(schemes)}")
    (scheme,) = schemes
    save = getattr(model, "save_pretrained", None)
    if save is None:
        raise UnsupportedError("convert to a directory needs a Hugging Face model (save_pretrained)")
    from .pipeline import quantize_model

    with tempfile.TemporaryDirectory(prefix="lowbit-qat-") as tmp:
        # FakeQuantLinear keeps the parameters' names: the state dict is the original model's.
        save(tmp, safe_serialization=True)
        return quantize_model(
            tmp,
            out,
            method="rtn",
            bits=scheme.bits,
            group_size=scheme.group_size,
            sym=scheme.symmetric,
            scale_dtype=scheme.scale_dtype,
            **quantize_options,
        )


def _quantize_layer(weight: torch.Tensor, scheme: QatScheme) -> QTensor:
    w = weight.detach().to(torch.float32).contiguous().cpu().numpy()
    return quantize(
        w,
        bits=scheme.bits,
        group_size="channel" if scheme.group_size == "channel" else int(scheme.group_size),
        symmetric=scheme.symmetric,
        scale_dtype=scheme.scale_dtype,  # type: ignore[arg-type]
    )
