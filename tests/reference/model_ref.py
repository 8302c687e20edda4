#!/usr/bin/env python3
"""Independent numpy forward pass of the Llama-family models lowbit-model runs.

Usage: model_ref.py DIR
Reads DIR/config.json, DIR/model.safetensors (f32/f16/bf16; parsed here, no safetensors package)
and DIR/prompt.json ({"tokens": [[...], ...]}: one or more sequences), and writes
DIR/ref_logits.f32: the logits of every token of every sequence, concatenated, float32
little-endian, shape [total_tokens, vocab]. Computed in float64, following the Hugging Face
modeling code: RMSNorm, rotate-half RoPE (with Llama 3 scaling), GQA causal attention
(with Mistral's sliding window), Qwen2 q/k/v biases, Qwen3 per-head q/k RMSNorm, SwiGLU MLP.
"""

import json
import math
import struct
import sys

import numpy as np

DTYPES = {"F32": np.float32, "F16": np.float16}


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        raw = data[base + a : base + b]
        if info["dtype"] == "BF16":
            u = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            arr = u.view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype=np.dtype(DTYPES[info["dtype"]]).newbyteorder("<"))
        out[name] = arr.astype(np.float64).reshape(info["shape"])
    return out


def rms_norm(x, w, eps):
    return w * (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps))


def inv_freq(cfg, head_dim):
    theta = cfg.get("rope_theta", 10000.0)
    f = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    rs = cfg.get("rope_scaling")
    if rs and rs.get("rope_type", rs.get("type")) == "llama3":
        old = rs["original_max_position_embeddings"]
        lo, hi, factor = rs["low_freq_factor"], rs["high_freq_factor"], rs["factor"]
        wavelen = 2 * math.pi / f
        smooth = (old / wavelen - lo) / (hi - lo)
        scaled = np.where(wavelen > old / lo, f / factor, f)
        mid = (wavelen >= old / hi) & (wavelen <= old / lo)
        f = np.where(mid, (1 - smooth) * f / factor + smooth * f, scaled)
    return f


def rope(x, pos, freqs):
    # x: [T, H, D]; rotate_half convention.
    ang = np.outer(pos, freqs)  # [T, D/2]
    cos = np.concatenate([np.cos(ang)] * 2, axis=-1)[:, None, :]
    sin = np.concatenate([np.sin(ang)] * 2, axis=-1)[:, None, :]
    half = x.shape[-1] // 2
    rot = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rot * sin


def forward(cfg, w, tokens):
    arch = cfg["architectures"][0]
    H = cfg["hidden_size"]
    nh = cfg["num_attention_heads"]
    nkv = cfg.get("num_key_value_heads", nh)
    hd = cfg.get("head_dim") or H // nh
    eps = cfg.get("rms_norm_eps", 1e-6)
    bias = arch == "Qwen2ForCausalLM" or cfg.get("attention_bias", False)
    qk_norm = arch == "Qwen3ForCausalLM"
    window = (
        cfg.get("sliding_window") if arch == "MistralForCausalLM" or cfg.get("use_sliding_window") else None
    )
    T = len(tokens)
    pos = np.arange(T, dtype=np.float64)
    freqs = inv_freq(cfg, hd)
    x = w["model.embed_tokens.weight"][tokens]
    mask = np.tril(np.ones((T, T), dtype=bool))
    if window:
        mask &= (np.arange(T)[:, None] - np.arange(T)[None, :]) < window
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms_norm(x, w[p + "input_layernorm.weight"], eps)
        q = h @ w[p + "self_attn.q_proj.weight"].T
        k = h @ w[p + "self_attn.k_proj.weight"].T
        v = h @ w[p + "self_attn.v_proj.weight"].T
        if bias:
            q = q + w[p + "self_attn.q_proj.bias"]
            k = k + w[p + "self_attn.k_proj.bias"]
            v = v + w[p + "self_attn.v_proj.bias"]
        q = q.reshape(T, nh, hd)
        k = k.reshape(T, nkv, hd)
        v = v.reshape(T, nkv, hd)
        if qk_norm:
            q = rms_norm(q, w[p + "self_attn.q_norm.weight"], eps)
            k = rms_norm(k, w[p + "self_attn.k_norm.weight"], eps)
        q = rope(q, pos, freqs)
        k = rope(k, pos, freqs)
        rep = nh // nkv
        k = np.repeat(k, rep, axis=1)
        v = np.repeat(v, rep, axis=1)
        scores = np.einsum("thd,shd->hts", q, k) / math.sqrt(hd)
        scores = np.where(mask[None], scores, -np.inf)
        scores -= scores.max(-1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(-1, keepdims=True)
        att = np.einsum("hts,shd->thd", probs, v).reshape(T, nh * hd)
        x = x + att @ w[p + "self_attn.o_proj.weight"].T
        h = rms_norm(x, w[p + "post_attention_layernorm.weight"], eps)
        g = h @ w[p + "mlp.gate_proj.weight"].T
        u = h @ w[p + "mlp.up_proj.weight"].T
        x = x + ((g / (1 + np.exp(-g))) * u) @ w[p + "mlp.down_proj.weight"].T
    x = rms_norm(x, w["model.norm.weight"], eps)
    head = w["model.embed_tokens.weight"] if cfg.get("tie_word_embeddings", False) else w["lm_head.weight"]
    return x @ head.T


def main():
    d = sys.argv[1]
    with open(f"{d}/config.json") as f:
        cfg = json.load(f)
    w = read_safetensors(f"{d}/model.safetensors")
    with open(f"{d}/prompt.json") as f:
        seqs = json.load(f)["tokens"]
    logits = np.concatenate([forward(cfg, w, np.array(s)) for s in seqs], axis=0)
    logits.astype("<f4").tofile(f"{d}/ref_logits.f32")


if __name__ == "__main__":
    main()
