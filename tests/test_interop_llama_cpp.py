"""lowbit's GGUF exports run by llama.cpp itself (llama-cpp-python, built from its PyPI sdist by
``make loaders``), on SmolLM2-135M and the evaluation protocol of ``../shared/PROTOCOL.md``.

- Tokenization: llama.cpp's tokenizer, reading the exported metadata, gives lowbit's ids for the
  whole WikiText-2 test text.
- Running: llama.cpp on lowbit's Q4_0 export (RTN W4 g32 symmetric, every block linear repacked
  exactly) and on a K-quant export (Q4_K, requantized by lowbit's port of llama.cpp's reference
  quantizer) agrees with lowbit reading the same file: top-1 next token on the first window's
  positions, and protocol perplexity (32 windows of 2048 tokens) within 0.5%. llama.cpp's CPU
  products quantize activations to 8 bits (Q8_0 / Q8_K), lowbit's evaluation of dequantized
  weights keeps them in f32, which is the whole difference.
- Blocks: lowbit's Q4_0 and Q8_0 blocks equal ``llama_model_quantize``'s, byte for byte, on the
  same f32 input.
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from gguf import GGUFReader

import lowbit
from conftest import missing_reference, smollm2_gguf, wikitext

WINDOW, WINDOWS = 2048, 32
TOP1_POSITIONS = 512
#: A logit lead over the runner-up that 8-bit activations do not overturn.
CLEAR_MARGIN = 1.0


def llama_cpp() -> ModuleType:
    try:
        import llama_cpp as module
    except ImportError as e:
        missing_reference(f"llama-cpp-python ({e}); `make loaders` builds it from its PyPI sdist")
    return module


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("llama-cpp")


@pytest.fixture(scope="module")
def text() -> str:
    # Raw bytes: llama.cpp tokenizes what it is given, so keep the file's CRLF line ends.
    return wikitext("test").read_bytes().decode("utf-8")


@pytest.fixture(scope="module")
def f32_gguf(work: Path) -> Path:
    """SmolLM2 in F32 (the Q4_1 GGUF dequantized): the common input of both quantizers."""
    llama_cpp()
    return lowbit.export(smollm2_gguf(), work / "smollm2.F32.gguf", dense_type="F32").path


@pytest.fixture(scope="module")
def q4_0_gguf(work: Path) -> Path:
    llama_cpp()
    w4 = work / "rtn-w4g32-sym"
    # An f16 embedding (tied head) exports as F16: every tensor of the GGUF is then exact.
    opts: dict[str, Any] = {"bits": 4, "group_size": 32, "sym": True, "embed": "f16"}
    lowbit.quantize_model(smollm2_gguf(), w4, method="rtn", calib=list(range(64)), **opts)
    report = lowbit.export(w4, work / "rtn-w4g32-sym.Q4_0.gguf")
    linears = [t for t in report.tensors if t.name.startswith("blk.") and t.type == "Q4_0"]
    assert len(linears) == 30 * 7
    assert all(t.path == "exact" for t in report.tensors)
    return report.path


@pytest.fixture(scope="module")
def q4_k_gguf(work: Path, f32_gguf: Path) -> Path:
    report = lowbit.export(f32_gguf, work / "smollm2.Q4_K.gguf", dense_type="Q4_K")
    assert any(t.type == "Q4_K" for t in report.tensors)
    return report.path


def llama(module: ModuleType, path: Path, **options: Any) -> Any:
    return module.Llama(model_path=str(path), n_threads=2, verbose=False, **options)


def log_softmax_at(logits: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """log p(target) per row: f32 exponentials (a 2048 x 49152 window), f64 sums."""
    top = logits.max(axis=1, keepdims=True)
    lse = np.log(np.exp(logits - top).sum(axis=1, dtype=np.float64)) + top[:, 0]
    return logits[np.arange(len(targets)), targets].astype(np.float64) - lse


def llama_cpp_windows(module: ModuleType, path: Path, ids: list[int]) -> Iterator[np.ndarray]:
    """llama.cpp's logits `[WINDOW, vocab]` of each protocol window, each from an empty cache."""
    model = llama(module, path, n_ctx=WINDOW, n_batch=512, logits_all=True)
    for w in range(WINDOWS):
        model.reset()
        model.eval(ids[w * WINDOW : (w + 1) * WINDOW])
        yield np.asarray(model.scores[:WINDOW], dtype=np.float32)


def test_tokenization_agrees_with_llama_cpp(q4_0_gguf: Path, text: str) -> None:
    module = llama_cpp()
    theirs = llama(module, q4_0_gguf, vocab_only=True).tokenize(text.encode(), add_bos=False, special=False)
    ours = lowbit.Model.load(q4_0_gguf).encode(text)
    assert len(ours) > WINDOW * WINDOWS
    first_diff = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), None)
    assert first_diff is None, (first_diff, len(ours), len(theirs))
    assert len(ours) == len(theirs)


