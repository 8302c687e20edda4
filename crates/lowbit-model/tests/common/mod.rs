//! Helpers shared by the integration tests: tiny random checkpoints, and (tests/reference/locate.rs)
//! the references outside the repository.
#![allow(dead_code)]

use lowbit_model::Rng;
use safetensors::tensor::{Dtype, TensorView};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

#[path = "../../../../tests/reference/locate.rs"]
mod references;
#[allow(unused_imports)] // not every test target needs a reference
pub use references::*;

/// A fresh empty directory under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let d = std::env::temp_dir().join(format!("lowbit-model-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Random normal-ish values (sum of uniforms) scaled by `scale`.
pub fn randn(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| ((0..4).map(|_| rng.next_f64()).sum::<f64>() - 2.0) as f32 * scale).collect()
}

/// Storage dtype for a tiny checkpoint.
#[derive(Clone, Copy, Debug)]
pub enum Store {
    F32,
    F16,
    Bf16,
}

/// Writes `tensors` as a safetensors file.
pub fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>, Vec<f32>)], store: Store) {
    let bufs: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, v)| {
            // Norms and biases stay f32 as HF checkpoints often mix; matrices take `store`.
            let st = if s.len() == 2 { store } else { Store::F32 };
            let (dt, bytes) = match st {
                Store::F32 => (Dtype::F32, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
                Store::F16 => (Dtype::F16, v.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect()),
                Store::Bf16 => (Dtype::BF16, v.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect()),
            };
            (n.clone(), dt, s.clone(), bytes)
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> =
        bufs.iter().map(|(n, dt, s, b)| (n.clone(), TensorView::new(*dt, s.clone(), b).unwrap())).collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// A tiny config of the given architecture.
pub fn tiny_config(arch: &str, tied: bool) -> Value {
    let mut c = json!({
        "architectures": [arch],
        "vocab_size": 61,
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "max_position_embeddings": 128,
        "tie_word_embeddings": tied,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
    });
    match arch {
        "LlamaForCausalLM" if !tied => {
            c["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 16});
            c["rope_theta"] = json!(500000.0);
        }
        "MistralForCausalLM" => c["sliding_window"] = json!(5),
        "Qwen3ForCausalLM" => {
            c["head_dim"] = json!(16);
            c["num_key_value_heads"] = json!(1);
        }
        _ => {}
    }
    c
}

/// Random weights for `cfg`, under Hugging Face names.
pub fn tiny_weights(cfg: &Value, seed: u64) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let u = |k: &str| cfg[k].as_u64().unwrap() as usize;
    let (v, h, ff, nh) = (u("vocab_size"), u("hidden_size"), u("intermediate_size"), u("num_attention_heads"));
    let nkv = u("num_key_value_heads");
    let hd = cfg.get("head_dim").and_then(|x| x.as_u64()).map_or(h / nh, |x| x as usize);
    let arch = cfg["architectures"][0].as_str().unwrap();
    let mut rng = Rng::new(seed);
    let mut t = vec![];
    let mut add = |name: String, shape: Vec<usize>, scale: f32, offset: f32, rng: &mut Rng| {
        let n = shape.iter().product();
        let vals = randn(rng, n, scale).into_iter().map(|x| x + offset).collect();
        t.push((name, shape, vals));
    };
    add("model.embed_tokens.weight".into(), vec![v, h], 0.5, 0.0, &mut rng);
    for i in 0..u("num_hidden_layers") {
        let p = format!("model.layers.{i}.");
        add(format!("{p}input_layernorm.weight"), vec![h], 0.1, 1.0, &mut rng);
        add(format!("{p}post_attention_layernorm.weight"), vec![h], 0.1, 1.0, &mut rng);
        add(format!("{p}self_attn.q_proj.weight"), vec![nh * hd, h], 0.2, 0.0, &mut rng);
        add(format!("{p}self_attn.k_proj.weight"), vec![nkv * hd, h], 0.2, 0.0, &mut rng);
        add(format!("{p}self_attn.v_proj.weight"), vec![nkv * hd, h], 0.2, 0.0, &mut rng);
        add(format!("{p}self_attn.o_proj.weight"), vec![h, nh * hd], 0.2, 0.0, &mut rng);
        if arch == "Qwen2ForCausalLM" {
            add(format!("{p}self_attn.q_proj.bias"), vec![nh * hd], 0.3, 0.0, &mut rng);
            add(format!("{p}self_attn.k_proj.bias"), vec![nkv * hd], 0.3, 0.0, &mut rng);
            add(format!("{p}self_attn.v_proj.bias"), vec![nkv * hd], 0.3, 0.0, &mut rng);
        }
        if arch == "Qwen3ForCausalLM" {
            add(format!("{p}self_attn.q_norm.weight"), vec![hd], 0.1, 1.0, &mut rng);
            add(format!("{p}self_attn.k_norm.weight"), vec![hd], 0.1, 1.0, &mut rng);
        }
        add(format!("{p}mlp.gate_proj.weight"), vec![ff, h], 0.2, 0.0, &mut rng);
        add(format!("{p}mlp.up_proj.weight"), vec![ff, h], 0.2, 0.0, &mut rng);
        add(format!("{p}mlp.down_proj.weight"), vec![h, ff], 0.2, 0.0, &mut rng);
    }
    add("model.norm.weight".into(), vec![h], 0.1, 1.0, &mut rng);
    if !cfg["tie_word_embeddings"].as_bool().unwrap() {
        add("lm_head.weight".into(), vec![v, h], 0.3, 0.0, &mut rng);
    }
    t
}

/// Writes a tiny model directory and returns its weights.
pub fn write_tiny_model(dir: &Path, cfg: &Value, seed: u64, store: Store) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let w = tiny_weights(cfg, seed);
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(cfg).unwrap()).unwrap();
    write_safetensors(&dir.join("model.safetensors"), &w, store);
    w
}
