//! GGUF files as models: the config implied by the metadata, tensors under Hugging Face names
//! (Q4_0/Q8_0 packed, other types dequantized; q/k rows un-permuted), the tokenizer stored in the metadata, import to an
//! HF-style directory, and export of any model lowbit loads to a llama GGUF. Reading and writing
//! GGUF itself is `lowbit-gguf`, re-exported here.

mod export;
mod import;
mod tokenizer;

pub(crate) use export::describe;
pub use export::{export_gguf, ExportPath, GgufExport, GgufExportOptions, GgufPlan, TensorExport};
pub use import::import_gguf;
pub use lowbit_gguf::llama::{gguf_name, unpermute_rows};
pub use lowbit_gguf::{dequantize, quantize, GgmlType, GgufError, GgufFile, GgufTensorInfo, GgufValue, GgufValueType};
pub(crate) use tokenizer::tokenizer_from_gguf;

use crate::config::{Architecture, ModelConfig};
use crate::tensors::{Tensor, TensorData, TensorSource};
use crate::{ModelError, Result};
use lowbit_core::{Bits, IntScheme, QParams, QTensor, Scales, Scheme, ZeroPoints};
use std::collections::BTreeMap;
use std::path::Path;

/// The model error for a GGUF error in `path`: unsupported content, I/O, or a corrupt file.
pub(crate) fn gguf_error(path: &Path, e: GgufError) -> ModelError {
    let path_s = path.display().to_string();
    match e {
        GgufError::Io { source, .. } => ModelError::io(path, source),
        GgufError::UnsupportedVersion { .. } | GgufError::UnknownTensorType { .. } => {
            ModelError::GgufUnsupported { path: path_s, what: e.to_string() }
        }
        e => ModelError::Gguf { path: path_s, reason: e.to_string() },
    }
}

/// The file's path for messages.
pub(crate) fn path_of(file: &GgufFile) -> &Path {
    file.path().unwrap_or(Path::new("<GGUF in memory>"))
}

/// Opens and parses a GGUF file, with lowbit-model's errors.
pub(crate) fn open(path: &Path) -> Result<GgufFile> {
    if !path.is_file() {
        return Err(ModelError::MissingFile { path: path.display().to_string(), what: "the GGUF file".into() });
    }
    GgufFile::open(path).map_err(|e| gguf_error(path, e))
}

fn meta_err(file: &GgufFile, key: &str, reason: &str) -> ModelError {
    ModelError::Gguf { path: path_of(file).display().to_string(), reason: format!("metadata {key}: {reason}") }
}

/// An optional unsigned integer from the metadata.
pub(crate) fn meta_u64(file: &GgufFile, key: &str) -> Result<Option<u64>> {
    file.get_u64(key).map_err(|e| gguf_error(path_of(file), e))
}

