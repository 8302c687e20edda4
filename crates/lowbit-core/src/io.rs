//! safetensors serialization of [`QTensor`]s (layout in `docs/format.md`).
//!
//! A tensor `NAME` becomes `NAME.qweight` (packed codes), `NAME.scales`, `NAME.zeros`
//! (asymmetric only) and `NAME.absmax_q` (double quantization only), with its scheme in the
//! header metadata under `lowbit.NAME`. Files are written atomically (temp file + rename).

use crate::codebook::Absmax;
use crate::sparse::{ColumnIndex, SparseOutliers};
use crate::stats::{QuantStats, StatCodes};
use crate::{
    Bits, ClipSearch, Codebook, CodebookScheme, CoreError, Granularity, IntScheme, QParams, QTensor, Result,
    RowLutScheme, ScaleDtype, Scales, Scheme, ZeroPoints,
};
pub use safetensors::tensor::Dtype;
use safetensors::SafeTensors;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// Version written to `lowbit.format_version`; readers reject others.
pub const FORMAT_VERSION: &str = "1";
/// Largest safetensors JSON header the readers accept, in bytes (checked before it is parsed).
/// A lowbit header grows by about 300 bytes per tensor and a Hugging Face one by about 100, so
/// 64 MiB holds hundreds of thousands of tensors; the `safetensors` crate alone would allow 100 MB.
/// The other limits on untrusted input are [`QTensor::MAX_DIMS`] and [`QTensor::MAX_ELEMENTS`].
pub const MAX_HEADER_BYTES: u64 = 64 << 20;

