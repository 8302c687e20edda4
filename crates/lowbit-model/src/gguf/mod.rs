//! GGUF (v2 and v3) files: header, metadata, tensor infos, dequantization to f32, Hugging Face
//! names and configs, the tokenizer stored in the metadata, and import to an HF-style directory.
//!
//! Every read is bounds-checked: a truncated or corrupt file is a [`ModelError::Gguf`] naming the
//! byte offset, never a panic.

pub mod dequant;
mod import;
mod tokenizer;

pub use dequant::GgmlType;
pub use import::import_gguf;
pub(crate) use tokenizer::tokenizer_from_gguf;

use crate::config::{Architecture, ModelConfig};
use crate::tensors::{read_bytes, Bytes, Tensor, TensorData, TensorSource};
use crate::{ModelError, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// Refuse absurd counts before allocating for them.
const MAX_COUNT: u64 = 1 << 28;

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum GgufValue {
    /// Any unsigned integer type.
    U64(u64),
    /// Any signed integer type.
    I64(i64),
    /// f32 or f64.
    F64(f64),
    /// Boolean.
    Bool(bool),
    /// UTF-8 string.
    Str(String),
    /// Array of values.
    Array(Vec<GgufValue>),
}

impl GgufValue {
    /// As an unsigned integer, if it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U64(v) => Some(v),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }
    /// As a float, if numeric.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F64(v) => Some(v),
            GgufValue::U64(v) => Some(v as f64),
            GgufValue::I64(v) => Some(v as f64),
            _ => None,
        }
    }
    /// As a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::Str(s) => Some(s),
            _ => None,
        }
    }
    /// As an array.
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Where one tensor lives in the file.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufTensorInfo {
    /// GGUF name (`blk.0.attn_q.weight`).
    pub name: String,
    /// ggml dims, innermost first (`[cols, rows]` for a matrix).
    pub dims: Vec<u64>,
    /// Storage type.
    pub ty: GgmlType,
    /// Absolute byte offset of the data in the file.
    pub offset: usize,
    /// Byte length of the data.
    pub nbytes: usize,
}

impl GgufTensorInfo {
    /// Shape outermost first (the Hugging Face / PyTorch order).
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.dims.iter().map(|&d| d as usize).product()
    }
}

/// A parsed GGUF file, its bytes kept (mapped) for reading tensors.
pub struct GgufFile {
    path: PathBuf,
    bytes: Bytes,
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata key-value pairs.
    pub metadata: BTreeMap<String, GgufValue>,
    /// Tensor infos in file order.
    pub tensors: Vec<GgufTensorInfo>,
}

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn err(&self, reason: impl Into<String>) -> ModelError {
        ModelError::Gguf {
            path: self.path.display().to_string(),
            reason: format!("at byte {}: {}", self.pos, reason.into()),
        }
    }
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or_else(|| {
            self.err(format!("file ends while reading {what} ({n} bytes needed, {} left)", self.bytes.len() - self.pos))
        })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn arr<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.arr(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.arr(what)?))
    }
    fn count(&mut self, what: &str) -> Result<u64> {
        let n = self.u64(what)?;
        if n > MAX_COUNT {
            return Err(self.err(format!("{what} = {n} is not plausible")));
        }
        Ok(n)
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.u64(what)?;
        let n = usize::try_from(n).map_err(|_| self.err(format!("{what}: length {n} too large")))?;
        let s = self.take(n, what)?;
        String::from_utf8(s.to_vec()).map_err(|_| self.err(format!("{what} is not UTF-8")))
    }
    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<GgufValue> {
        Ok(match ty {
            0 => GgufValue::U64(self.arr::<1>(key)?[0] as u64),
            1 => GgufValue::I64(self.arr::<1>(key)?[0] as i8 as i64),
            2 => GgufValue::U64(u16::from_le_bytes(self.arr(key)?) as u64),
            3 => GgufValue::I64(i16::from_le_bytes(self.arr(key)?) as i64),
            4 => GgufValue::U64(self.u32(key)? as u64),
            5 => GgufValue::I64(i32::from_le_bytes(self.arr(key)?) as i64),
            6 => GgufValue::F64(f32::from_le_bytes(self.arr(key)?) as f64),
            7 => match self.arr::<1>(key)?[0] {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => return Err(self.err(format!("{key}: bad boolean byte {b}"))),
            },
            8 => GgufValue::Str(self.string(key)?),
            9 => {
                if depth > 4 {
                    return Err(self.err(format!("{key}: arrays nested too deeply")));
                }
                let inner = self.u32(key)?;
                let n = self.count(key)?;
                let mut v = Vec::with_capacity((n as usize).min(1 << 16));
                for _ in 0..n {
                    v.push(self.value(inner, key, depth + 1)?);
                }
                GgufValue::Array(v)
            }
            10 => GgufValue::U64(self.u64(key)?),
            11 => GgufValue::I64(i64::from_le_bytes(self.arr(key)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.arr(key)?)),
            t => return Err(self.err(format!("{key}: unknown metadata value type {t}"))),
        })
    }
}

