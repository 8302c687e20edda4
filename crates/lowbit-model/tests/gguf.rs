//! GGUF: dequantizers against the `gguf` Python package, a synthetic GGUF written here (q/k
//! permutation, names, config, tokenizer, import), and truncated or corrupt files.

mod common;

use common::*;
use lowbit_model::gguf::{dequantize, gguf_name, GgmlType};
use lowbit_model::{import_gguf, Model, ModelError, Rng};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// Largest |rust - gguf-python| on dequantized weights, relative to the largest |weight|.
const DEQUANT_TOL: f32 = 1e-6;

const TYPES: [(GgmlType, &str, &[usize]); 10] = [
    (GgmlType::F16, "F16", &[0]),
    (GgmlType::Bf16, "BF16", &[]),
    (GgmlType::Q4_0, "Q4_0", &[0]),
    (GgmlType::Q4_1, "Q4_1", &[0, 2]),
    (GgmlType::Q5_0, "Q5_0", &[0]),
    (GgmlType::Q5_1, "Q5_1", &[0, 2]),
    (GgmlType::Q8_0, "Q8_0", &[0]),
    (GgmlType::Q4K, "Q4_K", &[0, 2]),
    (GgmlType::Q5K, "Q5_K", &[0, 2]),
    (GgmlType::Q6K, "Q6_K", &[208]),
];