/// The model config implied by a GGUF file's metadata (llama architecture only).
pub fn config_from_gguf(file: &GgufFile) -> Result<ModelConfig> {
    let arch = file.get_str("general.architecture").unwrap_or("");
    if arch != "llama" {
        return Err(ModelError::UnsupportedArchitecture { name: format!("GGUF general.architecture = {arch:?}") });
    }
    let opt = |k: &str| meta_u64(file, &format!("llama.{k}")).map(|v| v.map(|v| v as usize));
    let req = |k: &str| opt(k)?.ok_or_else(|| meta_err(file, &format!("llama.{k}"), "missing"));
    let f64_ = |k: &str| file.get_f64(k).map_err(|e| gguf_error(path_of(file), e));
    let hidden_size = req("embedding_length")?;
    let num_attention_heads = req("attention.head_count")?;
    let num_key_value_heads = opt("attention.head_count_kv")?.unwrap_or(num_attention_heads);
    let head_dim = opt("attention.key_length")?.unwrap_or(hidden_size / num_attention_heads.max(1));
    let vocab_size = match opt("vocab_size")? {
        Some(v) => v,
        None => file
            .tensor_info("token_embd.weight")
            .map(|t| t.shape()[0])
            .ok_or_else(|| ModelError::MissingTensor { name: "token_embd.weight".into() })?,
    };
    let tok_id = |k: &str| file.get(k).and_then(|v| v.as_u64()).map(|v| v as u32);
    let cfg = ModelConfig {
        arch: Architecture::Llama,
        vocab_size,
        hidden_size,
        intermediate_size: req("feed_forward_length")?,
        num_hidden_layers: req("block_count")?,
        num_attention_heads,
        num_key_value_heads,
        head_dim,
        rms_norm_eps: f64_("llama.attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5) as f32,
        rope_theta: f64_("llama.rope.freq_base")?.unwrap_or(10000.0) as f32,
        rope_scaling: None,
        max_position_embeddings: opt("context_length")?.unwrap_or(2048),
        tie_word_embeddings: file.tensor_info("output.weight").is_none(),
        attention_bias: file.tensor_info("blk.0.attn_q.bias").is_some(),
        sliding_window: None,
        bos_token_id: tok_id("tokenizer.ggml.bos_token_id"),
        eos_token_ids: tok_id("tokenizer.ggml.eos_token_id").into_iter().collect(),
        int8_activations: false,
        int8_outlier_threshold: None,
    };
    cfg.validate()?;
    Ok(cfg)
}

/// Tensors of a GGUF file under Hugging Face names, q/k rows un-permuted. Q4_0 and Q8_0 weights
/// (and Q4_1 ones whose minima are whole multiples of the scale) stay packed as lowbit integer
/// tensors, exactly (see [`packed`]); F16/BF16 are kept as they are; every other type is
/// dequantized to f32, and [`TensorSource::warnings`] names those types once per model.
pub(crate) struct GgufSource<'a> {
    file: &'a GgufFile,
    n_head: usize,
    n_kv_head: usize,
    /// Quantized tensors dequantized to f32, by GGUF type name.
    dequantized: BTreeMap<&'static str, usize>,
}

impl<'a> GgufSource<'a> {
    pub(crate) fn new(file: &'a GgufFile, cfg: &ModelConfig) -> Self {
        GgufSource {
            file,
            n_head: cfg.num_attention_heads,
            n_kv_head: cfg.num_key_value_heads,
            dequantized: BTreeMap::new(),
        }
    }
}

/// The rows of a packed tensor moved as [`unpermute_rows`] moves dense rows: codes, scales and
/// zeros are whole per row (a row is a whole number of 32-weight groups), so this is exact.
fn unpermute_quant(q: &QTensor, n_head: usize) -> Result<QTensor> {
    let (rows, cols) = q.matrix_dims();
    let Scheme::Int(s) = *q.scheme() else { unreachable!("GGUF import packs integer tensors only") };
    let QParams::Int { scales, zeros } = q.params() else { unreachable!("integer params") };
    let row_bytes = q.codes().len() / rows;
    let gpr = scales.len() / rows;
    let scales = match scales {
        Scales::F16(v) => Scales::F16(unpermute_rows(v, n_head, gpr)),
        Scales::F32(v) => Scales::F32(unpermute_rows(v, n_head, gpr)),
    };
    let zeros = zeros.as_ref().map(|z| match z {
        ZeroPoints::Codes(z) => ZeroPoints::Codes(unpermute_rows(z, n_head, gpr)),
        ZeroPoints::Float(Scales::F16(z)) => ZeroPoints::Float(Scales::F16(unpermute_rows(z, n_head, gpr))),
        ZeroPoints::Float(Scales::F32(z)) => ZeroPoints::Float(Scales::F32(unpermute_rows(z, n_head, gpr))),
    });
    let codes = unpermute_rows(q.codes(), n_head, row_bytes);
    Ok(QTensor::from_parts(vec![rows, cols], Scheme::Int(s), codes, QParams::Int { scales, zeros })?)
}

