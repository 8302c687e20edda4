//! Loading a model from bytes in memory (the wasm build has no file system): a GGUF file, or a
//! **single-file lowbit model** (a "pack"): a model directory's files one after the other behind
//! a small index, so one download or one file picker gives the whole model.
//!
//! ```text
//! 0   8 bytes    magic "LOWBITPK"
//! 8   u64 LE     n, the length of the index
//! 16  n bytes    index, JSON: {"version": 1, "files": [{"name": "config.json", "offset": 0,
//!                "len": 812}, ...]}; offsets from the end of the index, names plain file names
//! 16 + n         the files' bytes (each starting 8-byte aligned, zero padding between)
//! ```
//!
//! The pack holds `config.json` (required), the weights as the directory stores them
//! (`model.safetensors`, or the shards with `model.safetensors.index.json`, e.g. a lowbit
//! directory's dense and quantized shards), and the tokenizer files and chat template when the
//! directory has them. [`pack_dir`] writes one; the loader reads exactly what the directory
//! loader reads, from the members.

use crate::config::ModelConfig;
use crate::gguf::{config_from_gguf, gguf_error, tokenizer_from_gguf, GgufSource};
use crate::load::LoadOptions;
use crate::model::Model;
use crate::safetensors_source::{index_shards, SafetensorsSource};
use crate::tensors::TensorSource;
use crate::tokenizer::Tokenizer;
use crate::{ModelError, Result};
use lowbit_core::progress::Progress;
use lowbit_gguf::GgufFile;
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// The first bytes of a pack.
pub const PACK_MAGIC: &[u8; 8] = b"LOWBITPK";
/// Pack format version.
pub const PACK_VERSION: u64 = 1;
/// Longest index a pack may have (a directory's file list is a few hundred bytes).
const MAX_INDEX: u64 = 1 << 20;
/// The directory files a pack carries besides the weights.
pub const PACKED_TEXT_FILES: [&str; 4] =
    ["config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"];
/// The name messages give the in-memory file.
const IN_MEMORY: &str = "<model in memory>";

/// What a model file in memory is, from its first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BytesKind {
    /// A GGUF file.
    Gguf,
    /// A single-file lowbit model (module docs).
    Pack,
}

fn pack_error(reason: impl Into<String>) -> ModelError {
    ModelError::Input {
        op: "Model::from_bytes",
        reason: format!("corrupt or truncated lowbit pack: {}", reason.into()),
    }
}

/// The kind of model file `bytes` holds, or an error naming what was found.
pub fn bytes_kind(bytes: &[u8]) -> Result<BytesKind> {
    if bytes.starts_with(b"GGUF") {
        return Ok(BytesKind::Gguf);
    }
    if bytes.starts_with(PACK_MAGIC) {
        return Ok(BytesKind::Pack);
    }
    Err(ModelError::Input {
        op: "Model::from_bytes",
        reason: format!(
            "not a GGUF file or a single-file lowbit model (pack_dir / lowbit-pack); {} bytes starting {:02x?}",
            bytes.len(),
            &bytes[..bytes.len().min(8)]
        ),
    })
}

/// The members of a pack: name and byte range in `bytes`, every range checked to lie inside.
pub fn pack_members(bytes: &[u8]) -> Result<BTreeMap<String, Range<usize>>> {
    if !bytes.starts_with(PACK_MAGIC) {
        return Err(pack_error("no LOWBITPK magic"));
    }
    let n = bytes
        .get(8..16)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
        .ok_or_else(|| pack_error("no index length"))?;
    if n > MAX_INDEX || 16 + n > bytes.len() as u64 {
        return Err(pack_error(format!("index of {n} bytes in a file of {}", bytes.len())));
    }
    let data = 16 + n as usize;
    let index: serde_json::Value =
        serde_json::from_slice(&bytes[16..data]).map_err(|e| pack_error(format!("index: {e}")))?;
    if index.get("version").and_then(|v| v.as_u64()) != Some(PACK_VERSION) {
        return Err(pack_error(format!("index version {:?}, this build reads {PACK_VERSION}", index.get("version"))));
    }
    let files = index.get("files").and_then(|f| f.as_array()).ok_or_else(|| pack_error("index has no files array"))?;
    let mut out = BTreeMap::new();
    for f in files {
        let name = f.get("name").and_then(|v| v.as_str()).ok_or_else(|| pack_error("a file without a name"))?;
        let (Some(off), Some(len)) = (f.get("offset").and_then(|v| v.as_u64()), f.get("len").and_then(|v| v.as_u64()))
        else {
            return Err(pack_error(format!("{name}: no offset or len")));
        };
        let end = (data as u64).checked_add(off).and_then(|s| s.checked_add(len));
        match end {
            Some(end) if end <= bytes.len() as u64 => {}
            _ => {
                return Err(pack_error(format!(
                    "{name}: bytes {off}+{len} beyond the end of the file ({} bytes)",
                    bytes.len()
                )))
            }
        }
        if name.contains('/') || name.contains('\\') || name.starts_with('.') {
            return Err(pack_error(format!("member name {name:?} must be a plain file name")));
        }
        let start = data + off as usize;
        if out.insert(name.to_string(), start..start + len as usize).is_some() {
            return Err(pack_error(format!("{name} appears twice")));
        }
    }
    Ok(out)
}