/// Random blocks whose f16 scale fields hold sane values (random bits elsewhere).
fn random_blocks(ty: GgmlType, scale_at: &[usize], blocks: usize, rng: &mut Rng) -> Vec<u8> {
    let mut b: Vec<u8> = (0..blocks * ty.block_bytes()).map(|_| rng.next_u64() as u8).collect();
    for blk in b.chunks_exact_mut(ty.block_bytes()) {
        for &at in scale_at {
            let v = (rng.next_f64() as f32 - 0.3) * 0.05;
            blk[at..at + 2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
        }
    }
    if ty == GgmlType::F16 || ty == GgmlType::Bf16 {
        // Keep them finite: random low bytes, a small exponent in the high byte.
        for (i, x) in b.iter_mut().enumerate() {
            if i % 2 == 1 {
                *x = (*x & 0x80) | 0x3c;
            }
        }
    }
    b
}

#[test]
#[ignore = "reference: python3 with numpy and gguf (make test-rust runs it)"]
fn dequantizers_match_gguf_python() {
    let py = python(&["numpy", "gguf"]);
    let dir = temp_dir("dequant");
    let mut rng = Rng::new(5);
    for (ty, name, scale_at) in TYPES {
        let blocks = 24;
        let raw = random_blocks(ty, scale_at, blocks, &mut rng);
        let n = blocks * ty.block_len();
        let mut ours = vec![0f32; n];
        dequantize(ty, &raw, &mut ours).unwrap();
        let (inp, outp) = (dir.join(format!("{name}.bin")), dir.join(format!("{name}.f32")));
        std::fs::write(&inp, &raw).unwrap();
        let script = format!(
            "import numpy as np, gguf.quants as q\nfrom gguf import GGMLQuantizationType as T\n\
             raw = np.fromfile('{}', dtype=np.uint8)\nt = T.{name}\n\
             if t == T.F16: out = raw.view('<f2').astype(np.float32)\n\
             else: out = q.dequantize(raw, t).astype(np.float32)\nout.reshape(-1).astype('<f4').tofile('{}')",
            inp.display(),
            outp.display()
        );
        let out = Command::new(&py).args(["-c", &script]).output().unwrap();
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let theirs: Vec<f32> = std::fs::read(&outp)
            .unwrap()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(theirs.len(), n, "{name}");
        let scale = theirs.iter().fold(1e-12f32, |m, x| m.max(x.abs()));
        let worst = ours.iter().zip(&theirs).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale;
        assert!(worst <= DEQUANT_TOL, "{name}: relative difference {worst}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

// ---- a GGUF writer for tests ----

enum Kv {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
    Strs(Vec<String>),
    I32s(Vec<i32>),
}

fn put_str(b: &mut Vec<u8>, s: &str) {
    b.extend((s.len() as u64).to_le_bytes());
    b.extend(s.as_bytes());
}

fn write_gguf(kvs: &[(&str, Kv)], tensors: &[(String, Vec<usize>, GgmlType, Vec<u8>)]) -> Vec<u8> {
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_le_bytes());
    b.extend((tensors.len() as u64).to_le_bytes());
    b.extend((kvs.len() as u64).to_le_bytes());
    for (k, v) in kvs {
        put_str(&mut b, k);
        match v {
            Kv::U32(x) => {
                b.extend(4u32.to_le_bytes());
                b.extend(x.to_le_bytes());
            }
            Kv::F32(x) => {
                b.extend(6u32.to_le_bytes());
                b.extend(x.to_le_bytes());
            }
            Kv::Bool(x) => {
                b.extend(7u32.to_le_bytes());
                b.push(*x as u8);
            }
            Kv::Str(s) => {
                b.extend(8u32.to_le_bytes());
                put_str(&mut b, s);
            }
            Kv::Strs(a) => {
                b.extend(9u32.to_le_bytes());
                b.extend(8u32.to_le_bytes());
                b.extend((a.len() as u64).to_le_bytes());
                a.iter().for_each(|s| put_str(&mut b, s));
            }
            Kv::I32s(a) => {
                b.extend(9u32.to_le_bytes());
                b.extend(5u32.to_le_bytes());
                b.extend((a.len() as u64).to_le_bytes());
                a.iter().for_each(|x| b.extend(x.to_le_bytes()));
            }
        }
    }
    let mut offset = 0u64;
    for (name, shape, ty, data) in tensors {
        put_str(&mut b, name);
        b.extend((shape.len() as u32).to_le_bytes());
        shape.iter().rev().for_each(|&d| b.extend((d as u64).to_le_bytes()));
        b.extend(ty.id().to_le_bytes());
        b.extend(offset.to_le_bytes());
        offset += (data.len() as u64).div_ceil(32) * 32;
    }
    b.resize(b.len().div_ceil(32) * 32, 0);
    for (_, _, _, data) in tensors {
        b.extend(data);
        b.resize(b.len().div_ceil(32) * 32, 0);
    }
    b
}

/// llama.cpp's `permute` of q/k rows (the inverse of what the loader undoes).
fn permute(w: &[f32], n_head: usize, cols: usize) -> Vec<f32> {
    let d = w.len() / cols / n_head;
    let mut out = w.to_vec();
    for h in 0..n_head {
        for j in 0..2 {
            for i in 0..d / 2 {
                let (src, dst) = (h * d + j * (d / 2) + i, h * d + 2 * i + j);
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

fn q8_0(w: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let mut bytes = vec![];
    let mut deq = vec![];
    for blk in w.chunks_exact(32) {
        let amax = blk.iter().fold(0f32, |m, x| m.max(x.abs()));
        let d = half::f16::from_f32(amax / 127.0);
        bytes.extend(d.to_le_bytes());
        for &x in blk {
            let q = if d.to_f32() == 0.0 { 0 } else { (x / d.to_f32()).round().clamp(-127.0, 127.0) as i8 };
            bytes.push(q as u8);
            deq.push(q as f32 * d.to_f32());
        }
    }
    (bytes, deq)
}

/// A tiny llama GGUF (GGUF names, permuted q/k, F32/F16/Q8_0 tensors, a byte-level BPE tokenizer)
/// and the equivalent Hugging Face directory.
fn tiny_gguf(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let mut cfg = tiny_config("LlamaForCausalLM", true);
    cfg["hidden_size"] = 64.into();
    cfg["intermediate_size"] = 96.into();
    let u = |k: &str| cfg[k].as_u64().unwrap() as usize;
    let (nh, nkv, h) = (u("num_attention_heads"), u("num_key_value_heads"), u("hidden_size"));
    let mut weights = tiny_weights(&cfg, 11);
    let mut tensors = vec![];
    for (name, shape, vals) in weights.iter_mut() {
        let g = gguf_name(name).unwrap();
        let (ty, data) = if g.ends_with("attn_q.weight") || g.ends_with("attn_k.weight") {
            let n = if g.ends_with("attn_q.weight") { nh } else { nkv };
            let p = permute(vals, n, h);
            (GgmlType::F16, p.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect::<Vec<u8>>())
        } else if g.ends_with("ffn_down.weight") || g == "token_embd.weight" {
            let (bytes, deq) = q8_0(vals);
            *vals = deq;
            (GgmlType::Q8_0, bytes)
        } else {
            (GgmlType::F32, vals.iter().flat_map(|x| x.to_le_bytes()).collect())
        };
        if ty == GgmlType::F16 {
            vals.iter_mut().for_each(|x| *x = half::f16::from_f32(*x).to_f32());
        }
        tensors.push((g, shape.clone(), ty, data));
    }
    // Vocabulary: 3 specials, then single characters and a few merges.
    let mut tokens: Vec<String> = vec!["<|endoftext|>".into(), "<|im_start|>".into(), "<|im_end|>".into()];
    let chars = "abcdefghijklmnopqrstuvwxyzĠ0123456789.,!?";
    tokens.extend(chars.chars().map(|c| c.to_string()));
    let merges = ["Ġ t", "h e", "Ġt he", "Ġ a", "i n"];
    for m in merges {
        tokens.push(m.replace(' ', ""));
    }
    while tokens.len() < u("vocab_size") {
        tokens.push(format!("<unused{}>", tokens.len()));
    }
    let types: Vec<i32> = (0..tokens.len()).map(|i| if i < 3 { 3 } else { 1 }).collect();
    let kvs = vec![
        ("general.architecture", Kv::Str("llama".into())),
        ("llama.block_count", Kv::U32(u("num_hidden_layers") as u32)),
        ("llama.context_length", Kv::U32(128)),
        ("llama.embedding_length", Kv::U32(h as u32)),
        ("llama.feed_forward_length", Kv::U32(u("intermediate_size") as u32)),
        ("llama.attention.head_count", Kv::U32(nh as u32)),
        ("llama.attention.head_count_kv", Kv::U32(nkv as u32)),
        ("llama.rope.freq_base", Kv::F32(10000.0)),
        ("llama.attention.layer_norm_rms_epsilon", Kv::F32(1e-5)),
        ("tokenizer.ggml.model", Kv::Str("gpt2".into())),
        ("tokenizer.ggml.pre", Kv::Str("smollm".into())),
        ("tokenizer.ggml.tokens", Kv::Strs(tokens)),
        ("tokenizer.ggml.token_type", Kv::I32s(types)),
        ("tokenizer.ggml.merges", Kv::Strs(merges.iter().map(|s| s.to_string()).collect())),
        ("tokenizer.ggml.bos_token_id", Kv::U32(1)),
        ("tokenizer.ggml.eos_token_id", Kv::U32(2)),
        ("tokenizer.ggml.add_bos_token", Kv::Bool(false)),
        (
            "tokenizer.chat_template",
            Kv::Str("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}".into()),
        ),
    ];
    let gguf = dir.join("tiny.gguf");
    std::fs::write(&gguf, write_gguf(&kvs, &tensors)).unwrap();
    let hf = dir.join("hf");
    std::fs::create_dir_all(&hf).unwrap();
    std::fs::write(hf.join("config.json"), cfg.to_string()).unwrap();
    write_safetensors(&hf.join("model.safetensors"), &weights, Store::F32);
    (gguf, hf)
}

/// Logits as evaluations compute them (f32 activations: the GGUF's Q8_0 tensors load packed,
/// and generation would quantize their inputs to int8).
fn logits(model: &Model, tokens: &[u32]) -> Vec<f32> {
    let hidden = model.hidden_states(tokens, &mut model.new_cache(), &mut lowbit_core::NoProgress).unwrap();
    let mut out = vec![0f32; tokens.len() * model.config().vocab_size];
    model.lm_head_rows(&hidden, tokens.len(), &mut out).unwrap();
    out
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

#[test]
fn synthetic_gguf_loads_like_its_hf_twin_and_imports() {
    let dir = temp_dir("gguf");
    let (gguf, hf) = tiny_gguf(&dir);
    let from_gguf = Model::load(&gguf).unwrap();
    let from_hf = Model::load(&hf).unwrap();
    assert_eq!(from_gguf.config().num_key_value_heads, 2);
    assert!(from_gguf.config().tie_word_embeddings);
    let toks = [5u32, 9, 30, 2, 17, 44, 8];
    let (a, b) = (logits(&from_gguf, &toks), logits(&from_hf, &toks));
    let worst = max_diff(&a, &b);
    assert!(worst < 1e-5, "GGUF vs HF logits differ by {worst}");

    let tok = from_gguf.tokenizer().unwrap();
    let ids = tok.encode("the 42", false).unwrap();
    let pieces: Vec<String> = ids.iter().map(|&i| tok.id_to_token(i).unwrap()).collect();
    assert_eq!(pieces, ["t", "he", "Ġ", "4", "2"]);
    assert_eq!(tok.decode(&ids, false).unwrap(), "the 42");
    let chat = tok.apply_chat_template(&[lowbit_model::ChatMessage::new("user", "hi")], true).unwrap();
    assert_eq!(chat, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");

    let out = dir.join("imported");
    import_gguf(&gguf, &out).unwrap();
    let cfg: Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["architectures"][0], "LlamaForCausalLM");
    let tcfg: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("tokenizer_config.json")).unwrap()).unwrap();
    assert!(tcfg["chat_template"].as_str().unwrap().contains("im_start"));
    let imported = Model::load(&out).unwrap();
    let worst = max_diff(&logits(&imported, &toks), &b);
    assert!(worst < 1e-5, "imported vs HF logits differ by {worst}");
    assert_eq!(imported.tokenizer().unwrap().encode("the 42", false).unwrap(), ids);
    // Importing over a non-empty directory is refused and leaves it alone.
    assert!(import_gguf(&gguf, &out).is_err());
    assert!(out.join("model.safetensors").is_file());
}

#[test]
fn truncated_or_corrupt_gguf_is_a_clear_error() {
    let dir = temp_dir("gguf-bad");
    let (gguf, _) = tiny_gguf(&dir);
    let bytes = std::fs::read(&gguf).unwrap();
    let bad = dir.join("bad.gguf");
    let step = (bytes.len() / 97).max(1);
    for cut in (0..bytes.len()).step_by(step).chain([bytes.len() - 1]) {
        std::fs::write(&bad, &bytes[..cut]).unwrap();
        match Model::load(&bad) {
            Err(ModelError::Gguf { reason, .. }) => assert!(!reason.is_empty()),
            other => panic!("cut at {cut}: expected a GGUF error, got {other:?}"),
        }
    }
    // Flipping bytes anywhere in the header never panics.
    let mut rng = Rng::new(3);
    let header_len = 4096.min(bytes.len());
    for _ in 0..300 {
        let mut b = bytes.clone();
        let at = (rng.next_u64() as usize) % header_len;
        b[at] ^= 1 << (rng.next_u64() % 8);
        std::fs::write(&bad, &b).unwrap();
        let _ = Model::load(&bad);
    }
    // Unknown architecture in the metadata.
    let text = String::from_utf8_lossy(&bytes).into_owned();
    assert!(text.contains("llama"));
    let mut b = bytes.clone();
    let at = bytes.windows(5).position(|w| w == b"llama").unwrap();
    b[at..at + 5].copy_from_slice(b"gpt2x");
    std::fs::write(&bad, &b).unwrap();
    let e = Model::load(&bad).unwrap_err();
    assert!(e.to_string().contains("gpt2x"), "{e}");
}
