//! lowbit in the browser: the runtime (`lowbit-model` on `lowbit-cpu`'s `simd128` level) behind
//! wasm-bindgen. The npm package's `lowbit.js` wraps these bindings in the documented API
//! (`Model.load`, `generate`, `chat`, `perplexity`).
//!
//! Every fallible export returns `Result<_, JsError>`: errors are [`WasmError`]s, turned into a JS
//! `Error` carrying their message by wasm-bindgen's one conversion (`From<E: Error> for JsError`).
//! Nothing here panics on user input.

use lowbit_core::progress::NoProgress;
use lowbit_model::bytes::runtime_bytes_estimate;
use lowbit_model::{ChatMessage, GenerateOptions, LoadOptions, ModelError, PerplexityOptions, StopReason};
use wasm_bindgen::prelude::*;

#[cfg(feature = "quantize")]
mod quantize;
mod selfcheck;
#[cfg(feature = "threads")]
mod threads;

/// What can go wrong in a call from JS.
#[derive(Debug, thiserror::Error)]
pub enum WasmError {
    /// The runtime refused (corrupt file, bad options, ...).
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The model cannot fit in a wasm32 module's memory (refused before loading it).
    #[error(
        "the model needs about {need_mib} MiB of wasm memory to load, but a wasm32 module can address \
         4096 MiB and {used_mib} MiB are in use; use a smaller or more compressed model"
    )]
    TooLarge {
        /// Estimated bytes needed beyond what is in use.
        need_mib: u64,
        /// Bytes already in use.
        used_mib: u64,
    },
    /// The `onToken` callback threw.
    #[error("onToken callback failed: {0}")]
    Callback(String),
    /// An argument from JS is malformed.
    #[error("invalid argument {name}: {reason}")]
    Argument {
        /// The argument.
        name: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The quantization pipeline refused (bad options, no calibration text, ...).
    #[cfg(feature = "quantize")]
    #[error(transparent)]
    Quantize(#[from] lowbit_quantize::QuantizeError),
    /// A kernel level disagrees with the scalar reference ([`kernel_self_check`]).
    #[error("kernel check failed: {0}")]
    KernelMismatch(String),
}

type Result<T> = std::result::Result<T, WasmError>;

/// The most memory a wasm32 module can address.
const WASM32_MAX_BYTES: u64 = 4 << 30;

/// Bytes of linear memory the module holds now.
fn memory_in_use() -> u64 {
    #[cfg(target_arch = "wasm32")]
    {
        core::arch::wasm32::memory_size::<0>() as u64 * 65536
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        0
    }
}

fn check_fits(need: u64) -> Result<()> {
    let used = memory_in_use();
    if used.saturating_add(need) > WASM32_MAX_BYTES {
        return Err(WasmError::TooLarge { need_mib: need.div_ceil(1 << 20), used_mib: used >> 20 });
    }
    Ok(())
}

/// Refuses a model file of `len` bytes that cannot fit before JS copies it into wasm memory:
/// loading needs the file and at least as much again.
#[wasm_bindgen(js_name = checkFileSize)]
pub fn check_file_size(len: f64) -> std::result::Result<(), JsError> {
    Ok(check_fits((2.0 * len.max(0.0)) as u64)?)
}

/// The kernel level this module runs (`simd128` or `relaxed-simd`).
#[wasm_bindgen(js_name = kernelLevel)]
pub fn kernel_level() -> String {
    lowbit_cpu::kernel_level().name().to_string()
}

/// Runs every kernel of this module's level against the scalar reference on random shapes, odd
/// ones included (f32 activations within the reassociation tolerance, int8 activations bit for
/// bit). Returns a summary; an error names the first mismatch.
#[wasm_bindgen(js_name = kernelSelfCheck)]
pub fn kernel_self_check() -> std::result::Result<String, JsError> {
    Ok(selfcheck::run().map_err(WasmError::KernelMismatch)?)
}

/// A loaded model.
#[wasm_bindgen]
pub struct Model {
    inner: lowbit_model::Model,
}

fn stop_name(r: StopReason) -> &'static str {
    match r {
        StopReason::MaxTokens => "max_tokens",
        StopReason::Eos => "eos",
        StopReason::StopString => "stop_string",
        StopReason::Callback => "callback",
        StopReason::ContextFull => "context_full",
    }
}

#[wasm_bindgen]
impl Model {
    /// Loads a GGUF file or a single-file lowbit model (`lowbit-pack`) from its bytes; refuses
    /// one too large for the wasm memory before building it.
    #[wasm_bindgen(js_name = fromBytes)]
    pub fn from_bytes(bytes: Vec<u8>) -> std::result::Result<Model, JsError> {
        Ok(Self::load(bytes)?)
    }

    fn load(bytes: Vec<u8>) -> Result<Model> {
        check_fits(runtime_bytes_estimate(&bytes)?)?;
        let inner = lowbit_model::Model::from_bytes(bytes, &LoadOptions::default(), &mut NoProgress)?;
        Ok(Model { inner })
    }

