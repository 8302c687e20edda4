"""lowbit.torch in the PyTorch loaders' venv (run by tests/test_torch_adapter.py, which puts
lowbit on PYTHONPATH). Exits non-zero on the first disagreement."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load_file
from transformers import LlamaConfig, LlamaForCausalLM

import lowbit
from lowbit.torch import FakeQuantLinear, QatScheme, convert, dequantized, prepare_qat


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool((a.view(np.uint32) == b.view(np.uint32)).all())


def check_rounding() -> None:
    """dequantized() against lowbit.quantize(...).dequantize() on awkward weights."""
    rng = np.random.default_rng(0)
    cases = 0
    for bits in (2, 3, 4, 8):
        for sym in (False, True):
            for dtype in ("f16", "f32"):
                for group in (16, 48, "channel"):
                    magnitude = rng.choice([1e-6, 0.02, 3.0], (7, 1))
                    w = (rng.standard_normal((7, 96)) * magnitude).astype(np.float32)
                    w[0] = 0.0  # a zero group: scale 1
                    w[1, :48] = np.abs(w[1, :48])  # an all-positive group
                    w[2, 5] = 1e-9  # f16 underflow of a tiny range's scale
                    w[2, :16] = 1e-9 * rng.standard_normal(16).astype(np.float32)
                    s = QatScheme(bits=bits, group_size=group, symmetric=sym, scale_dtype=dtype)
                    mine = dequantized(torch.from_numpy(w), s).numpy()
                    ref = lowbit.quantize(w, bits=bits, group_size=group, symmetric=sym, scale_dtype=dtype)
                    ref_w = np.asarray(ref.dequantize(), dtype=np.float32)
                    if not same_bits(mine, ref_w):
                        at = tuple(np.argwhere(mine.view(np.uint32) != ref_w.view(np.uint32))[0])
                        sys.exit(f"rounding differs: {s}, first at {at}: {mine[at]} vs {ref_w[at]}")
                    cases += 1
    print(f"rounding: {cases} schemes bit-identical to lowbit.quantize")


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg).float().eval()


def check_training_and_convert() -> None:
    model = tiny_llama()
    scheme = QatScheme(bits=4, group_size=16)
    prepare_qat(model, scheme)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, FakeQuantLinear)]
    assert len(layers) == 14, [n for n, _ in layers]  # 7 block linears x 2 blocks, lm_head skipped
    ids = torch.randint(0, 64, (2, 24), generator=torch.Generator().manual_seed(1))
    before = {n: m.weight.detach().clone() for n, m in layers}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    loss0 = None
    for _ in range(5):
        out = model(input_ids=ids, labels=ids)
        opt.zero_grad()
        out.loss.backward()
        for n, m in layers:  # the straight-through estimator: every weight gets a gradient
            if m.weight.grad is None or not bool(m.weight.grad.abs().sum() > 0):
                sys.exit(f"{n}: no gradient through the fake quantization")
        opt.step()
        loss0 = loss0 if loss0 is not None else float(out.loss.detach())
    with torch.no_grad():
        final = float(model(input_ids=ids, labels=ids).loss)
    assert final < loss0, (loss0, final)
    assert any(not torch.equal(before[n], m.weight) for n, m in layers)
    print(f"training: loss {loss0:.4f} -> {final:.4f} in 5 AdamW steps through the fake quantization")

    tensors = convert(model)
    for n, m in layers:
        ref = dequantized(m.weight, scheme).numpy()
        if not same_bits(np.asarray(tensors[n].dequantize(), dtype=np.float32), ref):
            sys.exit(f"convert: {n} differs from the weights the forward pass used")
    print(f"convert: {len(tensors)} QTensors equal the trained fake-quant weights bit for bit")

    with tempfile.TemporaryDirectory() as tmp:
        out = f"{tmp}/qat-int4"
        convert(model, out, embed="keep")
        saved: dict[str, np.ndarray] = {}
        for shard in sorted(Path(out).glob("*.safetensors")):
            saved.update(load_file(shard))
        for n, _ in layers:  # the stored arrays are those of the QTensors above
            q = tensors[n]
            for part, want in (("qweight", q.packed), ("scales", q.scales), ("zeros", q.zeros)):
                got = saved[f"{n}.weight.{part}"]
                if not np.array_equal(got.reshape(-1), np.asarray(want).reshape(-1)):
                    sys.exit(f"convert(out): {n}.{part} in the directory differs from the trained weights")
        with torch.no_grad():
            want = model(input_ids=ids[:1]).logits[0].numpy()
        got = np.asarray(lowbit.Model.load(out).logits(ids[0].tolist()), dtype=np.float32)
        err = float(np.abs(got - want).max())
        assert err < 1e-3 * max(1.0, float(np.abs(want).max())), err
    print(
        "directory: codes, scales and zeros as convert() gave them; lowbit.Model runs it packed,"
        f" logits within {err:.2e} of the PyTorch fake-quant model"
    )


def expect_error(kind: type, words: tuple[str, ...], what: str, run: Any, *a: Any, **kw: Any) -> None:
    """``run(*a, **kw)`` must raise ``kind`` with every one of ``words`` in its message."""
    try:
        run(*a, **kw)
    except kind as e:
        if not all(w in str(e) for w in words):
            sys.exit(f"{what}: {kind.__name__} without {words}: {e}")
    else:
        sys.exit(f"{what} was accepted")


def check_errors() -> None:
    for bad in ({"bits": 5}, {"group_size": 0}, {"group_size": "row"}, {"scale_dtype": "bf16"}):
        expect_error(lowbit.UnsupportedError, ("QatScheme:",), f"QatScheme({bad})", QatScheme, **bad)
    expect_error(
        lowbit.ShapeError,
        ("model.layers.0.self_attn.q_proj", "24"),
        "a group size that does not divide 32",
        prepare_qat,
        tiny_llama(),
        QatScheme(group_size=24),
    )
    w = torch.ones(4, 32)
    w[1, 3] = float("nan")
    expect_error(lowbit.NonFiniteError, ("NaN",), "NaN weights", dequantized, w, QatScheme(group_size=16))
    expect_error(lowbit.UnsupportedError, ("prepare_qat",), "convert, no prepare_qat", convert, tiny_llama())
    print("errors: bad schemes, a group size that does not divide a layer, NaN weights, an unprepared model")


if __name__ == "__main__":
    check_errors()
    check_rounding()
    check_training_and_convert()
    print("RESULT lowbit.torch ok")
