"""Whole-model post-training quantization: the layer-by-layer pipeline (RTN, GPTQ, AWQ,
SmoothQuant) of ``lowbit-quantize``, from Python.

>>> report = lowbit.quantize_model("smollm2-dir", "out-dir", method="gptq", bits=4)  # doctest: +SKIP
>>> report.mean_loss, report.peak_rss_bytes  # doctest: +SKIP
"""

from __future__ import annotations

import difflib
import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np

from . import _lowbit
from ._lowbit import LayerResult as LayerResult
from ._lowbit import QuantizeReport as QuantizeReport
from .progress import Progress

PathLike = Union[str, "os.PathLike[str]"]

PROTOCOL_NSAMPLES = 128
PROTOCOL_SEQLEN = 512
#: The environment variable naming the default calibration text (the protocol's WikiText-2
#: ``valid.txt``). lowbit never looks for data on its own.
CALIB_ENV = "LOWBIT_CALIB_TEXT"


def calibration_text_from_env() -> Path | None:
    """The calibration text named by ``$LOWBIT_CALIB_TEXT``, or None when it is unset or empty."""
    value = os.environ.get(CALIB_ENV, "")
    return Path(value) if value else None


_PY_TYPES: dict[str, tuple[type, ...]] = {
    "bool": (bool,),
    "int": (int,),
    "float": (int, float),
    "str": (str,),
}


@functools.lru_cache(maxsize=1)
def option_specs() -> dict[str, dict[str, Any]]:
    """The options of :func:`quantize_model`, declared once in Rust (``lowbit-quantize``'s
    option table), by name: ``type``, ``optional``, ``default``, ``choices``, ``help``,
    ``methods`` (empty: every method), ``cli`` flag and ``cli_aliases``."""
    return {spec["name"]: spec for spec in _lowbit.quantize_option_specs()}


def solver_method(options: dict[str, Any]) -> str:
    """The method whose own options apply: ``method``, or for ``qat`` the one it starts from."""
    method = str(options.get("method", option_specs()["method"]["default"]))
    return str(options.get("qat_init") or "gptq") if method == "qat" else method