/// Bytes the loaded model and the loading itself need at most beside the file, estimated from
/// the header alone (nothing is allocated): for a GGUF every tensor at its runtime width (packed
/// Q4_0/Q8_0/Q4_1 twice, as they are repacked for the int8-activation kernels; F16/BF16 at 2
/// bytes; everything else dequantized to f32), for a pack twice its size (each member is copied
/// out, quantized tensors are copied again and repacked once). An error if the header does not
/// parse.
pub fn runtime_bytes_estimate(bytes: &[u8]) -> Result<u64> {
    match bytes_kind(bytes)? {
        BytesKind::Gguf => {
            let header = lowbit_gguf::GgufHeader::parse(bytes).map_err(|e| gguf_error(Path::new(IN_MEMORY), e))?;
            Ok(header
                .tensors
                .iter()
                .map(|t| {
                    let n: u64 = t.dims.iter().product();
                    match t.ty.name() {
                        "F16" | "BF16" => 2 * n,
                        "Q4_0" | "Q4_1" | "Q8_0" => 2 * t.nbytes as u64,
                        _ => 4 * n,
                    }
                })
                .sum())
        }
        BytesKind::Pack => {
            pack_members(bytes)?;
            Ok(2 * bytes.len() as u64)
        }
    }
}

/// Runs `f` on the config, tensor source and tokenizer of a model file in memory (a GGUF or a
/// pack), as `load::with_source` does for a path.
pub(crate) fn with_bytes_source<R>(
    bytes: Vec<u8>,
    opts: &LoadOptions,
    f: impl FnOnce(ModelConfig, &mut dyn TensorSource, Option<Tokenizer>) -> Result<R>,
) -> Result<R> {
    opts.device.check_available()?;
    match bytes_kind(&bytes)? {
        BytesKind::Gguf => {
            let file = GgufFile::from_vec(bytes).map_err(|e| gguf_error(Path::new(IN_MEMORY), e))?;
            let config = config_from_gguf(&file)?;
            let tokenizer = if opts.skip_tokenizer { None } else { Some(tokenizer_from_gguf(&file)?) };
            let mut src = GgufSource::new(&file, &config);
            f(config, &mut src, tokenizer)
        }
        BytesKind::Pack => {
            let members = pack_members(&bytes)?;
            let text = |name: &str| -> Result<Option<&str>> {
                members
                    .get(name)
                    .map(|r| std::str::from_utf8(&bytes[r.clone()]).map_err(|e| pack_error(format!("{name}: {e}"))))
                    .transpose()
            };
            let cfg_text = text("config.json")?.ok_or_else(|| pack_error("no config.json"))?;
            let config = ModelConfig::from_json_str(cfg_text)?;
            let raw: serde_json::Value =
                serde_json::from_str(cfg_text).map_err(|e| ModelError::config("config.json", e.to_string()))?;
            let tokenizer = match text("tokenizer.json")? {
                Some(json) if !opts.skip_tokenizer => {
                    let cfg = match text("tokenizer_config.json")? {
                        Some(t) => Some(
                            serde_json::from_str(t)
                                .map_err(|e| ModelError::Tokenizer(format!("tokenizer_config.json: {e}")))?,
                        ),
                        None => None,
                    };
                    let mut tok = Tokenizer::from_json_str(json, cfg.as_ref())?;
                    if tok.chat_template().is_none() {
                        tok.set_chat_template(text("chat_template.jinja")?.map(str::to_string));
                    }
                    Some(tok)
                }
                _ => None,
            };
            let shards: Vec<String> = if members.contains_key("model.safetensors") {
                vec!["model.safetensors".into()]
            } else {
                let index = text("model.safetensors.index.json")?
                    .ok_or_else(|| pack_error("no model.safetensors or model.safetensors.index.json"))?;
                index_shards(index, Path::new("model.safetensors.index.json"))?.into_iter().collect()
            };
            let mut files = Vec::with_capacity(shards.len());
            for name in shards {
                let r = members.get(&name).ok_or_else(|| pack_error(format!("no {name}, which the index lists")))?;
                files.push((PathBuf::from(&name), bytes[r.clone()].to_vec()));
            }
            drop(bytes);
            let src = SafetensorsSource::from_byte_files(files)?;
            // No directory: a GPTQ checkpoint's quantize_config.json fallback finds nothing.
            let mut src = crate::hf_quant::quantized_source(Path::new(IN_MEMORY), &raw, src)?;
            f(config, src.as_mut(), tokenizer)
        }
    }
}

