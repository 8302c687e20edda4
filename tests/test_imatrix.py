"""The importance matrix (``lowbit.imatrix``) against a numpy forward pass of the same tiny Llama,
and GGUF export weighted by it (``lowbit.export(..., imatrix_text=...)``, ``--imatrix-text``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

import lowbit
from lowbit.cli import main
from test_export_gguf import gguf_weights, hf_name, tiny

HEADS, KV_HEADS, SEQLEN = 4, 2, 16


def rms_norm(x: np.ndarray, w: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    out: np.ndarray = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w
    return out


def rope(x: np.ndarray, heads: int) -> np.ndarray:
    """Hugging Face's rotate-half RoPE (theta 10000) on ``[T, heads * hd]``."""
    t, width = x.shape
    hd = width // heads
    inv = 1.0 / 10000.0 ** (np.arange(0, hd, 2) / hd)
    ang = np.arange(t)[:, None] * inv[None, :]
    cos, sin = np.cos(np.concatenate([ang, ang], 1)), np.sin(np.concatenate([ang, ang], 1))
    x = x.reshape(t, heads, hd)
    rot = np.concatenate([-x[..., hd // 2 :], x[..., : hd // 2]], -1)
    out: np.ndarray = (x * cos[:, None] + rot * sin[:, None]).reshape(t, width)
    return out


def linear_inputs(model: Path, windows: np.ndarray, layers: int) -> dict[str, list[np.ndarray]]:
    """Every block linear's input rows over ``windows`` (each from an empty context), in f64."""
    w = {k: v.astype(np.float64) for k, v in load_file(model / "model.safetensors").items()}
    inputs: dict[str, list[np.ndarray]] = {}

    def seen(i: int, names: list[str], x: np.ndarray) -> None:
        for n in names:
            inputs.setdefault(f"model.layers.{i}.{n}.weight", []).append(x)

    for ids in windows:
        x = w["model.embed_tokens.weight"][ids]
        t = len(ids)
        for i in range(layers):
            p = f"model.layers.{i}."
            h = rms_norm(x, w[p + "input_layernorm.weight"])
            seen(i, ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], h)
            q = rope(h @ w[p + "self_attn.q_proj.weight"].T, HEADS)
            k = rope(h @ w[p + "self_attn.k_proj.weight"].T, KV_HEADS)
            v = h @ w[p + "self_attn.v_proj.weight"].T
            hd = q.shape[1] // HEADS
            q, k, v = q.reshape(t, HEADS, hd), k.reshape(t, KV_HEADS, hd), v.reshape(t, KV_HEADS, hd)
            k, v = np.repeat(k, HEADS // KV_HEADS, axis=1), np.repeat(v, HEADS // KV_HEADS, axis=1)
            s = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd)
            s = np.where(np.tril(np.ones((t, t), bool))[None], s, -np.inf)
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            a = np.einsum("hts,shd->thd", s, v).reshape(t, HEADS * hd)
            seen(i, ["self_attn.o_proj"], a)
            x = x + a @ w[p + "self_attn.o_proj.weight"].T
            h = rms_norm(x, w[p + "post_attention_layernorm.weight"])
            seen(i, ["mlp.gate_proj", "mlp.up_proj"], h)
            g, u = h @ w[p + "mlp.gate_proj.weight"].T, h @ w[p + "mlp.up_proj.weight"].T
            act = g / (1 + np.exp(-g)) * u
            seen(i, ["mlp.down_proj"], act)
            x = x + act @ w[p + "mlp.down_proj.weight"].T
    return inputs


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return tiny(tmp_path / "src", 32, 64)


@pytest.fixture
def windows(model: Path) -> Path:
    """Five 16-token windows as a ``[5, 16]`` array, which calibration takes as they are."""
    ids = np.load(model / "ids.npy")[: 5 * SEQLEN].reshape(5, SEQLEN)
    np.save(model / "windows.npy", ids)
    return model / "windows.npy"


def test_imatrix_is_the_mean_square_of_each_linears_input(model: Path, windows: Path) -> None:
    ours = lowbit.imatrix(model, windows, samples=5, seqlen=SEQLEN)
    inputs = linear_inputs(model, np.load(windows), layers=2)
    assert set(ours) == set(inputs)
    assert len(ours) == 2 * 7
    for name, rows in inputs.items():
        x = np.concatenate(rows)
        want = np.mean(x * x, axis=0)  # llama-imatrix: sum of squares / tokens
        assert ours[name].shape == want.shape, name
        np.testing.assert_allclose(ours[name], want, rtol=2e-5, atol=1e-7, err_msg=name)
    # q/k/v share one input, gate/up another: one vector each.
    layer = "model.layers.1."
    assert np.array_equal(ours[layer + "self_attn.q_proj.weight"], ours[layer + "self_attn.v_proj.weight"])
    assert np.array_equal(ours[layer + "mlp.gate_proj.weight"], ours[layer + "mlp.up_proj.weight"])


def test_export_with_imatrix_lowers_the_weighted_error(model: Path, windows: Path, tmp_path: Path) -> None:
    plain = lowbit.export(model, tmp_path / "plain.gguf", dense_type="Q4_0")
    weighted = lowbit.export(
        model, tmp_path / "imatrix.gguf", dense_type="Q4_0", imatrix_text=windows, imatrix_samples=5
    )
    assert weighted.imatrix_tokens == 5 * SEQLEN
    assert plain.imatrix_tokens == 0
    paths = {t.name: t.path for t in weighted.tensors}
    blocks = [n for n in paths if n.startswith("blk.") and "norm" not in n]
    assert len(blocks) == 2 * 7
    assert all(paths[n] == "requantized-imatrix" for n in blocks)
    # The embedding (a row lookup, no input to weigh) keeps the reference quantizer.
    assert paths["token_embd.weight"] == "requantized"
    assert all(t.path in ("requantized", "exact") for t in plain.tensors)

    imatrix = lowbit.imatrix(model, windows, samples=5, seqlen=SEQLEN)
    src = {k: v.astype(np.float64) for k, v in load_file(model / "model.safetensors").items()}
    ours, theirs = gguf_weights(tmp_path / "imatrix.gguf"), gguf_weights(tmp_path / "plain.gguf")
    err_w = err_p = 0.0
    for n in blocks:
        name = hf_name(n)
        imp = imatrix[name].astype(np.float64)
        err_w += float(np.sum(imp * (src[name] - ours[name]) ** 2))
        err_p += float(np.sum(imp * (src[name] - theirs[name]) ** 2))
        # Importances weigh columns: the weighted export is a different quantization.
        assert not np.array_equal(ours[name], theirs[name]), n
    assert err_w < 0.95 * err_p, (err_w, err_p)


def test_cli_export_with_imatrix(
    model: Path, windows: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.gguf"
    argv = ["export", str(model), "-o", str(out), "--dense-type", "Q4_0", "--imatrix-text", str(windows)]
    assert main([*argv, "--imatrix-samples", "5"]) == 0
    text = capsys.readouterr().out
    assert "requantized-imatrix" in text
    assert "14 requantized-imatrix" in text.splitlines()[-1]
    assert "importance matrix over 80 tokens" in text.splitlines()[-1]


def test_imatrix_text_is_refused_for_gptq(model: Path, windows: Path, tmp_path: Path) -> None:
    with pytest.raises(lowbit.UnsupportedError, match="GGUF export only"):
        lowbit.export(model, tmp_path / "g", format="gptq", imatrix_text=windows)