impl GgufFile {
    /// Opens and parses `path` (memory-mapped with the `mmap` feature).
    pub fn open(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(ModelError::MissingFile { path: path.display().to_string(), what: "the GGUF file".into() });
        }
        let bytes = read_bytes(path)?;
        Self::parse(path.to_path_buf(), bytes)
    }

    /// Parses a GGUF file held in memory (`path` is only used in messages).
    pub fn from_bytes(path: &Path, bytes: Vec<u8>) -> Result<Self> {
        Self::parse(path.to_path_buf(), Bytes::Owned(bytes))
    }

    fn parse(path: PathBuf, bytes: Bytes) -> Result<Self> {
        let (version, metadata, tensors) = {
            let mut r = Reader { bytes: &bytes, pos: 0, path: &path };
            if r.take(4, "the magic")? != MAGIC {
                return Err(ModelError::Gguf {
                    path: path.display().to_string(),
                    reason: "not a GGUF file (bad magic)".into(),
                });
            }
            let version = r.u32("the version")?;
            if version != 2 && version != 3 {
                return Err(ModelError::GgufUnsupported {
                    path: path.display().to_string(),
                    what: format!("GGUF version {version} (lowbit reads 2 and 3)"),
                });
            }
            let n_tensors = r.count("the tensor count")?;
            let n_kv = r.count("the metadata count")?;
            let mut metadata = BTreeMap::new();
            for _ in 0..n_kv {
                let key = r.string("a metadata key")?;
                let ty = r.u32(&key)?;
                let value = r.value(ty, &key, 0)?;
                metadata.insert(key, value);
            }
            let alignment = match metadata.get("general.alignment") {
                None => DEFAULT_ALIGNMENT,
                Some(v) => match v.as_u64() {
                    Some(a) if a > 0 && a.is_power_of_two() => a,
                    _ => return Err(r.err(format!("general.alignment {v:?} is not a power of two"))),
                },
            };
            let mut infos = Vec::with_capacity(n_tensors as usize);
            for _ in 0..n_tensors {
                let name = r.string("a tensor name")?;
                let n_dims = r.u32(&name)?;
                if n_dims == 0 || n_dims > 4 {
                    return Err(r.err(format!("tensor {name}: {n_dims} dimensions")));
                }
                let dims = (0..n_dims).map(|_| r.u64(&name)).collect::<Result<Vec<u64>>>()?;
                let ty_id = r.u32(&name)?;
                let rel = r.u64(&name)?;
                infos.push((name, dims, ty_id, rel));
            }
            let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
            let mut tensors = Vec::with_capacity(infos.len());
            for (name, dims, ty_id, rel) in infos {
                let ty = GgmlType::from_id(ty_id).ok_or_else(|| ModelError::GgufUnsupported {
                    path: path.display().to_string(),
                    what: format!("tensor {name} has ggml type {ty_id}"),
                })?;
                let numel = dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).filter(|&n| n <= 1 << 40);
                let nbytes = numel
                    .and_then(|n| ty.bytes_for(n as usize))
                    .ok_or_else(|| r.err(format!("tensor {name}: dims {dims:?} are not whole {ty:?} blocks")))?;
                let offset = data_start.checked_add(rel).map(|o| o as usize);
                let fits = offset.and_then(|o| o.checked_add(nbytes)).is_some_and(|end| end <= bytes.len());
                if !fits || rel % alignment != 0 {
                    return Err(ModelError::Gguf {
                        path: path.display().to_string(),
                        reason: format!(
                            "tensor {name} ({nbytes} bytes at data offset {rel}) lies outside the {}-byte file or is misaligned (truncated?)",
                            bytes.len()
                        ),
                    });
                }
                tensors.push(GgufTensorInfo { name, dims, ty, offset: offset.unwrap_or(0), nbytes });
            }
            (version, metadata, tensors)
        };
        Ok(GgufFile { path, bytes, version, metadata, tensors })
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A tensor's info by GGUF name.
    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// A tensor's raw bytes.
    pub fn raw(&self, info: &GgufTensorInfo) -> &[u8] {
        &self.bytes[info.offset..info.offset + info.nbytes]
    }

    /// A tensor dequantized to f32, shape outermost first.
    pub fn dequantize(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let info = self.tensor_info(name).ok_or_else(|| ModelError::MissingTensor { name: name.to_string() })?;
        let mut out = vec![0f32; info.numel()];
        dequant::dequantize(info.ty, self.raw(info), &mut out);
        Ok((info.shape(), out))
    }

    fn meta_err(&self, key: &str, reason: &str) -> ModelError {
        ModelError::Gguf { path: self.path.display().to_string(), reason: format!("metadata {key}: {reason}") }
    }

    /// A required unsigned integer from the metadata.
    pub fn meta_u64(&self, key: &str) -> Result<u64> {
        self.metadata
            .get(key)
            .ok_or_else(|| self.meta_err(key, "missing"))?
            .as_u64()
            .ok_or_else(|| self.meta_err(key, "not an unsigned integer"))
    }
    /// An optional float from the metadata.
    pub fn meta_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| self.meta_err(key, "not a number")),
        }
    }
    /// An optional string from the metadata.
    pub fn meta_str(&self, key: &str) -> Option<&str> {
        self.metadata.get(key).and_then(|v| v.as_str())
    }

    /// The model config implied by the metadata (llama architecture only).
    pub fn config(&self) -> Result<ModelConfig> {
        let arch = self.meta_str("general.architecture").unwrap_or("");
        if arch != "llama" {
            return Err(ModelError::UnsupportedArchitecture { name: format!("GGUF general.architecture = {arch:?}") });
        }
        let u = |k: &str| self.meta_u64(&format!("llama.{k}")).map(|v| v as usize);
        let hidden_size = u("embedding_length")?;
        let num_attention_heads = u("attention.head_count")?;
        let num_key_value_heads = u("attention.head_count_kv").unwrap_or(num_attention_heads);
        let head_dim = match self.metadata.get("llama.attention.key_length") {
            Some(v) => {
                v.as_u64().ok_or_else(|| self.meta_err("llama.attention.key_length", "not an integer"))? as usize
            }
            None => hidden_size / num_attention_heads.max(1),
        };
        let vocab_size = match self.metadata.get("llama.vocab_size") {
            Some(v) => v.as_u64().ok_or_else(|| self.meta_err("llama.vocab_size", "not an integer"))? as usize,
            None => self
                .tensor_info("token_embd.weight")
                .map(|t| t.shape()[0])
                .ok_or_else(|| ModelError::MissingTensor { name: "token_embd.weight".into() })?,
        };
        let tok_id = |k: &str| self.metadata.get(k).and_then(|v| v.as_u64()).map(|v| v as u32);
        let cfg = ModelConfig {
            arch: Architecture::Llama,
            vocab_size,
            hidden_size,
            intermediate_size: u("feed_forward_length")?,
            num_hidden_layers: u("block_count")?,
            num_attention_heads,
            num_key_value_heads,
            head_dim,
            rms_norm_eps: self.meta_f64("llama.attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5) as f32,
            rope_theta: self.meta_f64("llama.rope.freq_base")?.unwrap_or(10000.0) as f32,
            rope_scaling: None,
            max_position_embeddings: u("context_length").unwrap_or(2048),
            tie_word_embeddings: self.tensor_info("output.weight").is_none(),
            attention_bias: self.tensor_info("blk.0.attn_q.bias").is_some(),
            sliding_window: None,
            bos_token_id: tok_id("tokenizer.ggml.bos_token_id"),
            eos_token_ids: tok_id("tokenizer.ggml.eos_token_id").into_iter().collect(),
            int8_activations: false,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The GGUF name of a Hugging Face tensor name, for the llama layout.
    pub fn gguf_name(hf: &str) -> Option<String> {
        let direct = match hf {
            "model.embed_tokens.weight" => Some("token_embd.weight"),
            "model.norm.weight" => Some("output_norm.weight"),
            "lm_head.weight" => Some("output.weight"),
            _ => None,
        };
        if let Some(d) = direct {
            return Some(d.to_string());
        }
        let rest = hf.strip_prefix("model.layers.")?;
        let (layer, rest) = rest.split_once('.')?;
        layer.parse::<usize>().ok()?;
        let part = match rest {
            "input_layernorm.weight" => "attn_norm.weight",
            "post_attention_layernorm.weight" => "ffn_norm.weight",
            "self_attn.q_proj.weight" => "attn_q.weight",
            "self_attn.k_proj.weight" => "attn_k.weight",
            "self_attn.v_proj.weight" => "attn_v.weight",
            "self_attn.o_proj.weight" => "attn_output.weight",
            "self_attn.q_proj.bias" => "attn_q.bias",
            "self_attn.k_proj.bias" => "attn_k.bias",
            "self_attn.v_proj.bias" => "attn_v.bias",
            "mlp.gate_proj.weight" => "ffn_gate.weight",
            "mlp.up_proj.weight" => "ffn_up.weight",
            "mlp.down_proj.weight" => "ffn_down.weight",
            _ => return None,
        };
        Some(format!("blk.{layer}.{part}"))
    }
}

/// Undoes llama.cpp's `permute(w, n_head)` on the rows of attn_q/attn_k: the converter stores
/// row `h*d + 2i + j` (view `[n_head, d/2, 2]`) from Hugging Face row `h*d + j*d/2 + i`
/// (view `[n_head, 2, d/2]`), which turns HF's rotate-half RoPE into ggml's interleaved one.
pub fn unpermute_rows<T: Copy>(w: &[T], n_head: usize, cols: usize) -> Vec<T> {
    let rows = w.len() / cols;
    let d = rows / n_head;
    let mut out = w.to_vec();
    for h in 0..n_head {
        for i in 0..d / 2 {
            for j in 0..2 {
                let src = h * d + 2 * i + j;
                let dst = h * d + j * (d / 2) + i;
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// Tensors of a GGUF file under Hugging Face names, dequantized (F16/BF16 kept as they are)
/// and with q/k rows un-permuted.
pub(crate) struct GgufSource<'a> {
    file: &'a GgufFile,
    n_head: usize,
    n_kv_head: usize,
}

impl<'a> GgufSource<'a> {
    pub(crate) fn new(file: &'a GgufFile, cfg: &ModelConfig) -> Self {
        GgufSource { file, n_head: cfg.num_attention_heads, n_kv_head: cfg.num_key_value_heads }
    }
}

impl TensorSource for GgufSource<'_> {
    fn take(&mut self, name: &str) -> Result<Option<Tensor>> {
        let Some(gname) = GgufFile::gguf_name(name) else { return Ok(None) };
        let Some(info) = self.file.tensor_info(&gname) else { return Ok(None) };
        let shape = info.shape();
        let raw = self.file.raw(info);
        let mut data = match info.ty {
            GgmlType::F16 => TensorData::F16(crate::tensors::le_f16(raw)),
            GgmlType::Bf16 => TensorData::Bf16(crate::tensors::le_bf16(raw)),
            ty => {
                let mut out = vec![0f32; info.numel()];
                dequant::dequantize(ty, raw, &mut out);
                TensorData::F32(out)
            }
        };
        let n_head = if gname.ends_with("attn_q.weight") || gname.ends_with("attn_q.bias") {
            Some(self.n_head)
        } else if gname.ends_with("attn_k.weight") || gname.ends_with("attn_k.bias") {
            Some(self.n_kv_head)
        } else {
            None
        };
        if let Some(n_head) = n_head {
            let cols = if shape.len() == 2 { shape[1] } else { 1 };
            if shape[0] % (2 * n_head) != 0 {
                return Err(ModelError::TensorShape {
                    name: name.into(),
                    expected: vec![n_head * 2, cols],
                    got: shape,
                });
            }
            data = match data {
                TensorData::F32(v) => TensorData::F32(unpermute_rows(&v, n_head, cols)),
                TensorData::F16(v) => TensorData::F16(unpermute_rows(&v, n_head, cols)),
                TensorData::Bf16(v) => TensorData::Bf16(unpermute_rows(&v, n_head, cols)),
                q @ TensorData::Quant(_) => q,
            };
        }
        Ok(Some(Tensor { shape, data }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // permute as in convert_hf_to_gguf: reshape(n_head, 2, d/2, cols).swapaxes(1, 2)
        let (n_head, d, cols) = (3, 8, 2);
        let hf: Vec<u32> = (0..(n_head * d * cols) as u32).collect();
        let mut permuted = hf.clone();
        for h in 0..n_head {
            for j in 0..2 {
                for i in 0..d / 2 {
                    let src = h * d + j * (d / 2) + i;
                    let dst = h * d + i * 2 + j;
                    permuted[dst * cols..(dst + 1) * cols].copy_from_slice(&hf[src * cols..(src + 1) * cols]);
                }
            }
        }
        assert_ne!(permuted, hf);
        assert_eq!(unpermute_rows(&permuted, n_head, cols), hf);
    }

    #[test]
    fn truncated_headers_are_errors() {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        b.extend(1u64.to_le_bytes());
        b.extend(100u64.to_le_bytes()); // key length past the end
        b.extend(b"abc");
        for cut in 0..b.len() {
            let e = GgufFile::from_bytes(Path::new("t.gguf"), b[..cut].to_vec()).err().expect("must fail");
            assert!(matches!(e, ModelError::Gguf { .. }), "{e}");
        }
        let e = GgufFile::from_bytes(Path::new("t.gguf"), b"GGML\x03\0\0\0".to_vec()).err().unwrap();
        assert!(e.to_string().contains("magic"), "{e}");
    }
}
