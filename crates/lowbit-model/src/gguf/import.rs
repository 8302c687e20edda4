//! `import_gguf`: a GGUF file to a Hugging Face-style directory.

use super::tokenizer::{tokenizer_config_json, tokenizer_json};
use super::{config_from_gguf, GgufSource};
use crate::load::{write, write_dir_atomically};
use crate::tensors::{TensorData, TensorSource};
use crate::{ModelError, Result};
use safetensors::tensor::{Dtype, TensorView};
use std::path::Path;

/// Converts a GGUF file (llama architecture) into `out_dir`: `config.json`, `model.safetensors`
/// (f32, or f16/bf16 where the GGUF had them; q/k rows un-permuted back to Hugging Face order),
/// `tokenizer.json` and `tokenizer_config.json` (with the chat template). The directory is
/// written under a temporary name and renamed at the end, so it never exists half-written.
pub fn import_gguf(file: impl AsRef<Path>, out_dir: impl AsRef<Path>) -> Result<()> {
    let file = super::open(file.as_ref())?;
    let config = config_from_gguf(&file)?;
    let tok_json = tokenizer_json(&file)?;
    let tok_cfg = tokenizer_config_json(&file)?;
    let mut names = vec!["model.embed_tokens.weight".to_string(), "model.norm.weight".to_string()];
    if !config.tie_word_embeddings {
        names.push("lm_head.weight".into());
    }
    for i in 0..config.num_hidden_layers {
        for part in [
            "input_layernorm.weight",
            "post_attention_layernorm.weight",
            "self_attn.q_proj.weight",
            "self_attn.k_proj.weight",
            "self_attn.v_proj.weight",
            "self_attn.o_proj.weight",
            "mlp.gate_proj.weight",
            "mlp.up_proj.weight",
            "mlp.down_proj.weight",
        ] {
            names.push(format!("model.layers.{i}.{part}"));
        }
        if config.attention_bias {
            for b in ["q_proj", "k_proj", "v_proj"] {
                names.push(format!("model.layers.{i}.self_attn.{b}.bias"));
            }
        }
    }
    let mut src = GgufSource::new(&file, &config);
    let mut tensors = Vec::with_capacity(names.len());
    for name in names {
        let t = src.take(&name)?.ok_or_else(|| ModelError::MissingTensor { name: name.clone() })?;
        let (dtype, bytes) = match t.data {
            TensorData::F32(v) => (Dtype::F32, bytemuck::cast_slice(&v).to_vec()),
            TensorData::F16(v) => (Dtype::F16, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            TensorData::Bf16(v) => (Dtype::BF16, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            TensorData::Quant(q) => (Dtype::F32, bytemuck::cast_slice(&q.dequantize()).to_vec()),
        };
        tensors.push((name, dtype, t.shape, bytes));
    }
    let st_err = |e: safetensors::SafeTensorError| ModelError::Safetensors {
        path: "model.safetensors".into(),
        reason: e.to_string(),
    };
    let views = tensors
        .iter()
        .map(|(n, dt, shape, data)| TensorView::new(*dt, shape.clone(), data).map(|v| (n.clone(), v)))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(st_err)?;
    let mut meta = std::collections::HashMap::new();
    meta.insert("format".to_string(), "pt".to_string());
    let bytes = safetensors::serialize(views, Some(meta)).map_err(st_err)?;
    drop(tensors);
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default();
    write_dir_atomically(out_dir.as_ref(), |tmp| {
        write(&tmp.join("model.safetensors"), &bytes)?;
        write(&tmp.join("config.json"), pretty(&config.to_hf_json()).as_bytes())?;
        write(&tmp.join("tokenizer.json"), tok_json.to_string().as_bytes())?;
        write(&tmp.join("tokenizer_config.json"), pretty(&tok_cfg).as_bytes())?;
        Ok(())
    })
}