/// Checks the header length prefix of safetensors `bytes` against [`MAX_HEADER_BYTES`].
pub fn check_header_len(bytes: &[u8]) -> Result<()> {
    let n = bytes.get(..8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    match n {
        Some(n) if n > MAX_HEADER_BYTES => {
            Err(CoreError::Corrupt(format!("header of {n} bytes is above the limit of {MAX_HEADER_BYTES}")))
        }
        _ => Ok(()),
    }
}

const VERSION_KEY: &str = "lowbit.format_version";
const META_PREFIX: &str = "lowbit.";

/// The scheme as stored in the header.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
struct TensorMeta {
    format: String,
    bits: u32,
    shape: Vec<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    granularity: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    group_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    symmetric: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scale_dtype: Option<ScaleDtype>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    block_size: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    double_quant: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dq_offset: Option<f32>,
    /// Quantized statistics: their code width and rows per statistics group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stats_bits: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    stats_group: Option<usize>,
    /// Sparse outliers: how many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    outliers: Option<usize>,
}

fn meta_of(qt: &QTensor) -> TensorMeta {
    let mut meta = scheme_meta(qt);
    if let QParams::IntStats(st) = qt.params() {
        meta.stats_bits = Some(st.bits.get());
        meta.stats_group = Some(st.group);
    }
    meta.outliers = qt.outliers().map(SparseOutliers::nnz);
    meta
}

fn scheme_meta(qt: &QTensor) -> TensorMeta {
    let shape = qt.shape().to_vec();
    match (qt.scheme(), qt.params()) {
        (Scheme::Int(s), _) => {
            let (granularity, group_size) = match s.granularity {
                Granularity::PerTensor => ("tensor", None),
                Granularity::PerChannel => ("channel", None),
                Granularity::Group(g) => ("group", Some(g)),
            };
            TensorMeta {
                format: "int".into(),
                bits: s.bits.get(),
                shape,
                granularity: Some(granularity.into()),
                group_size,
                symmetric: Some(s.symmetric),
                scale_dtype: Some(s.scale_dtype),
                block_size: None,
                double_quant: None,
                dq_offset: None,
                stats_bits: None,
                stats_group: None,
                outliers: None,
            }
        }
        (Scheme::Codebook(s), params) => TensorMeta {
            format: match s.codebook {
                Codebook::Nf4 => "nf4",
                Codebook::Fp4 => "fp4",
            }
            .into(),
            bits: 4,
            shape,
            granularity: None,
            group_size: None,
            symmetric: None,
            scale_dtype: None,
            block_size: Some(s.block_size),
            double_quant: Some(s.double_quant),
            dq_offset: match params {
                QParams::Codebook { absmax: Absmax::Double { offset, .. } } => Some(*offset),
                _ => None,
            },
            stats_bits: None,
            stats_group: None,
            outliers: None,
        },
        (Scheme::RowLut(s), _) => TensorMeta {
            format: "rowlut".into(),
            bits: s.bits.get(),
            shape,
            granularity: None,
            group_size: None,
            symmetric: None,
            scale_dtype: None,
            block_size: None,
            double_quant: None,
            dq_offset: None,
            stats_bits: None,
            stats_group: None,
            outliers: None,
        },
    }
}

fn scheme_of(meta: &TensorMeta, name: &str) -> Result<Scheme> {
    let corrupt = |what: &str| CoreError::Corrupt(format!("tensor {name}: {what}"));
    match meta.format.as_str() {
        "int" => {
            let bits = Bits::try_from(meta.bits)?;
            let granularity = match (meta.granularity.as_deref(), meta.group_size) {
                (Some("tensor"), None) => Granularity::PerTensor,
                (Some("channel"), None) => Granularity::PerChannel,
                (Some("group"), Some(g)) => Granularity::Group(g),
                _ => return Err(corrupt("bad granularity metadata")),
            };
            Ok(Scheme::Int(IntScheme {
                bits,
                symmetric: meta.symmetric.ok_or_else(|| corrupt("missing `symmetric`"))?,
                granularity,
                scale_dtype: meta.scale_dtype.ok_or_else(|| corrupt("missing `scale_dtype`"))?,
                clip: ClipSearch::MinMax,
            }))
        }
        "nf4" | "fp4" => Ok(Scheme::Codebook(CodebookScheme {
            codebook: if meta.format == "nf4" { Codebook::Nf4 } else { Codebook::Fp4 },
            block_size: meta.block_size.ok_or_else(|| corrupt("missing `block_size`"))?,
            double_quant: meta.double_quant.ok_or_else(|| corrupt("missing `double_quant`"))?,
        })),
        "rowlut" => Ok(Scheme::RowLut(RowLutScheme::new(Bits::try_from(meta.bits)?)?)),
        other => Err(corrupt(&format!("unknown format {other:?}"))),
    }
}

/// The raw buffers of one stored QTensor, ready for a safetensors writer.
struct Parts {
    tensors: Vec<RawTensor>,
    meta: (String, String),
}

fn parts_of(name: &str, qt: &QTensor) -> Parts {
    let mut tensors = vec![(format!("{name}.qweight"), Dtype::U8, vec![qt.codes().len()], qt.codes().to_vec())];
    let scale_shape = qt.scale_shape();
    match qt.params() {
        QParams::Int { scales, zeros } => {
            let (dtype, bytes) = match scales {
                Scales::F16(v) => (Dtype::F16, bytemuck::cast_slice(v).to_vec()),
                Scales::F32(v) => (Dtype::F32, bytemuck::cast_slice(v).to_vec()),
            };
            tensors.push((format!("{name}.scales"), dtype, scale_shape.clone(), bytes));
            match zeros {
                Some(ZeroPoints::Codes(z)) => {
                    tensors.push((format!("{name}.zeros"), Dtype::U8, scale_shape, z.clone()))
                }
                Some(ZeroPoints::Float(Scales::F16(z))) => {
                    tensors.push((format!("{name}.zeros"), Dtype::F16, scale_shape, bytemuck::cast_slice(z).to_vec()))
                }
                Some(ZeroPoints::Float(Scales::F32(z))) => {
                    tensors.push((format!("{name}.zeros"), Dtype::F32, scale_shape, bytemuck::cast_slice(z).to_vec()))
                }
                None => {}
            }
        }
        QParams::IntStats(st) => {
            for (what, c) in [("scale", &st.scales), ("zero", &st.zeros)] {
                tensors.push((format!("{name}.{what}_codes"), Dtype::U8, vec![c.codes.len()], c.codes.clone()));
                for (part, v) in [("scales", &c.scale), ("zeros", &c.zero)] {
                    let bytes = bytemuck::cast_slice(v).to_vec();
                    tensors.push((format!("{name}.{what}_{part}"), Dtype::F16, vec![v.len()], bytes));
                }
            }
        }
        QParams::Codebook { absmax } => match absmax {
            Absmax::F32(v) => {
                tensors.push((format!("{name}.scales"), Dtype::F32, scale_shape, bytemuck::cast_slice(v).to_vec()))
            }
            Absmax::Double { codes, scales, .. } => {
                tensors.push((
                    format!("{name}.absmax_q"),
                    Dtype::I8,
                    scale_shape,
                    bytemuck::cast_slice(codes).to_vec(),
                ));
                tensors.push((
                    format!("{name}.scales"),
                    Dtype::F32,
                    vec![scales.len()],
                    bytemuck::cast_slice(scales).to_vec(),
                ));
            }
        },
        QParams::RowLut { tables } => {
            tensors.push((format!("{name}.lut"), Dtype::F16, scale_shape, bytemuck::cast_slice(tables).to_vec()));
        }
    }
    if let Some(o) = qt.outliers() {
        let offsets = bytemuck::cast_slice(o.offsets()).to_vec();
        tensors.push((format!("{name}.outlier_offsets"), Dtype::U32, vec![o.offsets().len()], offsets));
        let (dtype, columns) = match o.columns() {
            ColumnIndex::U16(v) => (Dtype::U16, bytemuck::cast_slice(v).to_vec()),
            ColumnIndex::U32(v) => (Dtype::U32, bytemuck::cast_slice(v).to_vec()),
        };
        tensors.push((format!("{name}.outlier_columns"), dtype, vec![o.nnz()], columns));
        let values = bytemuck::cast_slice(o.values()).to_vec();
        tensors.push((format!("{name}.outlier_values"), Dtype::F16, vec![o.nnz()], values));
    }
    let meta = serde_json::to_string(&meta_of(qt)).expect("metadata serializes");
    Parts { tensors, meta: (format!("{META_PREFIX}{name}"), meta) }
}

/// A raw tensor for [`serialize`]: name, dtype, shape, little-endian bytes.
pub type RawTensor = (String, Dtype, Vec<usize>, Vec<u8>);

/// Serializes raw tensors into safetensors bytes with a deterministic header, JSON keys sorted, so
/// the same tensors always give the same bytes (the `safetensors` crate's own writer orders
/// metadata by hash and is not reproducible).
///
/// Data is laid out as the `safetensors` crate lays it out: the header is padded with spaces to a
/// multiple of 8 bytes, and tensors follow in order of descending dtype (widest first), then name.
/// Every tensor's byte size is a multiple of its element size, so each one starts at an offset
/// that is a multiple of its element size and an f32 or f16 array never lands at an odd offset
/// behind a u8 one (safetensors forbids gaps between tensors, so ordering is the only way).
pub fn serialize(tensors: &[RawTensor], metadata: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    let mut order: Vec<&RawTensor> = tensors.iter().collect();
    order.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert("__metadata__".into(), serde_json::to_value(metadata).expect("strings serialize"));
    }
    let mut offset = 0usize;
    for (name, dtype, shape, data) in &order {
        let numel: usize = shape.iter().product();
        if numel * dtype.bitsize() / 8 != data.len() {
            return Err(CoreError::shape(
                "serialize",
                format!("{} bytes for {name} {shape:?}", numel * dtype.bitsize() / 8),
                data.len(),
            ));
        }
        let entry = serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + data.len()]});
        if header.insert(name.clone(), entry).is_some() || name == "__metadata__" {
            return Err(CoreError::shape("serialize", "unique tensor names", name));
        }
        offset += data.len();
    }
    // Deterministic either way: sorted keys, or (with serde_json's `preserve_order`) insertion order.
    let mut json = serde_json::to_vec(&header).expect("header serializes");
    json.resize(json.len().div_ceil(8) * 8, b' ');
    let mut out = Vec::with_capacity(8 + json.len() + offset);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    for (_, _, _, data) in order {
        out.extend_from_slice(data);
    }
    Ok(out)
}

