//! Typed model configuration, read from a Hugging Face `config.json` (or built from GGUF metadata).

use crate::{ModelError, Result};
use serde_json::Value;

/// The transformer families lowbit runs. They share one forward pass and differ in a few switches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Architecture {
    /// `LlamaForCausalLM` (Llama 2/3, TinyLlama, SmolLM).
    Llama,
    /// `MistralForCausalLM` (Llama plus an optional sliding attention window).
    Mistral,
    /// `Qwen2ForCausalLM` (biases on the q/k/v projections).
    Qwen2,
    /// `Qwen3ForCausalLM` (RMSNorm over each head of q and k before RoPE).
    Qwen3,
}

impl Architecture {
    /// Parses the name used in `config.json`'s `architectures`.
    pub fn from_hf_name(name: &str) -> Result<Self> {
        match name {
            "LlamaForCausalLM" => Ok(Architecture::Llama),
            "MistralForCausalLM" => Ok(Architecture::Mistral),
            "Qwen2ForCausalLM" => Ok(Architecture::Qwen2),
            "Qwen3ForCausalLM" => Ok(Architecture::Qwen3),
            other => Err(ModelError::UnsupportedArchitecture { name: other.to_string() }),
        }
    }
    /// The name used in `config.json`.
    pub fn hf_name(self) -> &'static str {
        match self {
            Architecture::Llama => "LlamaForCausalLM",
            Architecture::Mistral => "MistralForCausalLM",
            Architecture::Qwen2 => "Qwen2ForCausalLM",
            Architecture::Qwen3 => "Qwen3ForCausalLM",
        }
    }
    /// The `model_type` used in `config.json`.
    pub fn model_type(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Mistral => "mistral",
            Architecture::Qwen2 => "qwen2",
            Architecture::Qwen3 => "qwen3",
        }
    }
}

/// Llama 3's RoPE frequency rule (`rope_scaling` with `rope_type: "llama3"`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Llama3RopeScaling {
    /// Divisor applied to low frequencies.
    pub factor: f32,
    /// Wavelengths above `original_max_position_embeddings / low_freq_factor` are divided by `factor`.
    pub low_freq_factor: f32,
    /// Wavelengths below `original_max_position_embeddings / high_freq_factor` are kept.
    pub high_freq_factor: f32,
    /// The context length the model was pre-trained with.
    pub original_max_position_embeddings: usize,
}

/// Everything the forward pass needs to know about a model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// Which family.
    pub arch: Architecture,
    /// Vocabulary size (rows of the embedding).
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// MLP inner width.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention when fewer than the query heads).
    pub num_key_value_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f32,
    /// RoPE base.
    pub rope_theta: f32,
    /// Llama 3 frequency scaling, if any.
    pub rope_scaling: Option<Llama3RopeScaling>,
    /// Maximum context length.
    pub max_position_embeddings: usize,
    /// The LM head reuses the embedding matrix.
    pub tie_word_embeddings: bool,
    /// q/k/v projections carry biases (Qwen2, or Llama with `attention_bias`).
    pub attention_bias: bool,
    /// Attend only to the last `w` positions (Mistral), if set.
    pub sliding_window: Option<usize>,
    /// Beginning-of-sequence token.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence tokens (generation stops on any).
    pub eos_token_ids: Vec<u32>,
    /// W8A8 (SmoothQuant): the block linears quantize their activations per token to int8
    /// (`quantization_config.activations` starting with `int8`).
    pub int8_activations: bool,
    /// LLM.int8(): with int8 activations, input columns holding any `|x| >= t` in a batch run in
    /// f32 (`quantization_config.outlier_threshold`, a positive number; absent or null: plain
    /// W8A8).
    pub int8_outlier_threshold: Option<f32>,
}

/// Largest value [`ModelConfig::validate`] accepts for any size (vocabulary, widths, layer and
/// head counts, and the widths of all query or key heads together): 2^24, far above any released
/// model (vocabularies reach about 2^18, widths 2^15). Buffers are sized from products of these,
/// so a forged `config.json` is refused before it can overflow one or ask for terabytes.
pub const MAX_DIM: usize = 1 << 24;
/// Largest head width accepted (released models use 64 to 256); the RoPE tables are sized by it.
pub const MAX_HEAD_DIM: usize = 1 << 12;