/// A Q4_0, Q8_0 or Q4_1 matrix as the lowbit integer tensor with the same values, bit for bit:
/// ```text
/// Q4_0  (n - 8) * d     -> int4 g32 sym f16, code n, scale d
/// Q8_0  n * d (n: i8)   -> int8 g32 sym f16, code n + 128, scale d (lowbit's zero is 128)
/// Q4_1  n * d + m       -> int4 g32 asym f16, code n, scale d, zero z = -m / d, only when every
///                          block has such a z in 0..=15 with -z * d == m exactly
/// ```
/// (`(n - z) * d` and `n * d - z * d` are both exact in f32 for 4-bit codes and an f16 `d`.)
/// `None` for other types and for Q4_1 blocks lowbit's integer zero cannot express.
pub(crate) fn packed(ty: GgmlType, raw: &[u8], rows: usize, cols: usize) -> lowbit_gguf::Result<Option<QTensor>> {
    let scheme = |bits, symmetric| IntScheme { symmetric, ..IntScheme::group(bits, 32) };
    let (codes, d, zeros, scheme) = match ty {
        GgmlType::Q4_0 => {
            let (n, d) = lowbit_gguf::repack::unpack_q4_0(raw)?;
            (n, d, None, scheme(Bits::B4, true))
        }
        GgmlType::Q8_0 => {
            let (n, d) = lowbit_gguf::repack::unpack_q8_0(raw)?;
            let n = n.iter().map(|&v| (i16::from(v) + 128) as u8).collect();
            (n, d, None, scheme(Bits::B8, true))
        }
        GgmlType::Q4_1 => {
            let (n, d, m) = lowbit_gguf::repack::unpack_q4_1(raw)?;
            let Some(z) = d.iter().zip(&m).map(|(d, m)| q4_1_zero(d.to_f32(), m.to_f32())).collect() else {
                return Ok(None);
            };
            (n, d, Some(ZeroPoints::Codes(z)), scheme(Bits::B4, false))
        }
        _ => return Ok(None),
    };
    if codes.len() != rows * cols || cols % 32 != 0 || d.iter().any(|d| !d.is_finite()) {
        return Ok(None);
    }
    let codes = lowbit_core::pack::pack(&codes, scheme.bits).expect("codes are in range by construction");
    let params = QParams::Int { scales: Scales::F16(d), zeros };
    Ok(QTensor::from_parts(vec![rows, cols], Scheme::Int(scheme), codes, params).ok())
}

/// The integer zero `z` with `-z * d == m` exactly, if `z` is a 4-bit code.
fn q4_1_zero(d: f32, m: f32) -> Option<u8> {
    if d == 0.0 {
        // Every weight is `m`: lowbit's zero scale gives 0 only.
        return (m == 0.0).then_some(0);
    }
    let z = -m / d;
    (z.fract() == 0.0 && (0.0..=15.0).contains(&z) && -z * d == m).then_some(z as u8)
}

