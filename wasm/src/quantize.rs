//! In-browser quantization (crate feature `quantize`, a separate wasm module that `lowbit.js`
//! loads only when `quantize` is called, so the inference modules carry neither the solvers nor
//! faer). The native pipeline runs as it is: `lowbit_quantize::quantize_bytes` reads the model from
//! memory and returns the output directory's files, packed here into one file (`pack_files`, the same
//! bytes as `lowbit-pack` of the directory `lowbit quantize` writes).

use crate::WasmError;
use lowbit_core::progress::{Cancelled, Progress};
use lowbit_quantize::spec::OptionValue;
use lowbit_quantize::{CalibSource, QuantizeOptions, MANIFEST_FILE};
use wasm_bindgen::prelude::*;

/// A quantized model: the single-file pack and the manifest.
#[wasm_bindgen]
pub struct Quantized {
    pack: Vec<u8>,
    manifest: String,
}

#[wasm_bindgen]
impl Quantized {
    /// The single-file lowbit model (what `Model.load` takes); moves it out.
    #[wasm_bindgen(js_name = takePack)]
    pub fn take_pack(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pack)
    }

    /// `lowbit_manifest.json`: method, parameters, per-layer losses, sizes, timings.
    #[wasm_bindgen(getter)]
    pub fn manifest(&self) -> String {
        self.manifest.clone()
    }
}

/// Forwards the pipeline's phases to a JS callback `onProgress({phase, done, total, metric, value})`.
struct JsProgress {
    f: Option<js_sys::Function>,
    phase: String,
    done: u64,
    total: u64,
}

impl JsProgress {
    fn emit(&self, metric: Option<(&str, f64)>) {
        let Some(f) = &self.f else { return };
        let o = js_sys::Object::new();
        let set = |k: &str, v: JsValue| {
            let _ = js_sys::Reflect::set(&o, &JsValue::from_str(k), &v);
        };
        set("phase", JsValue::from_str(&self.phase));
        set("done", JsValue::from_f64(self.done as f64));
        set("total", JsValue::from_f64(self.total as f64));
        if let Some((name, value)) = metric {
            set("metric", JsValue::from_str(name));
            set("value", JsValue::from_f64(value));
        }
        // A throwing callback must not abort the quantization: its error is dropped.
        let _ = f.call1(&JsValue::NULL, &o);
    }
}

impl Progress for JsProgress {
    fn start(&mut self, name: &str, total: u64) {
        self.phase = name.to_string();
        self.done = 0;
        self.total = total;
        self.emit(None);
    }
    fn advance(&mut self, n: u64) {
        self.done += n;
        self.emit(None);
    }
    fn metric(&mut self, name: &str, value: f64) {
        self.emit(Some((name, value)));
    }
    fn check(&mut self) -> std::result::Result<(), Cancelled> {
        Ok(())
    }
}

/// The option pairs of a JSON object of `lowbit quantize` options (snake_case or camelCase keys:
/// `method`, `bits`, `groupSize`, `nsamples`, `seqlen`, ...), all but `calibText`.
fn option_pairs(v: &serde_json::Value) -> crate::Result<Vec<(String, OptionValue)>> {
    let bad = |reason: String| WasmError::Argument { name: "options", reason };
    let obj = v.as_object().ok_or_else(|| bad("not an object".into()))?;
    let mut pairs = Vec::new();
    for (k, v) in obj {
        if k == "calibText" || k == "calib_text" {
            continue;
        }
        let mut name = String::with_capacity(k.len() + 4);
        for c in k.chars() {
            if c.is_ascii_uppercase() {
                name.push('_');
                name.push(c.to_ascii_lowercase());
            } else {
                name.push(c);
            }
        }
        let value = match v {
            serde_json::Value::Null => OptionValue::None,
            serde_json::Value::Bool(b) => OptionValue::Bool(*b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => OptionValue::Int(i),
                None => OptionValue::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            serde_json::Value::String(s) => OptionValue::Str(s.clone()),
            other => return Err(bad(format!("{k}: unsupported value {other}"))),
        };
        pairs.push((name, value));
    }
    Ok(pairs)
}

/// Quantizes the model in `input` (a GGUF, or a single-file lowbit model of a Hugging Face
/// directory: f32/f16/bf16 safetensors) with `options_json` (`lowbit quantize`'s options, plus
/// `calibText`, the calibration text for the calibrated methods) and returns the single-file
/// lowbit model. `on_progress` sees each phase (`load`, `blocks`, `write`, ...).
#[wasm_bindgen]
pub fn quantize(
    input: Vec<u8>,
    options_json: &str,
    on_progress: Option<js_sys::Function>,
) -> std::result::Result<Quantized, JsError> {
    Ok(quantize_inner(input, options_json, on_progress)?)
}

fn quantize_inner(
    input: Vec<u8>,
    options_json: &str,
    on_progress: Option<js_sys::Function>,
) -> crate::Result<Quantized> {
    let v: serde_json::Value = serde_json::from_str(options_json)
        .map_err(|e| WasmError::Argument { name: "options", reason: e.to_string() })?;
    let mut opts = QuantizeOptions::from_pairs(&option_pairs(&v)?)?;
    let text = v.get("calibText").or_else(|| v.get("calib_text")).and_then(|t| t.as_str());
    if let Some(t) = text {
        opts.calib = Some(CalibSource::InlineText(t.to_string()));
    }
    crate::check_fits(2 * input.len() as u64)?;
    let mut progress = JsProgress { f: on_progress, phase: String::new(), done: 0, total: 0 };
    let (mut files, _report) = lowbit_quantize::quantize_bytes(input, &opts, &mut progress)?;
    let manifest = files.remove(MANIFEST_FILE).map(|m| String::from_utf8_lossy(&m).into_owned()).unwrap_or_default();
    let pack = lowbit_model::bytes::pack_files(&files)?;
    Ok(Quantized { pack, manifest })
}