def check_options(options: dict[str, Any]) -> None:
    """Raise ``TypeError`` for an unknown option or a value of the wrong type and ``ValueError``
    for a value outside its choices or an option that does not apply to the method."""
    specs = option_specs()
    method = solver_method(options)
    for name, value in options.items():
        spec = specs.get(name)
        if spec is None:
            close = difflib.get_close_matches(name, specs, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise TypeError(f"quantize_model() got an unexpected keyword argument {name!r}{hint}")
        if value is None and spec["optional"]:
            continue
        if name == "group_size":
            continue  # a positive int, "channel" or "tensor": checked natively, as everywhere
        types = _PY_TYPES[spec["type"]]
        if not isinstance(value, types) or (spec["type"] != "bool" and isinstance(value, bool)):
            raise TypeError(f"{name}: expected {spec['type']}, got {type(value).__name__}")
        if spec["choices"] is not None and value not in spec["choices"]:
            raise ValueError(f"{name}: expected one of {', '.join(spec['choices'])}, got {value!r}")
        if spec["methods"] and method not in spec["methods"]:
            raise ValueError(f"{name} applies to {', '.join(spec['methods'])}, not {method}")


def quantize_model(
    model: PathLike,
    out: PathLike,
    *,
    calib: PathLike | Sequence[int] | np.ndarray | None = None,
    data_free: bool = False,
    progress: Progress | None = None,
    **options: Any,
) -> QuantizeReport:
    """Quantize every linear layer in the transformer blocks of ``model`` (a Hugging Face
    directory, a lowbit checkpoint or a ``.gguf``) and write a lowbit checkpoint directory
    ``out`` (atomically: nothing appears on error).

    ``options`` are those of :func:`option_specs` (the same as the flags of ``lowbit quantize``):
    ``method`` (``"rtn"``, ``"gptq"``, ``"awq"``, ``"hqq"`` (calibration-free, float zero
    points), ``"spqr"`` (group size 16 unless given), ``"squeezellm"`` (``bits`` 3 or 4: a codebook
    of ``2**bits`` f16 values per output row from k-means weighted by the Hessian diagonal, not
    the paper's Fisher information; no groups), or the W8A8 ones ``"smoothquant"`` and
    ``"llm-int8"``, which take ``bits=8, group_size="channel", sym=True``),
    ``bits``, ``group_size`` (a positive int, or
    ``"channel"``/``None`` for one scale per output channel), ``sym``, ``scale_dtype``
    (``"f16"`` or ``"f32"``), ``embed`` and ``lm_head`` (storage of the token embedding and the
    LM head: ``"int8"``, one scale per row, the default; ``"int4-g32"``, ``"int4-g64"``,
    ``"int4-g128"``; ``"f16"``, ``"f32"`` or ``"keep"``; ``lm_head="embed"`` or ``None``, the
    default, stores the head as the embedding; a model that ties them stores one tensor, by
    ``embed``), ``nsamples``,
    ``seqlen``, ``seed``, ``resume`` (continue from
    ``<out>.partial`` after an interrupted run, same bytes as an uninterrupted one), and each
    method's own: ``act_order``, ``percdamp`` (gptq, spqr), ``static_groups`` (gptq), ``mse_clip`` (gptq,
    rtn: ranges by least squared error; ``None`` is on for gptq, off for rtn), ``awq_samples``
    (awq), ``sq_alpha`` (smoothquant), ``outlier_threshold`` (llm-int8: input columns with any
    ``|x| >=`` it in a batch run in f32, 6.0; ``float("inf")`` turns the decomposition off;
    spqr: weights whose saliency exceeds it times the layer's mean are kept in f16, 0.2;
    ``float("inf")`` keeps none), ``outlier_max_percent``, ``stats_bits``, ``stats_group``
    (spqr: at most that percent of outliers, 1; bits of the quantized group scales and zeros,
    3, in groups of that many output rows, 16), ``hqq_lp_norm`` and ``hqq_iters`` (hqq: the p
    of its lp error, 0.7, and the most iterations, 20), ``squeeze_outlier_percent`` and
    ``squeeze_sensitive_percent`` (squeezellm: percent of each layer's weights kept in f16, the
    largest in magnitude, 0.45, then the most sensitive, 0.05), ``squeeze_error_feedback``
    (squeezellm: choose the codes by GPTQ's sweep onto the fitted codebooks, not in the paper;
    False); ``target_bpw`` or ``max_size`` (rtn, gptq: mixed precision, bits and group size per
    block linear chosen from measured sensitivity by an exact knapsack so that the block linears
    take that many stored bits per weight, or the whole output directory at most ``max_size``
    bytes; ``bits`` and ``group_size`` are then unused, calibration data is required, and
    ``report.to_dict()["allocation"]`` holds each layer's scheme).

    ``calib``: a text file, a ``.jsonl`` (field ``text``), a ``.npy``/``.json`` of token ids, or
    token ids in memory; ``None`` uses the text file named by ``$LOWBIT_CALIB_TEXT``;
    ``data_free=True`` samples calibration sequences from the model itself (seeded; an int8
    copy of it, per-channel weights and int8 activations, a quarter of the bytes per step).
    ``progress`` (see :mod:`lowbit.progress`) sees phases ``calibrate``, ``blocks`` and ``write``;
    Ctrl-C stops the run within about a second, raises ``KeyboardInterrupt``, writes no ``out``
    and keeps ``<out>.partial`` for ``resume=True``.
    """
    check_options(options)
    calib_path: str | None = None
    calib_ids: list[int] | None = None
    if calib is not None and data_free:
        raise _lowbit.ShapeError("give calib or data_free, not both")
    if isinstance(calib, (str, os.PathLike)):
        calib_path = os.fspath(calib)
    elif calib is not None:
        calib_ids = [int(t) for t in np.asarray(calib).reshape(-1)]
    elif not data_free and _lowbit.method_calibrated(
        options.get("method", option_specs()["method"]["default"])
    ):
        default = calibration_text_from_env()
        if default is None:
            raise _lowbit.LowbitError(
                f"no calibration data: pass calib=..., set {CALIB_ENV} to a text file, or use data_free=True"
            )
        calib_path = str(default)
    return _lowbit.quantize_model(
        os.fspath(model),
        os.fspath(out),
        calib=calib_path,
        calib_ids=calib_ids,
        data_free=data_free,
        progress=progress,
        **options,
    )


def calibration_windows(
    ids: Sequence[int], nsamples: int = 128, seqlen: int = 512, seed: int = 0
) -> np.ndarray:
    """The protocol's windows over a token stream: ``[nsamples, seqlen]`` token ids starting at
    ``numpy.random.default_rng(seed).integers(0, len(ids) - seqlen, nsamples)``."""
    flat = _lowbit.calibration_windows([int(t) for t in ids], nsamples, seqlen, seed)
    return np.asarray(flat, dtype=np.int64).reshape(nsamples, seqlen)