impl TensorSource for GgufSource<'_> {
    fn take(&mut self, name: &str) -> Result<Option<Tensor>> {
        let Some(gname) = gguf_name(name) else { return Ok(None) };
        let Some(info) = self.file.tensor_info(&gname) else { return Ok(None) };
        let err = |e| gguf_error(path_of(self.file), e);
        let shape = info.shape();
        let raw = self.file.raw(info).map_err(err)?;
        let quant = match (info.ty, shape.as_slice()) {
            (ty, &[rows, cols]) => packed(ty, raw, rows, cols).map_err(err)?,
            _ => None,
        };
        let mut data = match (info.ty, quant) {
            (_, Some(q)) => TensorData::Quant(q),
            (GgmlType::F16, None) => TensorData::F16(crate::tensors::le_f16(raw)),
            (GgmlType::Bf16, None) => TensorData::Bf16(crate::tensors::le_bf16(raw)),
            (ty, None) => {
                if ty != GgmlType::F32 {
                    *self.dequantized.entry(ty.name()).or_default() += 1;
                }
                TensorData::F32(lowbit_gguf::dequantize_to_vec(ty, raw, info.numel()).map_err(err)?)
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
                TensorData::Quant(q) => TensorData::Quant(unpermute_quant(&q, n_head)?),
            };
        }
        Ok(Some(Tensor { shape, data }))
    }

    fn warnings(&self) -> Vec<String> {
        if self.dequantized.is_empty() {
            return Vec::new();
        }
        let n: usize = self.dequantized.values().sum();
        let types: Vec<String> = self.dequantized.iter().map(|(t, n)| format!("{t} x{n}")).collect();
        vec![format!(
            "{}: {n} tensors dequantized to f32 ({}): lowbit runs Q4_0, Q8_0 and Q4_1 with integer zero points packed, other GGUF types as f32",
            path_of(self.file).display(),
            types.join(", ")
        )]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::f16;
    use lowbit_gguf::repack::pack_q4_1;

    #[test]
    fn q4_1_packs_only_when_every_minimum_is_a_whole_zero() {
        let n: Vec<u8> = (0..64).map(|i| (i * 5 % 16) as u8).collect();
        let d = [f16::from_f32(0.375), f16::from_f32(-0.0625)];
        // -z * d for z = 3 and z = 15 (a negative scale too): exact.
        let m = [f16::from_f32(-1.125), f16::from_f32(0.9375)];
        let raw = pack_q4_1(&n, &d, &m).unwrap();
        let q = packed(GgmlType::Q4_1, &raw, 2, 32).unwrap().expect("whole zeros pack");
        assert_eq!(q.dequantize(), lowbit_gguf::dequantize_to_vec(GgmlType::Q4_1, &raw, 64).unwrap());
        let QParams::Int { zeros: Some(z), .. } = q.params() else { panic!("asymmetric") };
        assert_eq!(z.codes(), Some(&[3, 15][..]));
        // A minimum between codes, a zero beyond 15, and d = 0 with m != 0 stay dequantized.
        for (d1, m1) in [(0.375, -1.0), (0.375, -6.0), (0.0, 0.5)] {
            let raw = pack_q4_1(&n, &[d[0], f16::from_f32(d1)], &[m[0], f16::from_f32(m1)]).unwrap();
            assert!(packed(GgmlType::Q4_1, &raw, 2, 32).unwrap().is_none(), "d {d1} m {m1}");
        }
        // d = 0 and m = 0: every weight 0, which scale 0 holds.
        let raw = pack_q4_1(&n, &[d[0], f16::ZERO], &[m[0], f16::ZERO]).unwrap();
        assert!(packed(GgmlType::Q4_1, &raw, 2, 32).unwrap().is_some());
    }

    #[test]
    fn q4_0_and_q8_0_pack_to_group_32_and_other_types_do_not() {
        let x: Vec<f32> = (0..128).map(|i| ((i * 37 % 23) as f32 - 11.0) / 7.0).collect();
        for (ty, bits) in [(GgmlType::Q4_0, Bits::B4), (GgmlType::Q8_0, Bits::B8)] {
            let raw = lowbit_gguf::quantize(ty, &x).unwrap();
            let q = packed(ty, &raw, 4, 32).unwrap().unwrap();
            assert_eq!(*q.scheme(), Scheme::Int(IntScheme { symmetric: true, ..IntScheme::group(bits, 32) }));
            assert_eq!(q.dequantize(), lowbit_gguf::dequantize_to_vec(ty, &raw, 128).unwrap());
        }
        let raw = lowbit_gguf::quantize(GgmlType::Q5_0, &x).unwrap();
        assert!(packed(GgmlType::Q5_0, &raw, 4, 32).unwrap().is_none());
    }
}
