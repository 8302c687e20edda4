//! The output directory: what `Model::save` writes (config, dense tensors, the quantized linears
//! in the lowbit safetensors layout, index, tokenizer files) plus `quantization_config` in
//! `config.json` and `lowbit_manifest.json`; all in a temporary sibling renamed into place.

use super::options::QuantizeReport;
use crate::load::{write, write_dir_atomically};
use crate::model::Model;
use crate::{ModelError, Result};
use serde_json::{json, Value};
use std::path::Path;

/// The manifest's file name.
pub const MANIFEST_FILE: &str = "lowbit_manifest.json";

/// Writes the checkpoint; returns its size in bytes.
pub(crate) fn write_output(model: &Model, out: &Path, report: &QuantizeReport) -> Result<u64> {
    let mut total = 0u64;
    write_dir_atomically(out, |tmp| {
        let inner = tmp.join("model");
        model.save(&inner)?;
        let entries: Vec<_> = std::fs::read_dir(&inner)
            .map_err(|e| ModelError::io(&inner, e))?
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| ModelError::io(&inner, e))?;
        for e in entries {
            std::fs::rename(e.path(), tmp.join(e.file_name())).map_err(|err| ModelError::io(e.path(), err))?;
        }
        std::fs::remove_dir(&inner).map_err(|e| ModelError::io(&inner, e))?;
        let cfg_path = tmp.join("config.json");
        let text = std::fs::read_to_string(&cfg_path).map_err(|e| ModelError::io(&cfg_path, e))?;
        let mut cfg: Value =
            serde_json::from_str(&text).map_err(|e| ModelError::config("config.json", e.to_string()))?;
        let mut qc = report.params.clone();
        qc["quant_method"] = "lowbit".into();
        qc["format"] = "lowbit safetensors v1 (docs/format.md)".into();
        qc["modules"] = json!(crate::model::LINEAR_NAMES);
        cfg["quantization_config"] = qc;
        write(&cfg_path, serde_json::to_string_pretty(&cfg).unwrap_or_default().as_bytes())?;
        write(
            &tmp.join(MANIFEST_FILE),
            serde_json::to_string_pretty(&manifest(report)).unwrap_or_default().as_bytes(),
        )?;
        for e in std::fs::read_dir(tmp).map_err(|e| ModelError::io(tmp, e))?.flatten() {
            total += e.metadata().map(|m| m.len()).unwrap_or(0);
        }
        Ok(())
    })?;
    Ok(total)
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