def test_lowbit_reads_its_q4_0_export_as_the_same_model(q4_0_gguf: Path, text: str) -> None:
    # Q4_0 imports packed, bit for bit the int4 g32 tensors that were exported.
    gguf = lowbit.Model.load(q4_0_gguf)
    ids = gguf.encode(text)[:256]
    np.testing.assert_array_equal(
        gguf.logits(ids), lowbit.Model.load(q4_0_gguf.parent / "rtn-w4g32-sym").logits(ids)
    )


@pytest.mark.parametrize(
    ("export", "dequantized", "ppl_tol", "clear_agree"),
    # lowbit runs Q4_0 packed; K-quants (and the Q5_0 llama.cpp falls back to for 576-wide rows)
    # load as f32, with a warning that says so. llama.cpp multiplies Q4_0 with Q8_0 activations
    # (a scale per 32) and Q4_K with Q8_K ones (a scale per 256), so the K-quant file gets a
    # looser bound. Measured: Q4_0 2.4e-3 and 229/229 clear positions, Q4_K 4.6e-3 and 277/278.
    [("q4_0_gguf", None, 5e-3, 1.0), ("q4_k_gguf", r"Q4_K x30, Q5_0 x180", 1e-2, 0.99)],
)
def test_llama_cpp_runs_the_export_like_lowbit(
    export: str,
    dequantized: str | None,
    ppl_tol: float,
    clear_agree: float,
    request: pytest.FixtureRequest,
    text: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    module = llama_cpp()
    path: Path = request.getfixturevalue(export)
    if dequantized is None:
        model = lowbit.Model.load(path)
    else:
        with pytest.warns(lowbit.LoadWarning, match=dequantized):
            model = lowbit.Model.load(path)
    ids = model.encode(text)
    ours = model.perplexity(ids=ids, window=WINDOW, windows=WINDOWS)
    nll = 0.0
    for w, logits in enumerate(llama_cpp_windows(module, path, ids)):
        window = np.asarray(ids[w * WINDOW : (w + 1) * WINDOW])
        nll -= float(log_softmax_at(logits[:-1], window[1:]).sum())
        if w == 0:
            ours_logits = model.logits(window[:TOP1_POSITIONS].tolist())
            theirs_top1 = logits[:TOP1_POSITIONS].argmax(axis=1)
            same = ours_logits.argmax(axis=1) == theirs_top1
            # Where lowbit's best token leads its runner-up by a clear margin, llama.cpp's 8-bit
            # activations should not move it: those positions agree (all of them for Q4_0).
            top2 = np.sort(ours_logits, axis=1)[:, -2:]
            clear = top2[:, 1] - top2[:, 0] > CLEAR_MARGIN
    ppl = math.exp(nll / (WINDOWS * (WINDOW - 1)))
    rel = abs(ppl - ours.perplexity) / ours.perplexity
    agree, agree_clear = float(same.mean()), float(same[clear].mean())
    with capsys.disabled():  # the agreement figures belong in the CI log
        print(
            f"\n{export}: perplexity llama.cpp {ppl:.4f}, lowbit {ours.perplexity:.4f} ({rel:.2e}); "
            f"top-1 {agree:.4f}, where clear ({int(clear.sum())} positions) {agree_clear:.4f}"
        )
    assert rel <= ppl_tol
    assert clear.sum() >= TOP1_POSITIONS // 4
    assert agree_clear >= clear_agree
    # Near-ties flip under llama.cpp's 8-bit activations: 95.9% overall for both files.
    assert agree >= 0.9


@pytest.mark.parametrize("ty", ["Q4_0", "Q8_0"])
def test_blocks_equal_llama_model_quantize(ty: str, work: Path, f32_gguf: Path) -> None:
    module = llama_cpp()
    theirs = work / f"llama.{ty}.gguf"
    params = module.llama_model_quantize_default_params()
    params.ftype = getattr(module, f"LLAMA_FTYPE_MOSTLY_{ty}")
    params.nthread = 2
    rc = module.llama_model_quantize(str(f32_gguf).encode(), str(theirs).encode(), ctypes.byref(params))
    assert rc == 0, f"llama_model_quantize returned {rc}"
    ours = lowbit.export(f32_gguf, work / f"lowbit.{ty}.gguf", dense_type=ty).path
    by_name = {t.name: t for t in GGUFReader(ours).tensors}
    block_bytes = {"Q4_0": 18, "Q8_0": 34}[ty]
    compared, differing = 0, []
    for t in GGUFReader(theirs).tensors:
        o = by_name.get(t.name)
        if o is None or t.tensor_type.name != ty or o.tensor_type != t.tensor_type:
            continue
        a = np.asarray(o.data, dtype=np.uint8).reshape(-1, block_bytes)
        b = np.asarray(t.data, dtype=np.uint8).reshape(-1, block_bytes)
        compared += 1
        if (bad := int(np.any(a != b, axis=1).sum())) > 0:
            differing.append(f"{t.name}: {bad}/{len(a)} blocks")
    # Every block linear of the 30 layers (llama.cpp may store the embedding in another type).
    assert compared >= 30 * 7
    assert not differing, differing[:5]
