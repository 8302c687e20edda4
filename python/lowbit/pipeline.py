"""Whole-model post-training quantization: the layer-by-layer pipeline (RTN, GPTQ, AWQ,
SmoothQuant) of ``lowbit-quantize``, from Python.

>>> report = lowbit.quantize_model("smollm2-dir", "out-dir", method="gptq", bits=4)  # doctest: +SKIP
>>> report.mean_loss, report.peak_rss_bytes  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np

from . import _lowbit

PathLike = Union[str, "os.PathLike[str]"]
#: ``progress(stage, done, total, loss, elapsed_seconds, eta_seconds)``; stage is
#: ``"calibrating"``, ``"block"`` (after each block) or ``"writing"``.
ProgressCallback = Callable[[str, int, int, float, float, float], object]

PROTOCOL_NSAMPLES = 128
PROTOCOL_SEQLEN = 512


def protocol_calibration_file() -> Path | None:
    """The calibration protocol's text (``../shared/data/wikitext2/valid.txt``), if present:
    ``LOWBIT_CALIB`` when set, else next to the repository or the working directory."""
    env = os.environ.get("LOWBIT_CALIB")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    candidates = [p.parent / "shared/data/wikitext2/valid.txt" for p in here.parents]
    candidates += [p / "shared/data/wikitext2/valid.txt" for p in (Path.cwd(), *Path.cwd().parents)]
    return next((c for c in candidates if c.is_file()), None)


@dataclass(frozen=True)
class LayerResult:
    """The outcome for one linear layer."""

    block: int
    name: str
    loss: float
    damping: float | None
    damping_raises: int
    dead_inputs: int
    alpha: float | None
    seconds: float


@dataclass(frozen=True)
class QuantizeReport:
    """What :func:`quantize_model` did (also written to ``lowbit_manifest.json``)."""

    out: str
    params: dict[str, Any]
    layers: list[LayerResult]
    calib_sha256: str | None
    calib_tokens: int
    calib_seconds: float
    quantize_seconds: float
    wall_seconds: float
    peak_rss_bytes: int | None
    linear_bytes_before: int
    linear_bytes_after: int
    bits_per_weight: float
    out_bytes: int
    resumed_from_block: int
    notes: list[str] = field(default_factory=list)

    @property
    def mean_loss(self) -> float:
        """Mean of the per-layer losses."""
        return sum(layer.loss for layer in self.layers) / max(len(self.layers), 1)

    @property
    def worst_layer(self) -> LayerResult | None:
        """The layer with the largest loss."""
        return max(self.layers, key=lambda layer: layer.loss, default=None)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def quantize_model(
    model: PathLike,
    out: PathLike,
    *,
    method: str = "gptq",
    bits: int = 4,
    group_size: int | None = 128,
    sym: bool = False,
    act_order: bool = False,
    static_groups: bool | None = None,
    mse_clip: bool | None = None,
    scale_dtype: str = "f16",
    calib: PathLike | Sequence[int] | np.ndarray | None = None,
    data_free: bool = False,
    nsamples: int = PROTOCOL_NSAMPLES,
    seqlen: int = PROTOCOL_SEQLEN,
    seed: int = 0,
    percdamp: float = 0.01,
    awq_samples: int = 128,
    sq_alpha: float = 0.5,
    resume: bool = False,
    progress: ProgressCallback | None = None,
) -> QuantizeReport:
    """Quantize every linear layer in the transformer blocks of ``model`` (a Hugging Face
    directory, a lowbit checkpoint or a ``.gguf``) and write a lowbit checkpoint directory
    ``out`` (atomically: nothing appears on error).

    ``method``: ``"rtn"``, ``"gptq"``, ``"awq"`` or ``"smoothquant"`` (W8A8: ``bits=8,
    group_size=None, sym=True``). ``group_size=None`` is one scale per output channel.
    ``mse_clip`` (gptq, rtn): pick each group's range by least squared error instead of min-max;
    ``None`` is on for gptq, off for rtn. ``scale_dtype``: ``"f16"`` or ``"f32"`` group scales.
    ``calib``: a text file, a ``.jsonl`` (field ``text``), a ``.npy``/``.json`` of token ids, or
    token ids in memory; ``None`` uses the calibration protocol's text when it can be found;
    ``data_free=True`` samples calibration sequences from the model itself (seeded).
    ``resume=True`` continues from ``<out>.partial`` after an interrupted run (same bytes as an
    uninterrupted one).
    """
    calib_path: str | None = None
    calib_ids: list[int] | None = None
    if calib is not None and data_free:
        raise _lowbit.ShapeError("give calib or data_free, not both")
    if isinstance(calib, (str, os.PathLike)):
        calib_path = os.fspath(calib)
    elif calib is not None:
        calib_ids = [int(t) for t in np.asarray(calib).reshape(-1)]
    elif method != "rtn" and not data_free:
        default = protocol_calibration_file()
        if default is None:
            raise FileNotFoundError(
                "no calibration data: pass calib=... or data_free=True "
                "(the protocol's valid.txt was not found)"
            )
        calib_path = str(default)
    raw = _lowbit.quantize_model(
        os.fspath(model),
        os.fspath(out),
        method=method,
        bits=bits,
        group_size=group_size,
        sym=sym,
        act_order=act_order,
        static_groups=static_groups,
        mse_clip=mse_clip,
        scale_dtype=scale_dtype,
        calib=calib_path,
        calib_ids=calib_ids,
        data_free=data_free,
        nsamples=nsamples,
        seqlen=seqlen,
        seed=seed,
        percdamp=percdamp,
        awq_samples=awq_samples,
        sq_alpha=sq_alpha,
        resume=resume,
        progress=progress,
    )
    d = json.loads(raw)
    d["layers"] = [LayerResult(**layer) for layer in d["layers"]]
    return QuantizeReport(**d)


def calibration_windows(
    ids: Sequence[int], nsamples: int = 128, seqlen: int = 512, seed: int = 0
) -> np.ndarray:
    """The protocol's windows over a token stream: ``[nsamples, seqlen]`` token ids starting at
    ``numpy.random.default_rng(seed).integers(0, len(ids) - seqlen, nsamples)``."""
    flat = _lowbit.calibration_windows([int(t) for t in ids], nsamples, seqlen, seed)
    return np.asarray(flat, dtype=np.int64).reshape(nsamples, seqlen)
