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

    /// Every file under `tests/fuzz_regressions/<target>/` (inputs the fuzzer once broke the
    /// parser with) must now be rejected with an error, without a panic.
    fn replay(target: &str, parse: fn(&[u8]) -> Result<()>) {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions").join(target);
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            assert!(parse(&data).is_err(), "{} parsed", path.display());
            n += 1;
        }
        assert!(n > 0, "{} holds no inputs", dir.display());
    }
}
