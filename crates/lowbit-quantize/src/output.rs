//! The output directory: what `Model::save_with` writes (config, dense tensors, the quantized linears
//! in the lowbit safetensors layout, index, tokenizer files) plus `quantization_config` in
//! `config.json` and `lowbit_manifest.json`; all in a temporary sibling renamed into place.

use crate::options::QuantizeReport;
use crate::Result;
use lowbit_model::{Model, SaveExtras, LINEAR_NAMES};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// The manifest's file name.
pub const MANIFEST_FILE: &str = "lowbit_manifest.json";

/// Writes the checkpoint; returns its size in bytes.
pub(crate) fn write_output(model: &Model, out: &Path, report: &QuantizeReport) -> Result<u64> {
    let extras = extras(report);
    // The manifest records the directory's bytes, its own included.
    let contents = |others: u64| sized(|own| manifest(report, others + own));
    Ok(model.save_with_last(out, &extras, Some((MANIFEST_FILE, &contents)))?)
}

/// [`write_output`]'s files in memory (name -> bytes).
pub(crate) fn write_output_to_memory(model: &Model, report: &QuantizeReport) -> Result<BTreeMap<String, Vec<u8>>> {
    let extras = extras(report);
    let contents = |others: u64| sized(|own| manifest(report, others + own));
    Ok(model.save_to_memory(&extras, Some((MANIFEST_FILE, &contents)))?)
}

/// `quantization_config` in `config.json`.
fn extras(report: &QuantizeReport) -> SaveExtras {
    let mut qc = report.params.clone();
    qc["quant_method"] = "lowbit".into();
    qc["format"] = "lowbit safetensors v1 (docs/format.md)".into();
    qc["modules"] = json!(LINEAR_NAMES);
    let mut extras = SaveExtras::default();
    extras.config.insert("quantization_config".into(), qc);
    extras
}

/// The pretty JSON of `render(n)` where `n` is the length of the result: `n` grows until the
/// text fits, then the text is padded with spaces to exactly `n` bytes.
fn sized(render: impl Fn(u64) -> Value) -> Vec<u8> {
    let mut n = 0usize;
    loop {
        let mut text = serde_json::to_string_pretty(&render(n as u64)).unwrap_or_default().into_bytes();
        text.push(b'\n');
        if text.len() <= n {
            text.resize(n, b' ');
            return text;
        }
        n = text.len();
    }
}

/// The manifest: method and parameters, calibration hash, per-layer results, sizes, the
/// mixed-precision allocation (null without one), timings, memory. Everything but `timings`, `peak_rss_bytes` and the layers' `seconds` is
/// deterministic. `out_bytes` is the whole directory's, this file included.
fn manifest(r: &QuantizeReport, out_bytes: u64) -> Value {
    json!({
        "lowbit_version": env!("CARGO_PKG_VERSION"),
        "method": r.params["method"],
        "parameters": r.params,
        "calibration": {"sha256_token_ids_u32le": r.calib_sha256, "tokens": r.calib_tokens},
        "layers": r.layers,
        "mean_loss": r.mean_loss(),
        "linear_bytes_before_f32": r.linear_bytes_before,
        "linear_bytes_after": r.linear_bytes_after,
        "bits_per_weight": r.bits_per_weight,
        "sizes": {
            "out_bytes": out_bytes,
            "input_bytes": r.input_bytes,
            "num_params": r.num_params,
            "tensor_bytes": r.tensor_bytes,
            "bits_per_weight_all": r.bits_per_weight_all,
            "file_bits_per_weight": out_bytes as f64 * 8.0 / r.num_params.max(1) as f64,
            "bits_per_weight_block_linears": r.bits_per_weight,
            "embed": {"scheme": r.params["embed"], "bytes": r.embed_bytes},
            "lm_head": {"scheme": r.params["lm_head"], "bytes": r.lm_head_bytes, "tied": r.lm_head_bytes.is_none()},
        },
        "notes": r.notes,
        "allocation": r.allocation,
        "timings": {"calibration_seconds": r.calib_seconds, "quantize_seconds": r.quantize_seconds, "wall_seconds": r.wall_seconds, "resumed_from_block": r.resumed_from_block},
        "peak_rss_bytes": r.peak_rss_bytes,
    })
}