/// Serializes named tensors to safetensors bytes; `extra` metadata is stored alongside.
pub fn to_bytes<'a>(
    tensors: impl IntoIterator<Item = (&'a str, &'a QTensor)>,
    extra: &BTreeMap<String, String>,
) -> Result<Vec<u8>> {
    let mut metadata = extra.clone();
    metadata.insert(VERSION_KEY.into(), FORMAT_VERSION.into());
    let mut buffers = Vec::new();
    for (name, qt) in tensors {
        let parts = parts_of(name, qt);
        if metadata.insert(parts.meta.0.clone(), parts.meta.1).is_some() {
            return Err(CoreError::shape("save", "unique tensor names", name));
        }
        buffers.extend(parts.tensors);
    }
    serialize(&buffers, &metadata)
}

/// Writes `bytes` to `path` atomically: a temp file in the same directory, then a rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io_err = |source| CoreError::Io { path: path.display().to_string(), source };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let file_name = path.file_name().ok_or_else(|| io_err(std::io::Error::other("path has no file name")))?;
    let tmp = dir.join(format!(".{}.tmp-{}", file_name.to_string_lossy(), std::process::id()));
    let result = (|| {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io_err)
}

/// Saves named tensors to a safetensors file, atomically.
pub fn save<'a>(
    path: &Path,
    tensors: impl IntoIterator<Item = (&'a str, &'a QTensor)>,
    extra: &BTreeMap<String, String>,
) -> Result<()> {
    write_atomic(path, &to_bytes(tensors, extra)?)
}