impl Model {
    /// Loads a model held in memory: a GGUF file or a single-file lowbit model (module docs).
    /// A GGUF's tensors are read from `bytes` as they are; a pack's members are copied out.
    pub fn from_bytes(bytes: Vec<u8>, opts: &LoadOptions, progress: &mut dyn Progress) -> Result<Model> {
        with_bytes_source(bytes, opts, |config, src, tokenizer| {
            Model::build(config, src, tokenizer, opts.device, progress)
        })
    }
}

/// Packs files held in memory (name -> bytes, e.g. [`Model::save_to_memory`]'s) into one file,
/// picking and ordering the members as [`pack_dir`] does, so a directory and its in-memory twin
/// give the same bytes.
pub fn pack_files(files: &BTreeMap<String, Vec<u8>>) -> Result<Vec<u8>> {
    let mut names: Vec<&str> = PACKED_TEXT_FILES.iter().copied().filter(|n| files.contains_key(*n)).collect();
    if !files.contains_key("config.json") {
        return Err(ModelError::Input { op: "pack_files", reason: "no config.json".into() });
    }
    let shards: Vec<String> = if files.contains_key("model.safetensors") {
        vec!["model.safetensors".into()]
    } else {
        let index = files.get("model.safetensors.index.json").ok_or_else(|| ModelError::Input {
            op: "pack_files",
            reason: "no model.safetensors or model.safetensors.index.json".into(),
        })?;
        let index = std::str::from_utf8(index)
            .map_err(|e| ModelError::Input { op: "pack_files", reason: format!("index: {e}") })?;
        names.push("model.safetensors.index.json");
        index_shards(index, Path::new("model.safetensors.index.json"))?.into_iter().collect()
    };
    let mut members: Vec<(&str, &[u8])> = names.iter().map(|n| (*n, files[*n].as_slice())).collect();
    for s in &shards {
        let bytes = files
            .get(s)
            .ok_or_else(|| ModelError::Input { op: "pack_files", reason: format!("no {s}, which the index lists") })?;
        members.push((s, bytes));
    }
    pack_members_into(&members)
}

/// The pack of `members` (name, bytes), in this order.
fn pack_members_into(members: &[(&str, &[u8])]) -> Result<Vec<u8>> {
    let mut index = Vec::new();
    let mut data: Vec<u8> = Vec::new();
    for (name, bytes) in members {
        data.resize(data.len().next_multiple_of(8), 0);
        index.push(serde_json::json!({"name": name, "offset": data.len(), "len": bytes.len()}));
        data.extend_from_slice(bytes);
    }
    let index = serde_json::to_vec(&serde_json::json!({"version": PACK_VERSION, "files": index}))
        .map_err(|e| ModelError::Input { op: "pack", reason: e.to_string() })?;
    let mut out = Vec::with_capacity(16 + index.len() + data.len());
    out.extend_from_slice(PACK_MAGIC);
    out.extend_from_slice(&(index.len() as u64).to_le_bytes());
    out.extend_from_slice(&index);
    out.extend_from_slice(&data);
    Ok(out)
}

/// Packs a model directory into one file (module docs): `config.json`, the weights
/// (`model.safetensors`, or the index and its shards) and the tokenizer files present.
#[cfg(not(target_arch = "wasm32"))]
pub fn pack_dir(dir: &Path) -> Result<Vec<u8>> {
    let mut names: Vec<String> = Vec::new();
    for name in PACKED_TEXT_FILES {
        if dir.join(name).is_file() {
            names.push(name.into());
        }
    }
    if !names.iter().any(|n| n == "config.json") {
        let p = dir.join("config.json");
        return Err(ModelError::MissingFile { path: p.display().to_string(), what: "the model config".into() });
    }
    let files = crate::safetensors_source::checkpoint_files(dir)?;
    if dir.join("model.safetensors.index.json").is_file() && !dir.join("model.safetensors").is_file() {
        names.push("model.safetensors.index.json".into());
    }
    for f in files {
        names.push(f.file_name().and_then(|n| n.to_str()).expect("checkpoint files have plain names").to_string());
    }
    let mut contents = Vec::with_capacity(names.len());
    for name in &names {
        let p = dir.join(name);
        contents.push(std::fs::read(&p).map_err(|e| ModelError::io(&p, e))?);
    }
    let members: Vec<(&str, &[u8])> =
        names.iter().map(|n| n.as_str()).zip(contents.iter().map(|c| c.as_slice())).collect();
    pack_members_into(&members)
}
