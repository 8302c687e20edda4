"""lowbit: make large language models small and fast.

Quantize weights to INT8/INT4/INT3/INT2 or NF4/FP4 with Rust kernels, store them in documented
bit-packed formats (see ``docs/format.md``), and load them back from Python or Rust.

>>> import numpy as np, lowbit
>>> w = np.random.default_rng(0).standard_normal((256, 512), dtype=np.float32)
>>> q = lowbit.quantize(w, bits=4, group_size=128)
>>> q.bits_per_weight  # 4-bit codes + f16 scale + u8 zero per 128 weights
4.1875
"""

from __future__ import annotations

from ._api import load, load_tensors, quantize, save
from ._lowbit import (
    CorruptFileError,
    LowbitError,
    NonFiniteError,
    QTensor,
    ShapeError,
    SolverFailedError,
    UnsupportedError,
    __version__,
)
from .convert import convert
from .export import ExportReport, TensorExport, export, imatrix
from .model import Generation, LoadWarning, Model, PerplexityResult, import_gguf, smollm2_gguf
from .pipeline import LayerResult, QuantizeReport, calibration_windows, quantize_model
from .report import Report, report

__all__ = [
    "CorruptFileError",
    "ExportReport",
    "Generation",
    "LayerResult",
    "LoadWarning",
    "LowbitError",
    "Model",
    "NonFiniteError",
    "PerplexityResult",
    "QTensor",
    "QuantizeReport",
    "Report",
    "ShapeError",
    "SolverFailedError",
    "TensorExport",
    "UnsupportedError",
    "__version__",
    "calibration_windows",
    "convert",
    "export",
    "imatrix",
    "import_gguf",
    "load",
    "load_tensors",
    "quantize",
    "quantize_model",
    "report",
    "save",
    "smollm2_gguf",
]
