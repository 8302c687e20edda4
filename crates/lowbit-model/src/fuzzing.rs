//! Bytes-in entry points for the fuzz targets in `fuzz/` and for the regression tests that replay
//! what the fuzzer found (`tests/fuzz_regressions/<target>/`). Each function runs one parser on
//! untrusted bytes the way loading a model does and returns its error; none may panic, hang or
//! allocate far beyond its input. Compiled with the `fuzzing` feature; not a stable API.

use crate::safetensors_source::{index_shards, SafetensorsSource};
use crate::tensors::TensorSource;
use crate::{ModelConfig, Result, Tokenizer};
use std::path::{Path, PathBuf};

/// A Hugging Face `config.json`: parse it, then derive what the model builder derives from it.
pub fn hf_config(data: &[u8]) -> Result<()> {
    let text = std::str::from_utf8(data).map_err(|e| crate::ModelError::config("config.json", e.to_string()))?;
    let cfg = ModelConfig::from_json_str(text)?;
    let _ = (cfg.q_dim(), cfg.kv_dim(), cfg.rope_inv_freq());
    // What lowbit writes must read back as the same config.
    let again = ModelConfig::from_json(&cfg.to_hf_json()).expect("a config lowbit wrote reads back");
    assert_eq!(again, cfg, "config.json round trip");
    Ok(())
}

/// A `tokenizer.json`: load it, then encode and decode a short text.
pub fn tokenizer_json(data: &[u8]) -> Result<()> {
    let text = std::str::from_utf8(data).map_err(|e| crate::ModelError::Tokenizer(e.to_string()))?;
    let tok = Tokenizer::from_json_str(text, None)?;
    let ids = tok.encode("Hello, wörld! 12", true)?;
    tok.decode(&ids, false)?;
    Ok(())
}

/// A model directory's safetensors data: input starting with `{` is the text of a
/// `model.safetensors.index.json`, anything else one safetensors file whose every tensor, dense
/// or lowbit-quantized, is then taken the way the loader takes it.
pub fn safetensors_dir(data: &[u8]) -> Result<()> {
    if data.first() == Some(&b'{') {
        let text = String::from_utf8_lossy(data);
        index_shards(&text, Path::new("model.safetensors.index.json"))?;
        return Ok(());
    }
    let mut src = SafetensorsSource::from_bytes(PathBuf::from("model.safetensors"), data.to_vec())?;
    for name in src.names() {
        src.take(&name)?.expect("a listed tensor can be taken");
    }
    Ok(())
}

/// An HF quantized directory whose `quantization_config` names `method`: the input is a 4-byte
/// little-endian length, that many bytes of `quantization_config` JSON (its `quant_method` set
/// to `method` when it is an object), then one safetensors file, whose every tensor is taken the
/// way the loader takes it (a module's parts through `{module}.weight`).
fn quantized_dir(method: &str, data: &[u8]) -> Result<()> {
    let bad = |reason: &str| crate::ModelError::config("config.json", reason.to_string());
    let (len, rest) = data.split_first_chunk::<4>().ok_or_else(|| bad("input shorter than its length prefix"))?;
    let n = u32::from_le_bytes(*len) as usize;
    if n > rest.len() {
        return Err(bad("length prefix beyond the input"));
    }
    let (cfg, st) = rest.split_at(n);
    let mut qc: serde_json::Value = serde_json::from_slice(cfg).map_err(|e| bad(&e.to_string()))?;
    if let Some(o) = qc.as_object_mut() {
        o.insert("quant_method".into(), method.into());
    }
    let config = serde_json::json!({ "quantization_config": qc });
    let src = SafetensorsSource::from_bytes(PathBuf::from("model.safetensors"), st.to_vec())?;
    let names = src.names();
    // A directory that does not exist: GPTQ's quantize_config.json fallback reads nothing.
    let mut src = crate::hf_quant::quantized_source(Path::new("/nonexistent-fuzz-dir"), &config, src)?;
    let modules: std::collections::BTreeSet<&str> =
        names.iter().filter_map(|n| n.strip_suffix(".qweight").or_else(|| n.strip_suffix(".weight_packed"))).collect();
    for name in &names {
        match name.rsplit_once('.') {
            Some((m, "qweight" | "weight_packed")) => src.take(&format!("{m}.weight"))?,
            // The module's other parts are taken with it.
            Some((m, _)) if modules.contains(m) && name != &format!("{m}.bias") => None,
            _ => src.take(name)?,
        };
    }
    Ok(())
}

/// An HF GPTQ directory ([`quantized_dir`] with `gptq`).
pub fn gptq_dir(data: &[u8]) -> Result<()> {
    quantized_dir("gptq", data)
}

/// An AWQ GEMM directory ([`quantized_dir`] with `awq`).
pub fn awq_dir(data: &[u8]) -> Result<()> {
    quantized_dir("awq", data)
}

/// A compressed-tensors `pack-quantized` directory ([`quantized_dir`] with `compressed-tensors`).
pub fn compressed_tensors_dir(data: &[u8]) -> Result<()> {
    quantized_dir("compressed-tensors", data)
}

/// A GGUF file: header, metadata and tensor infos (`lowbit-gguf`), then what a model load takes
/// from it: the config and tokenizer built from the metadata and every tensor dequantized.
pub fn gguf(data: &[u8]) -> Result<()> {
    let path = Path::new("model.gguf");
    let file = crate::GgufFile::from_bytes(data).map_err(|e| crate::gguf::gguf_error(path, e))?;
    let _ = crate::gguf::config_from_gguf(&file);
    let _ = crate::gguf::tokenizer_from_gguf(&file);
    for info in file.tensors() {
        file.dequantize(&info.name).map_err(|e| crate::gguf::gguf_error(path, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The files in `dir`, which must exist and hold at least one.
    fn inputs(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let out: Vec<_> = entries.map(|e| e.unwrap().path()).map(|p| (p.clone(), std::fs::read(&p).unwrap())).collect();
        assert!(!out.is_empty(), "{} holds no inputs", dir.display());
        out
    }

    /// The fuzz seeds (`fuzz/seeds/<target>/`, written by `fuzz/make_seeds.py`) are valid inputs:
    /// the entry points accept them, so the fuzzer starts from the parsers' success paths.
    fn seeds_parse(target: &str, parse: fn(&[u8]) -> Result<()>) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds").join(target);
        for (path, data) in inputs(&dir) {
            if let Err(e) = parse(&data) {
                panic!("{}: {e}", path.display());
            }
        }
    }

    /// Inputs the fuzzer once broke a parser with (`tests/fuzz_regressions/<target>/`) are now
    /// rejected with an error; a panic fails the test.
    fn regressions_are_errors(target: &str, parse: fn(&[u8]) -> Result<()>) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions").join(target);
        for (path, data) in inputs(&dir) {
            assert!(parse(&data).is_err(), "{} parsed", path.display());
        }
    }

    #[test]
    fn fuzz_regressions_are_errors() {
        regressions_are_errors("tokenizer_json", tokenizer_json);
        regressions_are_errors("hf_config", hf_config);
    }

    #[test]
    fn seeds_are_valid_inputs() {
        seeds_parse("hf_config", hf_config);
        seeds_parse("tokenizer_json", tokenizer_json);
        seeds_parse("safetensors_dir", safetensors_dir);
        seeds_parse("gguf", gguf);
        seeds_parse("gptq_dir", gptq_dir);
        seeds_parse("awq_dir", awq_dir);
        seeds_parse("compressed_tensors_dir", compressed_tensors_dir);
    }
}