fn get_usize(v: &Value, key: &str) -> Result<usize> {
    match v.get(key) {
        Some(x) => x
            .as_u64()
            .map(|x| x as usize)
            .ok_or_else(|| ModelError::config(key, format!("expected an unsigned integer, got {x}"))),
        None => Err(ModelError::config(key, "missing")),
    }
}

fn opt_usize(v: &Value, key: &str) -> Result<Option<usize>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => get_usize(v, key).map(Some),
    }
}

fn opt_f32(v: &Value, key: &str) -> Result<Option<f32>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        // A finite f64 beyond f32's range would become infinite (and not survive a round trip).
        Some(x) => match x.as_f64() {
            Some(f) if (f as f32).is_finite() => Ok(Some(f as f32)),
            Some(f) => Err(ModelError::config(key, format!("{f} is not a finite f32"))),
            None => Err(ModelError::config(key, format!("expected a number, got {x}"))),
        },
    }
}

fn opt_bool(v: &Value, key: &str) -> Result<Option<bool>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x.as_bool().map(Some).ok_or_else(|| ModelError::config(key, format!("expected a boolean, got {x}"))),
    }
}

fn token_ids(v: Option<&Value>, key: &str) -> Result<Vec<u32>> {
    let as_id = |x: &Value| x.as_u64().filter(|&x| x <= u32::MAX as u64).map(|x| x as u32);
    match v {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::Array(a)) => {
            a.iter().map(|x| as_id(x).ok_or_else(|| ModelError::config(key, format!("bad token id {x}")))).collect()
        }
        Some(x) => as_id(x).map(|x| vec![x]).ok_or_else(|| ModelError::config(key, format!("bad token id {x}"))),
    }
}

