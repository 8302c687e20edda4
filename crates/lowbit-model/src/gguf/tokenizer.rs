//! The tokenizer stored in GGUF metadata, rebuilt as a Hugging Face `tokenizer.json`.
//!
//! Only byte-level BPE (`tokenizer.ggml.model = "gpt2"`) is supported: its tokens are already in
//! the byte-to-unicode alphabet of GPT-2, its merges are `"a b"` strings, and
//! `tokenizer.ggml.pre` names the pre-tokenizer llama.cpp uses, which we map to the Hugging Face
//! equivalent (SmolLM: digits split one by one, then ByteLevel without a prefix space).

use super::{meta_u64, path_of, GgufFile};
use crate::tokenizer::Tokenizer;
use crate::{ModelError, Result};
use serde_json::{json, Map, Value};

pub(crate) const TOKEN_TYPE_CONTROL: u64 = 3;
pub(crate) const TOKEN_TYPE_USER_DEFINED: u64 = 4;

const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_PATTERN: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn byte_level(use_regex: bool) -> Value {
    json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
}

fn split(pattern: &str) -> Value {
    json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false})
}

fn strings(file: &GgufFile, key: &str) -> Result<Vec<String>> {
    let bad = |reason: &str| ModelError::Gguf {
        path: path_of(file).display().to_string(),
        reason: format!("metadata {key}: {reason}"),
    };
    let arr = file.get(key).ok_or_else(|| bad("missing"))?.as_array().ok_or_else(|| bad("not an array"))?;
    arr.iter().map(|v| v.as_str().map(str::to_string).ok_or_else(|| bad("holds a non-string"))).collect()
}

/// The Hugging Face pre-tokenizer for llama.cpp's `tokenizer.ggml.pre` name, if lowbit maps it.
fn pre_tokenizer_for(pre: &str) -> Option<Value> {
    Some(match pre {
        "smollm" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
        "default" | "gpt2" | "gpt-2" => byte_level(true),
        "llama-bpe" | "llama3" | "smaug-bpe" => {
            json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_PATTERN), byte_level(false)]})
        }
        "qwen2" => json!({"type": "Sequence", "pretokenizers": [split(QWEN2_PATTERN), byte_level(false)]}),
        _ => return None,
    })
}

/// The inverse of [`pre_tokenizer_for`]: llama.cpp's name for a Hugging Face pre-tokenizer that
/// splits as one lowbit maps (`trim_offsets` aside, which only moves offsets).
pub(crate) fn pre_name(pre_tokenizer: &Value) -> Option<&'static str> {
    fn strip(v: &Value) -> Value {
        match v {
            Value::Object(m) => Value::Object(
                m.iter().filter(|(k, _)| k.as_str() != "trim_offsets").map(|(k, v)| (k.clone(), strip(v))).collect(),
            ),
            Value::Array(a) => Value::Array(a.iter().map(strip).collect()),
            v => v.clone(),
        }
    }
    let want = strip(pre_tokenizer);
    ["smollm", "gpt2", "llama-bpe", "qwen2"]
        .into_iter()
        .find(|p| pre_tokenizer_for(p).map(|v| strip(&v)) == Some(want.clone()))
}

/// The `tokenizer.json` value for the GGUF's tokenizer.
pub(crate) fn tokenizer_json(file: &GgufFile) -> Result<Value> {
    let unsupported = |what: String| ModelError::GgufUnsupported { path: path_of(file).display().to_string(), what };
    match file.get_str("tokenizer.ggml.model") {
        Some("gpt2") => {}
        other => {
            return Err(unsupported(format!(
                "tokenizer.ggml.model {other:?} (lowbit rebuilds byte-level BPE, \"gpt2\")"
            )))
        }
    }
    let tokens = strings(file, "tokenizer.ggml.tokens")?;
    let merges = strings(file, "tokenizer.ggml.merges")?;
    let types: Vec<u64> = match file.get("tokenizer.ggml.token_type").and_then(|v| v.as_array()) {
        Some(a) => a.iter().map(|v| v.as_u64().unwrap_or(1)).collect(),
        None => vec![1; tokens.len()],
    };
    if types.len() != tokens.len() {
        return Err(ModelError::Gguf {
            path: path_of(file).display().to_string(),
            reason: format!("{} token types for {} tokens", types.len(), tokens.len()),
        });
    }
    let pre = file.get_str("tokenizer.ggml.pre").unwrap_or("default");
    let pre_tokenizer = pre_tokenizer_for(pre).ok_or_else(|| {
        unsupported(format!("tokenizer.ggml.pre {pre:?} (lowbit maps smollm, gpt2, llama-bpe, qwen2)"))
    })?;
    let mut vocab = Map::new();
    let mut added = vec![];
    for (id, (tok, ty)) in tokens.iter().zip(&types).enumerate() {
        vocab.insert(tok.clone(), id.into());
        if *ty == TOKEN_TYPE_CONTROL || *ty == TOKEN_TYPE_USER_DEFINED {
            added.push(json!({"id": id, "content": tok, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": *ty == TOKEN_TYPE_CONTROL}));
        }
    }
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges},
    }))
}

/// The `tokenizer_config.json` value (special tokens, chat template) for the GGUF's tokenizer.
pub(crate) fn tokenizer_config_json(file: &GgufFile) -> Result<Value> {
    let tokens = strings(file, "tokenizer.ggml.tokens")?;
    let tok = |key: &str| file.get(key).and_then(|v| v.as_u64()).and_then(|id| tokens.get(id as usize)).cloned();
    let add_bos = matches!(file.get("tokenizer.ggml.add_bos_token"), Some(super::GgufValue::Bool(true)));
    let mut v = json!({
        "add_bos_token": add_bos,
        "add_eos_token": false,
        "clean_up_tokenization_spaces": false,
        "model_max_length": meta_u64(file, "llama.context_length")?.unwrap_or(2048),
        "tokenizer_class": "GPT2Tokenizer",
    });
    for (field, key) in [
        ("bos_token", "tokenizer.ggml.bos_token_id"),
        ("eos_token", "tokenizer.ggml.eos_token_id"),
        ("unk_token", "tokenizer.ggml.unknown_token_id"),
        ("pad_token", "tokenizer.ggml.padding_token_id"),
    ] {
        if let Some(t) = tok(key) {
            v[field] = t.into();
        }
    }
    if let Some(t) = file.get_str("tokenizer.chat_template") {
        v["chat_template"] = t.into();
    }
    Ok(v)
}

/// The tokenizer of a GGUF file.
pub(crate) fn tokenizer_from_gguf(file: &GgufFile) -> Result<Tokenizer> {
    let json = tokenizer_json(file)?;
    let config = tokenizer_config_json(file)?;
    Tokenizer::from_json_values(&json, Some(&config))
}
