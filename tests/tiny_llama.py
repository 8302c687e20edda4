"""Tiny random Llama checkpoints for the pipeline and command-line tests."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np


def write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    header: dict[str, object] = {}
    offset = 0
    blobs = []
    for name in sorted(tensors):
        data = np.ascontiguousarray(tensors[name], dtype="<f4").tobytes()
        header[name] = {
            "dtype": "F32",
            "shape": list(tensors[name].shape),
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
        blobs.append(data)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def write_tiny_llama(
    d: Path,
    *,
    hidden: int = 32,
    ffn: int = 64,
    vocab: int = 61,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    context: int = 128,
    seed: int = 0,
) -> Path:
    """A random LlamaForCausalLM in ``d`` (config.json, model.safetensors) and ``d/ids.npy``,
    500 random token ids for calibration."""
    rng = np.random.default_rng(seed)
    hd = hidden // heads
    t: dict[str, np.ndarray] = {"model.embed_tokens.weight": rng.standard_normal((vocab, hidden)) * 0.5}
    for i in range(layers):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = 1 + 0.1 * rng.standard_normal(hidden)
        t[p + "post_attention_layernorm.weight"] = 1 + 0.1 * rng.standard_normal(hidden)
        for name, shape in [
            ("self_attn.q_proj", (heads * hd, hidden)),
            ("self_attn.k_proj", (kv_heads * hd, hidden)),
            ("self_attn.v_proj", (kv_heads * hd, hidden)),
            ("self_attn.o_proj", (hidden, heads * hd)),
            ("mlp.gate_proj", (ffn, hidden)),
            ("mlp.up_proj", (ffn, hidden)),
            ("mlp.down_proj", (hidden, ffn)),
        ]:
            t[p + name + ".weight"] = 0.2 * (32 / hidden) ** 0.5 * rng.standard_normal(shape)
    t["model.norm.weight"] = np.ones(hidden)
    write_safetensors(d / "model.safetensors", t)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": context,
        "tie_word_embeddings": True,
        "hidden_act": "silu",
    }
    (d / "config.json").write_text(json.dumps(config))
    np.save(d / "ids.npy", np.random.default_rng(1).integers(0, vocab, 500).astype(np.int32))
    return d


class Recorder:
    """A :class:`lowbit.progress.Progress` that records what it is told."""

    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def start(self, name: str, total: int) -> None:
        self.events.append(("start", (name, total)))

    def advance(self, n: int) -> None:
        if n:
            self.events.append(("advance", n))

    def metric(self, name: str, value: float) -> None:
        self.events.append(("metric", name))

    def finish(self) -> None:
        self.events.append(("finish", None))

    def phases(self) -> list[tuple[str, int]]:
        return [e[1] for e in self.events if e[0] == "start"]  # type: ignore[misc]
