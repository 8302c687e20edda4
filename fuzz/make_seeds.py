"""Writes the seed corpora in fuzz/seeds/<target>/: small valid inputs for each parser.

Run from the repository root with the dev venv (numpy, safetensors, gguf):
    python fuzz/make_seeds.py
lowbit tensor files come from lowbit's own writer (tests/golden, written by
crates/lowbit-core/tests/golden.rs) plus one written by the safetensors package in lowbit's
documented layout; the rest is written here by hand or with the reference writers.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import save

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "fuzz" / "seeds"


def put(target: str, name: str, data: bytes | str) -> None:
    d = SEEDS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data.encode() if isinstance(data, str) else data)


def lowbit_tensors() -> None:
    shutil.copy(ROOT / "tests/golden/qtensors_v1.safetensors", SEEDS / "lowbit_tensors" / "golden.safetensors")
    codes = np.arange(2 * 16, dtype=np.uint8) % 16
    packed = (codes[0::2] | (codes[1::2] << 4)).astype(np.uint8)
    meta = {"format": "int", "bits": 4, "shape": [2, 16], "granularity": "group", "group_size": 8,
            "symmetric": False, "scale_dtype": "f32"}
    arrays = {"w.qweight": packed, "w.scales": np.full((2, 2), 0.5, np.float32),
              "w.zeros": np.full((2, 2), 8, np.uint8)}
    put("lowbit_tensors", "int4_f32.safetensors",
        save(arrays, metadata={"lowbit.format_version": "1", "lowbit.w": json.dumps(meta), "note": "x"}))
    meta = {"format": "nf4", "bits": 4, "shape": [2, 16], "block_size": 16, "double_quant": False}
    arrays = {"n.qweight": packed, "n.scales": np.array([1.0, 2.0], np.float32)}
    put("lowbit_tensors", "nf4.safetensors",
        save(arrays, metadata={"lowbit.format_version": "1", "lowbit.n": json.dumps(meta)}))


def safetensors_dir() -> None:
    dense = {
        "model.embed_tokens.weight": np.linspace(-1, 1, 24, dtype=np.float32).reshape(4, 6),
        "model.norm.weight": np.ones(6, np.float16),
    }
    put("safetensors_dir", "dense.safetensors", save(dense))
    put("safetensors_dir", "lowbit_and_dense.safetensors",
        (SEEDS / "lowbit_tensors" / "int4_f32.safetensors").read_bytes())
    put("safetensors_dir", "golden.safetensors", (ROOT / "tests/golden/qtensors_v1.safetensors").read_bytes())
    index = {"metadata": {"total_size": 120},
             "weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors",
                            "lm_head.weight": "model-00002-of-00002.safetensors"}}
    put("safetensors_dir", "index.json", json.dumps(index))


def hf_config() -> None:
    base = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 61, "hidden_size": 32,
            "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "max_position_embeddings": 128,
            "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": [2, 3], "hidden_act": "silu",
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                             "original_max_position_embeddings": 16}}
    put("hf_config", "llama3.json", json.dumps(base, indent=1))
    put("hf_config", "mistral.json", json.dumps({**base, "architectures": ["MistralForCausalLM"],
                                                  "rope_scaling": None, "sliding_window": 5}))
    put("hf_config", "qwen3.json", json.dumps({"model_type": "qwen3", "vocab_size": 61, "hidden_size": 32,
                                                "intermediate_size": 48, "num_hidden_layers": 1,
                                                "num_attention_heads": 4, "num_key_value_heads": 1,
                                                "head_dim": 16, "use_sliding_window": True, "sliding_window": 7,
                                                "quantization_config": {"activations": "int8 per-token"}}))


def tokenizer_json() -> None:
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "H": 3, "e": 4, "l": 5, "o": 6, "He": 7, "ll": 8, "Hell": 9,
             "Hello": 10, "\u0120": 11, ",": 12, "w": 13, "r": 14, "d": 15, "!": 16, "1": 17, "2": 18}
    bpe = {"version": "1.0", "truncation": None, "padding": None,
           "added_tokens": [{"id": 1, "content": "<s>", "single_word": False, "lstrip": False, "rstrip": False,
                             "normalized": False, "special": True}],
           "normalizer": None,
           "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                             "use_regex": True},
           "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
                              "use_regex": True},
           "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
           "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "continuing_subword_prefix": None,
                     "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                     "vocab": vocab, "merges": ["H e", "l l", "He ll", "Hell o"]}}
    put("tokenizer_json", "bpe.json", json.dumps(bpe))
    wordlevel = {"version": "1.0", "added_tokens": [], "normalizer": {"type": "Lowercase"},
                 "pre_tokenizer": {"type": "Whitespace"}, "post_processor": None, "decoder": None,
                 "model": {"type": "WordLevel", "vocab": {"[UNK]": 0, "hello": 1, "12": 2},
                           "unk_token": "[UNK]"}}
    put("tokenizer_json", "wordlevel.json", json.dumps(wordlevel))
    unigram = {"version": "1.0", "added_tokens": [], "normalizer": None,
               "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always",
                                 "split": True},
               "post_processor": None,
               "decoder": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "always", "split": True},
               "model": {"type": "Unigram", "unk_id": 0, "byte_fallback": True,
                         "vocab": [["<unk>", 0.0], ["\u2581Hello", -1.0], ["<0x41>", -5.0], ["o", -2.0]]}}
    put("tokenizer_json", "unigram.json", json.dumps(unigram))


def gguf_files() -> None:
    d = SEEDS / "gguf"
    d.mkdir(parents=True, exist_ok=True)
    path = d / "llama_tiny.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(64)
    w.add_embedding_length(32)
    w.add_block_count(1)
    w.add_feed_forward_length(48)
    w.add_head_count(4)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(["<s>", "</s>", "a", "b", "ab"])
    w.add_token_types([3, 3, 1, 1, 1])
    w.add_token_merges(["a b"])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    w.add_tensor("token_embd.weight", np.linspace(-1, 1, 5 * 32, dtype=np.float32).reshape(5, 32))
    w.add_tensor("output_norm.weight", np.ones(32, np.float16))
    q8 = np.zeros((2, 34), np.uint8)  # two Q8_0 blocks: f16 scale + 32 int8
    q8[:, 0:2] = np.frombuffer(np.float16(0.25).tobytes(), np.uint8)
    q8[:, 2:] = np.arange(32, dtype=np.int8).view(np.uint8)
    w.add_tensor("blk.0.attn_q.weight", q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    q4 = np.zeros((1, 18), np.uint8)  # one Q4_0 block: f16 scale + 16 bytes of nibbles
    q4[:, 0:2] = np.frombuffer(np.float16(0.5).tobytes(), np.uint8)
    q4[:, 2:] = 0x97
    w.add_tensor("blk.0.ffn_up.weight", q4, raw_dtype=gguf.GGMLQuantizationType.Q4_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def hf_quant_dirs() -> None:
    """One 4-bit [16, 32] module (group 32) plus a norm per format, as ``quantized_dir`` reads it:
    a u32 length, the ``quantization_config`` JSON, then the safetensors file."""

    def put_dir(target: str, name: str, qc: dict[str, object], arrays: dict[str, np.ndarray]) -> None:
        cfg = json.dumps(qc).encode()
        arrays = {**arrays, "model.norm.weight": np.ones(16, np.float32)}
        put(target, name, len(cfg).to_bytes(4, "little") + cfg + save(arrays))

    m = "model.layers.0.self_attn.q_proj"
    scales = np.full((1, 16), 0.25, np.float16)
    words = np.arange(64, dtype=np.uint32).reshape(4, 16) * np.uint32(0x01010101)
    put_dir("gptq_dir", "v1_sym.bin", {"bits": 4, "group_size": 32, "sym": True, "format": "gptq"},
            {m + ".qweight": words.view(np.int32), m + ".qzeros": np.full((1, 2), 0x77777777, np.int32),
             m + ".scales": scales, m + ".g_idx": np.zeros(32, np.int32)})  # fmt: skip
    put_dir("awq_dir", "gemm.bin", {"bits": 4, "group_size": 32, "zero_point": True, "version": "gemm"},
            {m + ".qweight": words.reshape(32, 2).view(np.int32), m + ".qzeros": np.full((1, 2), 0x38383838, np.int32),
             m + ".scales": scales})  # fmt: skip
    weights = {"num_bits": 4, "type": "int", "symmetric": False, "strategy": "group", "group_size": 32}
    qc = {"format": "pack-quantized", "config_groups": {"group_0": {"targets": ["Linear"], "weights": weights}}}
    put_dir("compressed_tensors_dir", "asym.bin", qc,
            {m + ".weight_packed": words.reshape(16, 4).view(np.int32), m + ".weight_scale": scales.T.copy(),
             m + ".weight_zero_point": np.full((2, 1), 0x89ABCDEF - (1 << 32), np.int32),
             m + ".weight_shape": np.array([16, 32], np.int64)})  # fmt: skip
    sym = {**qc, "config_groups": {"group_0": {"targets": ["Linear"], "weights": {**weights, "symmetric": True}}}}
    put_dir("compressed_tensors_dir", "sym.bin", sym,
            {m + ".weight_packed": words.reshape(16, 4).view(np.int32), m + ".weight_scale": scales.T.copy(),
             m + ".weight_shape": np.array([16, 32], np.int64)})  # fmt: skip


if __name__ == "__main__":
    for t in ("lowbit_tensors", "safetensors_dir", "hf_config", "tokenizer_json", "gguf", "gptq_dir", "awq_dir",
              "compressed_tensors_dir"):  # fmt: skip
        shutil.rmtree(SEEDS / t, ignore_errors=True)
        (SEEDS / t).mkdir(parents=True)
    lowbit_tensors()
    safetensors_dir()
    hf_config()
    tokenizer_json()
    gguf_files()
    hf_quant_dirs()
    for d in sorted(SEEDS.iterdir()):
        print(d.name, sorted((f.name, f.stat().st_size) for f in d.iterdir()))