impl ModelConfig {
    /// Parses the text of a Hugging Face `config.json`.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text).map_err(|e| ModelError::config("config.json", e.to_string()))?;
        Self::from_json(&v)
    }

    /// Parses a Hugging Face `config.json` value.
    pub fn from_json(v: &Value) -> Result<Self> {
        let arch_name = match v.get("architectures").and_then(|a| a.as_array()).and_then(|a| a.first()) {
            Some(Value::String(s)) => s.clone(),
            _ => match v.get("model_type").and_then(|m| m.as_str()) {
                Some("llama") => "LlamaForCausalLM".into(),
                Some("mistral") => "MistralForCausalLM".into(),
                Some("qwen2") => "Qwen2ForCausalLM".into(),
                Some("qwen3") => "Qwen3ForCausalLM".into(),
                Some(other) => other.to_string(),
                None => return Err(ModelError::config("architectures", "missing (and no model_type)")),
            },
        };
        let arch = Architecture::from_hf_name(&arch_name)?;
        let hidden_size = get_usize(v, "hidden_size")?;
        let num_attention_heads = get_usize(v, "num_attention_heads")?;
        let num_key_value_heads = opt_usize(v, "num_key_value_heads")?.unwrap_or(num_attention_heads);
        let head_dim = match opt_usize(v, "head_dim")? {
            Some(d) => d,
            None if num_attention_heads > 0 => hidden_size / num_attention_heads,
            None => 0,
        };
        let rope_scaling = match v.get("rope_scaling") {
            None | Some(Value::Null) => None,
            Some(rs) => {
                let kind = rs.get("rope_type").or_else(|| rs.get("type")).and_then(|t| t.as_str()).unwrap_or("");
                match kind {
                    "default" => None,
                    "llama3" => Some(Llama3RopeScaling {
                        factor: opt_f32(rs, "factor")?
                            .ok_or_else(|| ModelError::config("rope_scaling.factor", "missing"))?,
                        low_freq_factor: opt_f32(rs, "low_freq_factor")?
                            .ok_or_else(|| ModelError::config("rope_scaling.low_freq_factor", "missing"))?,
                        high_freq_factor: opt_f32(rs, "high_freq_factor")?
                            .ok_or_else(|| ModelError::config("rope_scaling.high_freq_factor", "missing"))?,
                        original_max_position_embeddings: get_usize(rs, "original_max_position_embeddings").map_err(
                            |_| ModelError::config("rope_scaling.original_max_position_embeddings", "missing"),
                        )?,
                    }),
                    other => {
                        return Err(ModelError::config(
                            "rope_scaling",
                            format!("rope_type {other:?} is not supported (lowbit implements \"llama3\")"),
                        ))
                    }
                }
            }
        };
        if opt_bool(v, "mlp_bias")?.unwrap_or(false) {
            return Err(ModelError::config("mlp_bias", "MLP biases are not supported"));
        }
        if let Some(act) = v.get("hidden_act").and_then(|a| a.as_str()) {
            if act != "silu" {
                return Err(ModelError::config("hidden_act", format!("{act:?} is not supported (only silu)")));
            }
        }
        let use_sliding = match arch {
            Architecture::Mistral => true,
            Architecture::Qwen2 | Architecture::Qwen3 => opt_bool(v, "use_sliding_window")?.unwrap_or(false),
            Architecture::Llama => false,
        };
        let sliding_window = if use_sliding { opt_usize(v, "sliding_window")? } else { None };
        let qc = v.get("quantization_config");
        let int8_activations =
            qc.and_then(|q| q.get("activations")).and_then(Value::as_str).is_some_and(|a| a.starts_with("int8"));
        let int8_outlier_threshold = match qc {
            Some(q) if int8_activations => match opt_f32(q, "outlier_threshold")? {
                Some(t) if t <= 0.0 => {
                    return Err(ModelError::config("outlier_threshold", format!("{t} is not a positive threshold")))
                }
                t => t,
            },
            _ => None,
        };
        let cfg = ModelConfig {
            arch,
            vocab_size: get_usize(v, "vocab_size")?,
            hidden_size,
            intermediate_size: get_usize(v, "intermediate_size")?,
            num_hidden_layers: get_usize(v, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: opt_f32(v, "rms_norm_eps")?.unwrap_or(1e-6),
            rope_theta: opt_f32(v, "rope_theta")?.unwrap_or(10000.0),
            rope_scaling,
            max_position_embeddings: opt_usize(v, "max_position_embeddings")?.unwrap_or(2048),
            tie_word_embeddings: opt_bool(v, "tie_word_embeddings")?.unwrap_or(false),
            attention_bias: match arch {
                Architecture::Qwen2 => true,
                _ => opt_bool(v, "attention_bias")?.unwrap_or(false),
            },
            sliding_window,
            bos_token_id: token_ids(v.get("bos_token_id"), "bos_token_id")?.first().copied(),
            eos_token_ids: token_ids(v.get("eos_token_id"), "eos_token_id")?,
            int8_activations,
            int8_outlier_threshold,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the sizes agree with each other.
    pub fn validate(&self) -> Result<()> {
        for (field, value) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
        ] {
            if value == 0 {
                return Err(ModelError::config(field, "must be at least 1"));
            }
            if value > MAX_DIM {
                return Err(ModelError::config(field, format!("{value} is above the limit of {MAX_DIM}")));
            }
        }
        if self.head_dim > MAX_HEAD_DIM {
            return Err(ModelError::config(
                "head_dim",
                format!("{} is above the limit of {MAX_HEAD_DIM}", self.head_dim),
            ));
        }
        for (field, heads) in
            [("num_attention_heads", self.num_attention_heads), ("num_key_value_heads", self.num_key_value_heads)]
        {
            if heads.checked_mul(self.head_dim).is_none_or(|w| w > MAX_DIM) {
                return Err(ModelError::config(
                    field,
                    format!("{heads} heads of {} exceed the width limit of {MAX_DIM}", self.head_dim),
                ));
            }
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return Err(ModelError::config(
                "num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads = {}",
                    self.num_key_value_heads, self.num_attention_heads
                ),
            ));
        }
        if self.head_dim % 2 != 0 {
            return Err(ModelError::config("head_dim", format!("{} must be even for RoPE", self.head_dim)));
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps >= 0.0) {
            return Err(ModelError::config("rms_norm_eps", format!("{} is not a valid epsilon", self.rms_norm_eps)));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(ModelError::config("rope_theta", format!("{} must be positive", self.rope_theta)));
        }
        if let Some(s) = &self.rope_scaling {
            if !(s.factor > 0.0 && s.low_freq_factor > 0.0 && s.high_freq_factor > s.low_freq_factor) {
                return Err(ModelError::config(
                    "rope_scaling",
                    "needs factor > 0 and high_freq_factor > low_freq_factor > 0",
                ));
            }
        }
        Ok(())
    }

    /// Width of all query heads together.
    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }
    /// Width of all key (or value) heads together.
    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }

    /// RoPE inverse frequencies `θ^(-2i/d)` for `i < head_dim / 2`, with Llama 3 scaling applied.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let d = self.head_dim;
        (0..d / 2)
            .map(|i| {
                let f = (1.0 / (self.rope_theta as f64).powf((2 * i) as f64 / d as f64)) as f32;
                match &self.rope_scaling {
                    None => f,
                    Some(s) => {
                        let old = s.original_max_position_embeddings as f32;
                        let low_wavelen = old / s.low_freq_factor;
                        let high_wavelen = old / s.high_freq_factor;
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / s.factor
                        } else {
                            let smooth = (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                            (1.0 - smooth) * f / s.factor + smooth * f
                        }
                    }
                }
            })
            .collect()
    }

    /// The `config.json` Hugging Face would write for this model.
    pub fn to_hf_json(&self) -> Value {
        let mut v = serde_json::json!({
            "architectures": [self.arch.hf_name()],
            "model_type": self.arch.model_type(),
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "hidden_act": "silu",
            "torch_dtype": "float32",
        });
        if let Some(b) = self.bos_token_id {
            v["bos_token_id"] = b.into();
        }
        match self.eos_token_ids.as_slice() {
            [] => {}
            [e] => v["eos_token_id"] = (*e).into(),
            es => v["eos_token_id"] = es.to_vec().into(),
        }
        if let Some(s) = &self.rope_scaling {
            v["rope_scaling"] = serde_json::json!({
                "rope_type": "llama3",
                "factor": s.factor,
                "low_freq_factor": s.low_freq_factor,
                "high_freq_factor": s.high_freq_factor,
                "original_max_position_embeddings": s.original_max_position_embeddings,
            });
        }
        if self.int8_activations {
            v["quantization_config"] = match self.int8_outlier_threshold {
                None => serde_json::json!({"activations": "int8 per-token dynamic"}),
                Some(t) => serde_json::json!({
                    "activations": "int8 per-token dynamic, mixed-precision decomposition",
                    "outlier_threshold": t,
                }),
            };
        }
        if let Some(w) = self.sliding_window {
            v["sliding_window"] = w.into();
            v["use_sliding_window"] = true.into();
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_architecture_is_named() {
        let e = ModelConfig::from_json_str(r#"{"architectures":["GPTNeoXForCausalLM"]}"#).unwrap_err();
        assert!(e.to_string().contains("GPTNeoXForCausalLM"), "{e}");
    }

    #[test]
    fn sizes_above_the_limits_are_errors() {
        let cfg = |extra: &str| {
            ModelConfig::from_json_str(&format!(
                r#"{{"architectures":["LlamaForCausalLM"],"vocab_size":10,"hidden_size":64,"intermediate_size":8,
                "num_hidden_layers":1,"num_attention_heads":4{extra}}}"#
            ))
        };
        assert!(cfg("").is_ok());
        let e = cfg(r#","head_dim":8192"#).unwrap_err();
        assert!(e.to_string().contains("head_dim"), "{e}");
        let e = cfg(r#","vocab_size":16777217"#).unwrap_err();
        assert!(e.to_string().contains("vocab_size"), "{e}");
        // Each count is in bounds; their product (the width of all heads) is not, nor fits a u32.
        let e = cfg(r#","num_attention_heads":16777216,"num_key_value_heads":1,"head_dim":4096"#).unwrap_err();
        assert!(e.to_string().contains("num_attention_heads"), "{e}");
    }

    #[test]
    fn llama3_scaling_keeps_high_frequencies() {
        let cfg = ModelConfig::from_json_str(
            r#"{"architectures":["LlamaForCausalLM"],"vocab_size":10,"hidden_size":128,"intermediate_size":8,
            "num_hidden_layers":1,"num_attention_heads":1,"rope_theta":500000.0,
            "rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
            "original_max_position_embeddings":8192}}"#,
        )
        .unwrap();
        let f = cfg.rope_inv_freq();
        assert_eq!(f[0], 1.0);
        let plain = 1.0 / 500000f64.powf(126.0 / 128.0);
        assert!((f[63] as f64 - plain / 8.0).abs() < 1e-12);
    }
}
