//! GGUF files as models: the config implied by the metadata, tensors under Hugging Face names
//! (dequantized, q/k rows un-permuted), the tokenizer stored in the metadata, import to an
//! HF-style directory, and export of any model lowbit loads to a llama GGUF. Reading and writing
//! GGUF itself is `lowbit-gguf`, re-exported here.

mod export;
mod import;
mod tokenizer;

pub(crate) use export::describe;
pub use export::{export_gguf, ExportPath, GgufExport, GgufExportOptions, TensorExport};
pub use import::import_gguf;
pub use lowbit_gguf::llama::{gguf_name, unpermute_rows};
pub use lowbit_gguf::{dequantize, quantize, GgmlType, GgufError, GgufFile, GgufTensorInfo, GgufValue, GgufValueType};
pub(crate) use tokenizer::tokenizer_from_gguf;

use crate::config::{Architecture, ModelConfig};
use crate::tensors::{Tensor, TensorData, TensorSource};
use crate::{ModelError, Result};
use std::path::Path;

/// The model error for a GGUF error in `path`: unsupported content, I/O, or a corrupt file.
pub(crate) fn gguf_error(path: &Path, e: GgufError) -> ModelError {
    let path_s = path.display().to_string();
    match e {
        GgufError::Io { source, .. } => ModelError::io(path, source),
        GgufError::UnsupportedVersion { .. } | GgufError::UnknownTensorType { .. } => {
            ModelError::GgufUnsupported { path: path_s, what: e.to_string() }
        }
        e => ModelError::Gguf { path: path_s, reason: e.to_string() },
    }
}

/// The file's path for messages.
pub(crate) fn path_of(file: &GgufFile) -> &Path {
    file.path().unwrap_or(Path::new("<GGUF in memory>"))
}

/// Opens and parses a GGUF file, with lowbit-model's errors.
pub(crate) fn open(path: &Path) -> Result<GgufFile> {
    if !path.is_file() {
        return Err(ModelError::MissingFile { path: path.display().to_string(), what: "the GGUF file".into() });
    }
    GgufFile::open(path).map_err(|e| gguf_error(path, e))
}

fn meta_err(file: &GgufFile, key: &str, reason: &str) -> ModelError {
    ModelError::Gguf { path: path_of(file).display().to_string(), reason: format!("metadata {key}: {reason}") }
}

/// An optional unsigned integer from the metadata.
pub(crate) fn meta_u64(file: &GgufFile, key: &str) -> Result<Option<u64>> {
    file.get_u64(key).map_err(|e| gguf_error(path_of(file), e))
}

/// The model config implied by a GGUF file's metadata (llama architecture only).
pub fn config_from_gguf(file: &GgufFile) -> Result<ModelConfig> {
    let arch = file.get_str("general.architecture").unwrap_or("");
    if arch != "llama" {
        return Err(ModelError::UnsupportedArchitecture { name: format!("GGUF general.architecture = {arch:?}") });
    }
    let opt = |k: &str| meta_u64(file, &format!("llama.{k}")).map(|v| v.map(|v| v as usize));
    let req = |k: &str| opt(k)?.ok_or_else(|| meta_err(file, &format!("llama.{k}"), "missing"));
    let f64_ = |k: &str| file.get_f64(k).map_err(|e| gguf_error(path_of(file), e));
    let hidden_size = req("embedding_length")?;
    let num_attention_heads = req("attention.head_count")?;
    let num_key_value_heads = opt("attention.head_count_kv")?.unwrap_or(num_attention_heads);
    let head_dim = opt("attention.key_length")?.unwrap_or(hidden_size / num_attention_heads.max(1));
    let vocab_size = match opt("vocab_size")? {
        Some(v) => v,
        None => file
            .tensor_info("token_embd.weight")
            .map(|t| t.shape()[0])
            .ok_or_else(|| ModelError::MissingTensor { name: "token_embd.weight".into() })?,
    };
    let tok_id = |k: &str| file.get(k).and_then(|v| v.as_u64()).map(|v| v as u32);
    let cfg = ModelConfig {
        arch: Architecture::Llama,
        vocab_size,
        hidden_size,
        intermediate_size: req("feed_forward_length")?,
        num_hidden_layers: req("block_count")?,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        rms_norm_eps: f64_("llama.attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5) as f32,
        rope_theta: f64_("llama.rope.freq_base")?.unwrap_or(10000.0) as f32,
        rope_scaling: None,
        max_position_embeddings: opt("context_length")?.unwrap_or(2048),
        tie_word_embeddings: file.tensor_info("output.weight").is_none(),
        attention_bias: file.tensor_info("blk.0.attn_q.bias").is_some(),
        sliding_window: None,
        bos_token_id: tok_id("tokenizer.ggml.bos_token_id"),
        eos_token_ids: tok_id("tokenizer.ggml.eos_token_id").into_iter().collect(),
        int8_activations: false,
    };
    cfg.validate()?;
    Ok(cfg)
}

/// Tensors of a GGUF file under Hugging Face names, dequantized (F16/BF16 kept as they are)
/// and with q/k rows un-permuted.
pub(crate) struct GgufSource<'a> {
    file: &'a GgufFile,
    n_head: usize,
    n_kv_head: usize,
}

impl<'a> GgufSource<'a> {
    pub(crate) fn new(file: &'a GgufFile, cfg: &ModelConfig) -> Self {
        GgufSource { file, n_head: cfg.num_attention_heads, n_kv_head: cfg.num_key_value_heads }
    }
}

impl TensorSource for GgufSource<'_> {
    fn take(&mut self, name: &str) -> Result<Option<Tensor>> {
        let Some(gname) = gguf_name(name) else { return Ok(None) };
        let Some(info) = self.file.tensor_info(&gname) else { return Ok(None) };
        let err = |e| gguf_error(path_of(self.file), e);
        let shape = info.shape();
        let raw = self.file.raw(info).map_err(err)?;
        let mut data = match info.ty {
            GgmlType::F16 => TensorData::F16(crate::tensors::le_f16(raw)),
            GgmlType::Bf16 => TensorData::Bf16(crate::tensors::le_bf16(raw)),
            ty => TensorData::F32(lowbit_gguf::dequantize_to_vec(ty, raw, info.numel()).map_err(err)?),
        };
        let n_head = if gname.ends_with("attn_q.weight") || gname.ends_with("attn_q.bias") {
            Some(self.n_head)
        } else if gname.ends_with("attn_k.weight") || gname.ends_with("attn_k.bias") {
            Some(self.n_kv_head)
        } else {
            None
        };
        if let Some(n_head) = n_head {
            let cols = if shape.len() == 2 { shape[1] } else { 1 };
            if shape[0] % (2 * n_head) != 0 {
                return Err(ModelError::TensorShape {
                    name: name.into(),
                    expected: vec![n_head * 2, cols],
                    got: shape,
                });
            }
            data = match data {
                TensorData::F32(v) => TensorData::F32(unpermute_rows(&v, n_head, cols)),
                TensorData::F16(v) => TensorData::F16(unpermute_rows(&v, n_head, cols)),
                TensorData::Bf16(v) => TensorData::Bf16(unpermute_rows(&v, n_head, cols)),
                q @ TensorData::Quant(_) => q,
            };
        }
        Ok(Some(Tensor { shape, data }))
    }
}
