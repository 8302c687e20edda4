//! The output directory: what `Model::save_with` writes (config, dense tensors, the quantized linears
//! in the lowbit safetensors layout, index, tokenizer files) plus `quantization_config` in
//! `config.json` and `lowbit_manifest.json`; all in a temporary sibling renamed into place.

use crate::options::QuantizeReport;
use crate::Result;
use lowbit_model::{Model, SaveExtras, LINEAR_NAMES};
use serde_json::{json, Value};
use std::path::Path;

/// The manifest's file name.
pub const MANIFEST_FILE: &str = "lowbit_manifest.json";

/// Writes the checkpoint; returns its size in bytes.
pub(crate) fn write_output(model: &Model, out: &Path, report: &QuantizeReport) -> Result<u64> {
    let mut qc = report.params.clone();
    qc["quant_method"] = "lowbit".into();
    qc["format"] = "lowbit safetensors v1 (docs/format.md)".into();
    qc["modules"] = json!(LINEAR_NAMES);
    let mut extras = SaveExtras::default();
    extras.config.insert("quantization_config".into(), qc);
    let manifest = serde_json::to_string_pretty(&manifest(report)).unwrap_or_default();
    extras.files.push((MANIFEST_FILE.into(), manifest.into_bytes()));
    Ok(model.save_with(out, &extras)?)
}

/// The manifest: method and parameters, calibration hash, per-layer results, timings, memory.
/// Everything but `timings`, `peak_rss_bytes` and the layers' `seconds` is deterministic.
fn manifest(r: &QuantizeReport) -> Value {
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
        "notes": r.notes,
        "timings": {"calibration_seconds": r.calib_seconds, "quantize_seconds": r.quantize_seconds, "wall_seconds": r.wall_seconds, "resumed_from_block": r.resumed_from_block},
        "peak_rss_bytes": r.peak_rss_bytes,
    })
}