/// Everything a lowbit file holds: its quantized tensors and the other metadata.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Loaded {
    /// Quantized tensors by name.
    pub tensors: BTreeMap<String, QTensor>,
    /// Metadata that is not lowbit's own.
    pub extra: BTreeMap<String, String>,
}

fn bytes_of<'a>(st: &'a SafeTensors<'a>, name: &str, dtype: Dtype, shape: Option<&[usize]>) -> Result<&'a [u8]> {
    let view = st.tensor(name).map_err(|_| CoreError::Corrupt(format!("missing tensor {name}")))?;
    if view.dtype() != dtype {
        return Err(CoreError::Corrupt(format!("tensor {name} has dtype {:?}, expected {dtype:?}", view.dtype())));
    }
    if let Some(shape) = shape {
        if view.shape() != shape {
            return Err(CoreError::Corrupt(format!("tensor {name} has shape {:?}, expected {shape:?}", view.shape())));
        }
    }
    Ok(view.data())
}

/// A stored f16 or f32 tensor (scales, float zero points).
fn read_floats(st: &SafeTensors<'_>, name: &str, dtype: ScaleDtype) -> Result<Scales> {
    Ok(match dtype {
        ScaleDtype::F16 => Scales::F16(
            bytes_of(st, name, Dtype::F16, None)?
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]))
                .collect(),
        ),
        ScaleDtype::F32 => Scales::F32(read_f32(bytes_of(st, name, Dtype::F32, None)?)),
    })
}

fn read_f32(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn read_f16(bytes: &[u8]) -> Vec<half::f16> {
    bytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]])).collect()
}