    /// The model's config as JSON text, with the kernel level and the weight bytes.
    pub fn info(&self) -> String {
        let c = self.inner.config();
        serde_json::json!({
            "config": c.to_hf_json(),
            "kernelLevel": kernel_level(),
            "weightBytes": self.inner.weight_bytes(),
            "hasTokenizer": self.inner.tokenizer().is_some(),
            "hasChatTemplate": self.inner.tokenizer().and_then(|t| t.chat_template()).is_some(),
        })
        .to_string()
    }

    /// Token ids of `text`.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> std::result::Result<Vec<u32>, JsError> {
        Ok(self.tokenizer("encode")?.encode(text, add_special_tokens).map_err(WasmError::from)?)
    }

    /// Text of token ids.
    pub fn decode(&self, ids: Vec<u32>) -> std::result::Result<String, JsError> {
        Ok(self.tokenizer("decode")?.decode(&ids, true).map_err(WasmError::from)?)
    }

    fn tokenizer(&self, op: &'static str) -> Result<&lowbit_model::Tokenizer> {
        Ok(self.inner.tokenizer().ok_or(ModelError::NoTokenizer { op })?)
    }

    /// The chat template applied to `messages_json` (`[{"role": ..., "content": ...}, ...]`),
    /// with the generation prompt.
    #[wasm_bindgen(js_name = chatPrompt)]
    pub fn chat_prompt(&self, messages_json: &str) -> std::result::Result<String, JsError> {
        Ok(self.chat_prompt_inner(messages_json)?)
    }

    fn chat_prompt_inner(&self, messages_json: &str) -> Result<String> {
        let bad = |reason: String| WasmError::Argument { name: "messages", reason };
        let v: serde_json::Value = serde_json::from_str(messages_json).map_err(|e| bad(e.to_string()))?;
        let list = v.as_array().ok_or_else(|| bad("not an array".into()))?;
        let mut messages = Vec::with_capacity(list.len());
        for m in list {
            let field =
                |k: &str| m.get(k).and_then(|x| x.as_str()).ok_or_else(|| bad(format!("a message without {k}")));
            messages.push(ChatMessage::new(field("role")?, field("content")?));
        }
        Ok(self.tokenizer("chat")?.apply_chat_template(&messages, true)?)
    }

    /// Generates from `prompt`, calling `on_token(text, tokenId)` for every new token (return
    /// `false` to stop). Greedy at temperature 0; `stop_on_eos` false runs to `max_new_tokens`. Returns JSON text: `tokens`, `text`,
    /// `stopReason`, `promptTokens`, `prefillSeconds`, `decodeSeconds`.
    #[allow(clippy::too_many_arguments)]
    pub fn generate(
        &self,
        prompt: &str,
        max_new_tokens: usize,
        temperature: f32,
        top_p: f32,
        top_k: usize,
        seed: u32,
        stop_on_eos: bool,
        on_token: Option<js_sys::Function>,
    ) -> std::result::Result<String, JsError> {
        let opts = GenerateOptions {
            max_new_tokens,
            temperature,
            top_p,
            top_k,
            seed: u64::from(seed),
            stop_on_eos,
            ..GenerateOptions::default()
        };
        Ok(self.generate_inner(prompt, &opts, on_token)?)
    }

    fn generate_inner(
        &self,
        prompt: &str,
        opts: &GenerateOptions,
        on_token: Option<js_sys::Function>,
    ) -> Result<String> {
        let mut failure = None;
        let mut cb = |ev: lowbit_model::TokenEvent<'_>| -> bool {
            let Some(f) = &on_token else { return true };
            match f.call2(&JsValue::NULL, &JsValue::from_str(ev.text), &JsValue::from(ev.token)) {
                Ok(v) => v.as_bool() != Some(false),
                Err(e) => {
                    failure = Some(e.as_string().unwrap_or_else(|| format!("{e:?}")));
                    false
                }
            }
        };
        let g = self.inner.generate(prompt, opts, &mut cb, &mut NoProgress)?;
        if let Some(e) = failure {
            return Err(WasmError::Callback(e));
        }
        Ok(serde_json::json!({
            "tokens": g.tokens,
            "text": g.text,
            "stopReason": stop_name(g.stop_reason),
            "promptTokens": g.prompt_tokens,
            "prefillSeconds": g.prefill_seconds,
            "decodeSeconds": g.decode_seconds,
        })
        .to_string())
    }

    /// Perplexity under the evaluation protocol (the text tokenized whole without special tokens,
    /// `window`-token windows, the first `max_windows`, 0 = all). Returns JSON text: `perplexity`,
    /// `nll`, `tokens`, `windows`, `windowNll`, `seconds`.
    pub fn perplexity(&self, text: &str, window: usize, max_windows: usize) -> std::result::Result<String, JsError> {
        Ok(self.perplexity_inner(text, window, max_windows)?)
    }

    fn perplexity_inner(&self, text: &str, window: usize, max_windows: usize) -> Result<String> {
        let ids = self.tokenizer("perplexity")?.encode(text, false)?;
        let opts = PerplexityOptions { window, max_windows: (max_windows > 0).then_some(max_windows) };
        let r = self.inner.perplexity(&ids, &opts, &mut NoProgress)?;
        Ok(serde_json::json!({
            "perplexity": r.ppl,
            "nll": r.nll,
            "tokens": r.tokens,
            "windows": r.windows,
            "windowNll": r.window_nll,
            "seconds": r.seconds,
        })
        .to_string())
    }
}
