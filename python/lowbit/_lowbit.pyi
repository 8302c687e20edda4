"""Type stubs of the native module (checked by mypy.stubtest)."""

from collections.abc import Callable
from typing import Any, Protocol, final

import numpy as np
import numpy.typing as npt

__all__ = [
    "CorruptFileError",
    "LowbitError",
    "Model",
    "NonFiniteError",
    "QTensor",
    "ShapeError",
    "SolverFailedError",
    "UnsupportedError",
    "__version__",
    "awq_search",
    "calibration_windows",
    "codebook_table",
    "double_quantize_absmax",
    "gptq_quantize",
    "import_gguf",
    "load_model",
    "load_tensors",
    "quantize",
    "quantize_model",
    "save_tensors",
]

__version__: str

class _Progress(Protocol):
    def start(self, name: str, total: int, /) -> object: ...
    def advance(self, n: int, /) -> object: ...
    def metric(self, name: str, value: float, /) -> object: ...
    def finish(self) -> object: ...

class LowbitError(ValueError): ...
class NonFiniteError(LowbitError): ...
class ShapeError(LowbitError): ...
class UnsupportedError(LowbitError): ...
class CorruptFileError(LowbitError): ...
class SolverFailedError(LowbitError): ...

@final
class QTensor:
    @property
    def shape(self) -> tuple[int, ...]: ...
    @property
    def bits(self) -> int: ...
    @property
    def format(self) -> str: ...
    @property
    def granularity(self) -> str: ...
    @property
    def group_size(self) -> int | None: ...
    @property
    def symmetric(self) -> bool: ...
    @property
    def double_quant(self) -> bool: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def bits_per_weight(self) -> float: ...
    @property
    def numel(self) -> int: ...
    @property
    def packed(self) -> npt.NDArray[np.uint8]: ...
    @property
    def scales(self) -> npt.NDArray[np.float16] | npt.NDArray[np.float32]: ...
    @property
    def zeros(self) -> npt.NDArray[np.uint8] | None: ...
    def codes(self) -> npt.NDArray[np.uint8]: ...
    def dequantize(self) -> npt.NDArray[np.float32]: ...
    def __eq__(self, value: object, /) -> bool: ...

def quantize(
    weights: Any,
    *,
    format: str = "int",
    bits: int = 4,
    group_size: int | str = ...,
    symmetric: bool = False,
    scale_dtype: str = "f16",
    clip: str = "minmax",
    block_size: int = 64,
    double_quant: bool = False,
    allow_partial_group: bool = False,
) -> QTensor: ...
def save_tensors(path: str, tensors: dict[str, QTensor], metadata: dict[str, str] | None = None) -> None: ...
def load_tensors(path: str) -> tuple[dict[str, QTensor], dict[str, str]]: ...
def codebook_table(name: str) -> list[float]: ...
def double_quantize_absmax(absmax: list[float]) -> tuple[list[float], list[float]]: ...

@final
class Model:
    @property
    def config(self) -> dict[str, Any]: ...
    @property
    def weight_bytes(self) -> int: ...
    @property
    def num_layers(self) -> int: ...
    @property
    def has_tokenizer(self) -> bool: ...
    @property
    def chat_template(self) -> str | None: ...
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]: ...
    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str: ...
    def apply_chat_template(
        self, messages: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> str: ...
    def generate(
        self,
        prompt: str | list[int],
        *,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
        seed: int = 0,
        stop: list[str] = ...,
        stop_on_eos: bool = True,
        on_token: Callable[[int, str], object] | None = None,
        progress: _Progress | None = None,
    ) -> dict[str, Any]: ...
    def perplexity_ids(
        self,
        ids: list[int],
        *,
        window: int = 2048,
        max_windows: int | None = ...,
        progress: _Progress | None = None,
    ) -> dict[str, Any]: ...
    def save(self, out_dir: str) -> None: ...

def load_model(path: str, progress: _Progress | None = None) -> Model: ...
def import_gguf(file: str, out_dir: str) -> None: ...
def gptq_quantize(
    weight: npt.NDArray[np.float32],
    hessian: npt.NDArray[np.float64] | npt.NDArray[np.float32],
    bits: int,
    group_size: int | str,
    symmetric: bool,
    act_order: bool = False,
    static_groups: bool = False,
    percdamp: float = 0.01,
    block_size: int = 128,
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32], npt.NDArray[np.uint8], float]: ...
def awq_search(
    x: npt.NDArray[np.float32],
    weights: list[npt.NDArray[np.float32]],
    bits: int,
    group_size: int | str,
    symmetric: bool,
    n_grid: int = 20,
    clip: bool = True,
    max_shrink: float = 0.5,
    clip_grid: int = 20,
) -> dict[str, Any]: ...
def quantize_model(
    model: str,
    out: str,
    *,
    method: str = "gptq",
    bits: int = 4,
    group_size: int | str = ...,
    sym: bool = False,
    act_order: bool = False,
    static_groups: bool | None = None,
    mse_clip: bool | None = None,
    scale_dtype: str = "f16",
    calib: str | None = None,
    calib_ids: list[int] | None = None,
    data_free: bool = False,
    nsamples: int = 128,
    seqlen: int = 512,
    seed: int = 0,
    percdamp: float = 0.01,
    awq_samples: int = 128,
    sq_alpha: float = 0.5,
    resume: bool = False,
    stop_after_block: int | None = None,
    progress: _Progress | None = None,
) -> str: ...
def calibration_windows(
    ids: list[int], nsamples: int = 128, seqlen: int = 512, seed: int = 0
) -> list[int]: ...