fn read_u32(bytes: &[u8]) -> Vec<u32> {
    bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn read_stats(st: &SafeTensors<'_>, name: &str, bits: u32, group: usize) -> Result<QParams> {
    let one = |what: &str| -> Result<StatCodes> {
        Ok(StatCodes {
            codes: bytes_of(st, &format!("{name}.{what}_codes"), Dtype::U8, None)?.to_vec(),
            scale: read_f16(bytes_of(st, &format!("{name}.{what}_scales"), Dtype::F16, None)?),
            zero: read_f16(bytes_of(st, &format!("{name}.{what}_zeros"), Dtype::F16, None)?),
        })
    };
    Ok(QParams::IntStats(Box::new(QuantStats {
        bits: Bits::try_from(bits)?,
        group,
        scales: one("scale")?,
        zeros: one("zero")?,
    })))
}

fn read_outliers(st: &SafeTensors<'_>, name: &str, rows: usize, cols: usize, nnz: usize) -> Result<SparseOutliers> {
    let offsets = read_u32(bytes_of(st, &format!("{name}.outlier_offsets"), Dtype::U32, Some(&[rows + 1]))?);
    let columns_name = format!("{name}.outlier_columns");
    let columns = if SparseOutliers::narrow_columns(cols) {
        let b = bytes_of(st, &columns_name, Dtype::U16, Some(&[nnz]))?;
        ColumnIndex::U16(b.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect())
    } else {
        ColumnIndex::U32(read_u32(bytes_of(st, &columns_name, Dtype::U32, Some(&[nnz]))?))
    };
    let values = read_f16(bytes_of(st, &format!("{name}.outlier_values"), Dtype::F16, Some(&[nnz]))?);
    SparseOutliers::new(rows, cols, offsets, columns, values)
}

fn read_one(st: &SafeTensors<'_>, name: &str, meta: &TensorMeta) -> Result<QTensor> {
    let scheme = scheme_of(meta, name)?;
    let codes = bytes_of(st, &format!("{name}.qweight"), Dtype::U8, None)?.to_vec();
    let params = match (scheme, meta.stats_bits, meta.stats_group) {
        (Scheme::Int(_), Some(bits), Some(group)) => read_stats(st, name, bits, group)?,
        (_, None, None) => plain_params(st, name, meta, scheme)?,
        _ => {
            return Err(CoreError::Corrupt(format!(
                "tensor {name}: stats_bits and stats_group go together, on int tensors"
            )))
        }
    };
    let mut qt = QTensor::from_parts(meta.shape.clone(), scheme, codes, params)
        .map_err(|e| CoreError::Corrupt(format!("tensor {name}: {e}")))?;
    if let Some(nnz) = meta.outliers {
        let (rows, cols) = qt.matrix_dims();
        let o =
            read_outliers(st, name, rows, cols, nnz).map_err(|e| CoreError::Corrupt(format!("tensor {name}: {e}")))?;
        qt = qt.with_outliers(o)?;
    }
    // The scale arrays must also have the documented shape, not only the right length.
    bytes_of(st, &format!("{name}.qweight"), Dtype::U8, Some(&[qt.codes().len()]))?;
    Ok(qt)
}

fn plain_params(st: &SafeTensors<'_>, name: &str, meta: &TensorMeta, scheme: Scheme) -> Result<QParams> {
    let params = match scheme {
        Scheme::Int(s) => {
            let scales_name = format!("{name}.scales");
            let scales = read_floats(st, &scales_name, s.scale_dtype)?;
            let zeros = if s.symmetric {
                None
            } else {
                // The stored dtype says which: u8 codes, or f16/f32 float zero points.
                let zeros_name = format!("{name}.zeros");
                let view =
                    st.tensor(&zeros_name).map_err(|_| CoreError::Corrupt(format!("missing tensor {zeros_name}")))?;
                Some(match view.dtype() {
                    Dtype::F16 => ZeroPoints::Float(read_floats(st, &zeros_name, ScaleDtype::F16)?),
                    Dtype::F32 => ZeroPoints::Float(read_floats(st, &zeros_name, ScaleDtype::F32)?),
                    _ => ZeroPoints::Codes(bytes_of(st, &zeros_name, Dtype::U8, None)?.to_vec()),
                })
            };
            QParams::Int { scales, zeros }
        }
        Scheme::Codebook(s) => {
            let scales = read_f32(bytes_of(st, &format!("{name}.scales"), Dtype::F32, None)?);
            let absmax = if s.double_quant {
                let codes =
                    bytes_of(st, &format!("{name}.absmax_q"), Dtype::I8, None)?.iter().map(|&b| b as i8).collect();
                let offset =
                    meta.dq_offset.ok_or_else(|| CoreError::Corrupt(format!("tensor {name}: missing dq_offset")))?;
                Absmax::Double { codes, scales, offset }
            } else {
                Absmax::F32(scales)
            };
            QParams::Codebook { absmax }
        }
        Scheme::RowLut(s) => {
            // The table's shape is checked here: a codebook of the wrong size is a clear error.
            let rows = crate::rtn::matrix_dims(&meta.shape)?.0;
            let lut_name = format!("{name}.lut");
            QParams::RowLut { tables: read_f16(bytes_of(st, &lut_name, Dtype::F16, Some(&[rows, s.entries()]))?) }
        }
    };
    Ok(params)
}

/// Parses safetensors bytes written by [`to_bytes`].
pub fn from_bytes(bytes: &[u8]) -> Result<Loaded> {
    check_header_len(bytes)?;
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(|e| CoreError::Corrupt(e.to_string()))?;
    let st = SafeTensors::deserialize(bytes).map_err(|e| CoreError::Corrupt(e.to_string()))?;
    let metadata = header.metadata().clone().unwrap_or_default();
    match metadata.get(VERSION_KEY).map(String::as_str) {
        Some(FORMAT_VERSION) => {}
        Some(v) => {
            return Err(CoreError::Corrupt(format!(
                "unsupported lowbit format version {v:?} (this build reads {FORMAT_VERSION:?})"
            )))
        }
        None => {
            return Err(CoreError::Corrupt(format!("not a lowbit file: no `{VERSION_KEY}` in the header metadata")))
        }
    }
    let mut loaded = Loaded::default();
    for (key, value) in metadata {
        if key == VERSION_KEY {
            continue;
        }
        match key.strip_prefix(META_PREFIX) {
            Some(name) => {
                let meta: TensorMeta = serde_json::from_str(&value)
                    .map_err(|e| CoreError::Corrupt(format!("tensor {name}: bad metadata: {e}")))?;
                loaded.tensors.insert(name.to_string(), read_one(&st, name, &meta)?);
            }
            None => {
                loaded.extra.insert(key, value);
            }
        }
    }
    Ok(loaded)
}

/// Loads a file written by [`save`].
pub fn load(path: &Path) -> Result<Loaded> {
    let bytes = std::fs::read(path).map_err(|source| CoreError::Io { path: path.display().to_string(), source })?;
    from_bytes(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{codebook, rtn};

    fn samples() -> Vec<(String, QTensor)> {
        let w: Vec<f32> = (0..4 * 64).map(|i| ((i * 7919) % 113) as f32 / 17.0 - 3.0).collect();
        let mut out = vec![];
        for bits in [Bits::B2, Bits::B3, Bits::B4, Bits::B8] {
            for (symmetric, dtype) in [(false, ScaleDtype::F16), (true, ScaleDtype::F32)] {
                for granularity in [Granularity::PerTensor, Granularity::PerChannel, Granularity::Group(32)] {
                    let s = IntScheme { bits, symmetric, granularity, scale_dtype: dtype, clip: ClipSearch::MinMax };
                    out.push((
                        format!("int{}_{symmetric}_{granularity:?}", bits.get()),
                        rtn::quantize(&w, &[4, 64], s).unwrap(),
                    ));
                }
            }
        }
        for bits in [Bits::B3, Bits::B4] {
            out.push((format!("stats{}", bits.get()), stats_sample(&w, bits)));
        }
        for codebook in [Codebook::Nf4, Codebook::Fp4] {
            for double_quant in [false, true] {
                let s = CodebookScheme { codebook, block_size: 64, double_quant };
                out.push((format!("{codebook:?}_{double_quant}"), codebook::quantize(&w, &[4, 64], s).unwrap()));
            }
        }
        for dtype in [ScaleDtype::F16, ScaleDtype::F32] {
            out.push((format!("float_zeros_{dtype:?}"), float_zeros(&w, dtype)));
        }
        for bits in [Bits::B3, Bits::B4] {
            let q = crate::rowlut::quantize(&w, &[4, 64], RowLutScheme { bits }).unwrap();
            out.push((format!("rowlut{}", bits.get()), q.clone()));
            let o = SparseOutliers::from_entries(4, 64, &[(1, 2, 0.75), (2, 63, -2.5)]).unwrap();
            out.push((format!("rowlut{}_sparse", bits.get()), q.with_outliers(o).unwrap()));
        }
        out
    }

    #[test]
    fn row_codebooks_of_the_wrong_size_or_width_are_refused() {
        let w: Vec<f32> = (0..4 * 64).map(|i| (i as f32 * 0.37).sin()).collect();
        let q = crate::rowlut::quantize(&w, &[4, 64], RowLutScheme { bits: Bits::B4 }).unwrap();
        let QParams::RowLut { tables } = q.params().clone() else { unreachable!() };
        let short = QParams::RowLut { tables: tables[..63].to_vec() };
        let err = QTensor::from_parts(vec![4, 64], *q.scheme(), q.codes().to_vec(), short).unwrap_err();
        assert!(err.to_string().contains("row codebooks"), "{err}");
        let two = Scheme::RowLut(RowLutScheme { bits: Bits::B2 });
        assert!(QTensor::from_parts(vec![4, 64], two, vec![0; 64], QParams::RowLut { tables: vec![] }).is_err());
        // On load: a table of 8 entries per row where the metadata says 4 bits.
        let bytes = to_bytes([("t", &q)], &BTreeMap::new()).unwrap();
        let lut = bytemuck::cast_slice(&tables[..32]).to_vec();
        let mut raw: Vec<RawTensor> = vec![("t.qweight".into(), Dtype::U8, vec![128], q.codes().to_vec())];
        raw.push(("t.lut".into(), Dtype::F16, vec![4, 8], lut));
        from_bytes(&bytes).unwrap();
        let header = BTreeMap::from([
            (VERSION_KEY.to_string(), FORMAT_VERSION.to_string()),
            ("lowbit.t".to_string(), serde_json::to_string(&meta_of(&q)).unwrap()),
        ]);
        let err = from_bytes(&serialize(&raw, &header).unwrap()).unwrap_err();
        assert!(err.to_string().contains("t.lut has shape [4, 8], expected [4, 16]"), "{err}");
    }

    /// A SpQR-shaped tensor: codes of `w` at group 16, 3-bit statistics in groups of 2 rows,
    /// three outliers.
    fn stats_sample(w: &[f32], bits: Bits) -> QTensor {
        let (rows, cols, gpr) = (4, 64, 4);
        let rtn = rtn::quantize(w, &[rows, cols], IntScheme::group(bits, 16)).unwrap();
        let p = rtn.group_params().unwrap();
        // Stored order: g * rows + r.
        let scales: Vec<f32> = (0..rows * gpr).map(|i| p[(i % rows) * gpr + i / rows].scale).collect();
        let zeros: Vec<f32> = (0..rows * gpr).map(|i| f32::from(p[(i % rows) * gpr + i / rows].zero) + 0.25).collect();
        let stats = QuantStats::quantize(rows, gpr, Bits::B3, 2, &scales, &zeros).unwrap();
        let outliers = SparseOutliers::from_entries(rows, cols, &[(0, 5, 3.5), (3, 63, -1.25), (3, 0, 0.5)]).unwrap();
        QTensor::from_parts(vec![rows, cols], *rtn.scheme(), rtn.codes().to_vec(), QParams::IntStats(Box::new(stats)))
            .unwrap()
            .with_outliers(outliers)
            .unwrap()
    }

    /// An int4 g32 tensor whose zero points are floats (HQQ's), stored in `dtype`.
    fn float_zeros(w: &[f32], dtype: ScaleDtype) -> QTensor {
        let q = rtn::quantize(w, &[4, 64], IntScheme { scale_dtype: dtype, ..IntScheme::group(Bits::B4, 32) }).unwrap();
        let QParams::Int { scales, zeros: Some(z) } = q.params().clone() else { unreachable!() };
        let zeros =
            ZeroPoints::Float(Scales::from_f32((0..z.len()).map(|i| z.get(i) + 0.375 - i as f32 / 16.0), dtype));
        QTensor::from_parts(vec![4, 64], *q.scheme(), q.codes().to_vec(), QParams::Int { scales, zeros: Some(zeros) })
            .unwrap()
    }

    #[test]
    fn stats_and_outliers_dequantize_as_documented() {
        let w: Vec<f32> = (0..4 * 64).map(|i| ((i * 7919) % 113) as f32 / 17.0 - 3.0).collect();
        let q = stats_sample(&w, Bits::B4);
        let QParams::IntStats(st) = q.params() else { panic!() };
        let (mut s, mut z) = (vec![0f32; 16], vec![0f32; 16]);
        st.decode_rows(4, 4, 0, 4, &mut s, &mut z);
        let codes = crate::pack::unpack(q.codes(), Bits::B4, 256).unwrap();
        let d = q.dequantize();
        for r in 0..4 {
            let mut row = vec![0f32; 64];
            q.dequantize_row(r, &mut row).unwrap();
            assert_eq!(row, d[r * 64..(r + 1) * 64]);
            for c in 0..64 {
                let p = r * 4 + c / 16;
                let extra = match (r, c) {
                    (0, 5) => 3.5,
                    (3, 63) => -1.25,
                    (3, 0) => 0.5,
                    _ => 0.0,
                };
                assert_eq!(d[r * 64 + c], (f32::from(codes[r * 64 + c]) - z[p]) * s[p] + extra, "{r} {c}");
            }
        }
        assert_eq!(q.nbytes(), 128 + 2 * (6 + 2 * 2 * 8) + (5 * 4 + 3 * 2 + 3 * 2));
        assert!(q.group_params().is_none(), "plain group parameters do not describe it");
    }

    #[test]
    fn float_zero_points_dequantize_and_are_validated() {
        let w: Vec<f32> = (0..4 * 64).map(|i| (i as f32 * 0.37).sin()).collect();
        let q = float_zeros(&w, ScaleDtype::F32);
        let (QParams::Int { scales, zeros: Some(z) }, Some(codes)) =
            (q.params(), crate::pack::unpack(q.codes(), Bits::B4, 256).ok())
        else {
            unreachable!()
        };
        let want: Vec<f32> =
            codes.iter().enumerate().map(|(i, &c)| (f32::from(c) - z.get(i / 32)) * scales.get(i / 32)).collect();
        assert_eq!(q.dequantize(), want);
        assert_eq!(q.nbytes(), 128 + 8 * 4 + 8 * 4, "codes, f32 scales, f32 zeros");
        assert!(q.group_params().is_none(), "no integer group params for float zeros");
        let mut row = vec![0f32; 64];
        q.dequantize_row(2, &mut row).unwrap();
        assert_eq!(row, want[128..192]);
        for bad in [f32::NAN, f32::INFINITY] {
            let zeros = ZeroPoints::Float(Scales::F32(vec![bad; 8]));
            let params = QParams::Int { scales: scales.clone(), zeros: Some(zeros) };
            let err = QTensor::from_parts(vec![4, 64], *q.scheme(), q.codes().to_vec(), params).unwrap_err();
            assert!(err.to_string().contains("non-finite zero point"), "{err}");
        }
        let short = QParams::Int { scales: scales.clone(), zeros: Some(ZeroPoints::Float(Scales::F32(vec![1.0; 7]))) };
        assert!(QTensor::from_parts(vec![4, 64], *q.scheme(), q.codes().to_vec(), short).is_err());
    }

    #[test]
    fn round_trip_every_scheme() {
        let tensors = samples();
        let extra = BTreeMap::from([("note".to_string(), "hello".to_string())]);
        let bytes = to_bytes(tensors.iter().map(|(n, t)| (n.as_str(), t)), &extra).unwrap();
        let loaded = from_bytes(&bytes).unwrap();
        assert_eq!(loaded.extra, extra);
        assert_eq!(loaded.tensors.len(), tensors.len());
        for (name, t) in &tensors {
            assert_eq!(&loaded.tensors[name], t, "{name}");
        }
    }

    #[test]
    fn truncated_or_corrupted_bytes_are_errors() {
        let tensors = samples();
        let bytes = to_bytes(tensors.iter().map(|(n, t)| (n.as_str(), t)), &BTreeMap::new()).unwrap();
        for cut in [0, 7, 8, 100, bytes.len() / 2, bytes.len() - 1] {
            assert!(from_bytes(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut garbage = bytes.clone();
        garbage[9] ^= 0x55;
        assert!(from_bytes(&garbage).is_err());
    }

    /// Every tensor starts at a multiple of its element size, counted from the file start (the
    /// header is padded so the data area itself starts at a multiple of 8).
    #[test]
    fn tensors_are_aligned_to_their_element_size() {
        // Odd code lengths: 3-bit codes of 5x24 = 45 bytes, zeros and i8 absmax in between.
        let w: Vec<f32> = (0..5 * 24).map(|i| (i as f32 * 0.7).sin()).collect();
        let int3 = rtn::quantize(&w, &[5, 24], IntScheme::group(Bits::B3, 8)).unwrap();
        let int2 =
            rtn::quantize(&w, &[5, 24], IntScheme { scale_dtype: ScaleDtype::F32, ..IntScheme::group(Bits::B2, 24) })
                .unwrap();
        let s = CodebookScheme { codebook: Codebook::Nf4, block_size: 3, double_quant: true };
        let nf4 = codebook::quantize(&w, &[5, 24], s).unwrap();
        assert_eq!(int3.codes().len() % 2, 1, "the test needs an odd code length");
        let bytes = to_bytes([("a", &int3), ("b", &int2), ("c", &nf4)], &BTreeMap::new()).unwrap();
        let (header_len, meta) = SafeTensors::read_metadata(&bytes).unwrap();
        let data_start = 8 + header_len;
        assert_eq!(data_start % 8, 0);
        let st = SafeTensors::deserialize(&bytes).unwrap();
        let mut seen = 0;
        for (name, info) in meta.tensors() {
            let size = info.dtype.bitsize() / 8;
            assert_eq!(
                (data_start + info.data_offsets.0) % size,
                0,
                "{name} {:?} at {:?}",
                info.dtype,
                info.data_offsets
            );
            // The offset as seen through the parsed view agrees (no aliasing of the header).
            let view = st.tensor(&name).unwrap();
            assert_eq!((view.data().as_ptr() as usize - bytes.as_ptr() as usize) % size, 0, "{name}");
            seen += 1;
        }
        assert_eq!(seen, 9, "qweight+scales+zeros, qweight+scales, qweight+absmax_q+scales");
        assert_eq!(from_bytes(&bytes).unwrap().tensors.len(), 3);
    }

    #[test]
    fn atomic_save_and_load() {
        let dir = std::env::temp_dir().join(format!("lowbit-io-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.safetensors");
        let tensors = samples();
        save(&path, tensors.iter().map(|(n, t)| (n.as_str(), t)), &BTreeMap::new()).unwrap();
        assert_eq!(load(&path).unwrap().tensors.len(), tensors.len());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no temp files left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
