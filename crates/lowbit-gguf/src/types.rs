//! ggml tensor types and the registry that maps each to its name, block geometry, dequantizer
//! and reference quantizer. Adding a block format means a file in `blocks/`, a variant here and
//! a row in [`REGISTRY`].

use crate::blocks::{self, GgmlBlock, WeightedBlock};
use crate::{GgufError, Result};
use half::{bf16, f16};

/// A ggml tensor type lowbit reads and writes. The discriminant is ggml's type id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum GgmlType {
    /// f32.
    F32 = 0,
    /// f16.
    F16 = 1,
    /// 4-bit symmetric, blocks of 32.
    Q4_0 = 2,
    /// 4-bit with minimum, blocks of 32.
    Q4_1 = 3,
    /// 5-bit symmetric, blocks of 32.
    Q5_0 = 6,
    /// 5-bit with minimum, blocks of 32.
    Q5_1 = 7,
    /// 8-bit symmetric, blocks of 32.
    Q8_0 = 8,
    /// 2-bit k-quant, super-blocks of 256.
    Q2K = 10,
    /// 3-bit k-quant, super-blocks of 256.
    Q3K = 11,
    /// 4-bit k-quant, super-blocks of 256.
    Q4K = 12,
    /// 5-bit k-quant, super-blocks of 256.
    Q5K = 13,
    /// 6-bit k-quant, super-blocks of 256.
    Q6K = 14,
    /// 8-bit k-quant with block sums (ggml's activation format), super-blocks of 256.
    Q8K = 15,
    /// bf16.
    Bf16 = 30,
}

/// Dequantizes whole blocks (lengths checked by the caller).
pub type DequantizeFn = fn(src: &[u8], out: &mut [f32]);
/// Quantizes whole blocks (lengths checked by the caller).
pub type QuantizeFn = fn(src: &[f32], out: &mut [u8]);

/// Quantizes rows of `qw.len()` weights with one importance per column (lengths checked by the
/// caller).
pub type QuantizeWeightedFn = fn(src: &[f32], qw: &[f32], out: &mut [u8]);

/// One registry row: how a type is laid out and converted.
#[derive(Clone, Copy, Debug)]
pub struct TypeTraits {
    /// The type.
    pub ty: GgmlType,
    /// ggml's name (`GGMLQuantizationType` member in gguf-py).
    pub name: &'static str,
    /// Elements per block (1 for the float types).
    pub block_len: usize,
    /// Bytes per block.
    pub block_bytes: usize,
    /// Dequantizes whole blocks; `src.len() / block_bytes == out.len() / block_len` (checked by
    /// [`dequantize`]).
    pub dequantize: DequantizeFn,
    /// llama.cpp's reference quantizer (`quantize_row_*_ref`) over whole blocks.
    pub quantize: Option<QuantizeFn>,
    /// llama.cpp's importance-weighted quantizer (`quantize_row_*_impl` with `quant_weights`),
    /// for the types whose quantizer uses an importance matrix.
    pub quantize_weighted: Option<QuantizeWeightedFn>,
}

const fn block_row<B: GgmlBlock>(name: &'static str) -> TypeTraits {
    TypeTraits {
        ty: B::TYPE,
        name,
        block_len: B::LEN,
        block_bytes: std::mem::size_of::<B>(),
        dequantize: blocks::dequantize_blocks::<B>,
        quantize: Some(blocks::quantize_blocks::<B>),
        quantize_weighted: None,
    }
}

const fn weighted_row<B: WeightedBlock>(name: &'static str) -> TypeTraits {
    TypeTraits { quantize_weighted: Some(blocks::quantize_rows_weighted::<B>), ..block_row::<B>(name) }
}

fn le_f32(b: &[u8]) -> f32 {
    f32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn dequantize_f32(src: &[u8], out: &mut [f32]) {
    src.chunks_exact(4).zip(out).for_each(|(b, y)| *y = le_f32(b));
}
fn quantize_f32(src: &[f32], out: &mut [u8]) {
    src.iter().zip(out.chunks_exact_mut(4)).for_each(|(x, b)| b.copy_from_slice(&x.to_le_bytes()));
}
fn dequantize_f16(src: &[u8], out: &mut [f32]) {
    src.chunks_exact(2).zip(out).for_each(|(b, y)| *y = f16::from_le_bytes([b[0], b[1]]).to_f32());
}
/// Round to nearest even, as ggml's `GGML_FP32_TO_FP16` and numpy's `astype(float16)`.
fn quantize_f16(src: &[f32], out: &mut [u8]) {
    src.iter().zip(out.chunks_exact_mut(2)).for_each(|(x, b)| b.copy_from_slice(&f16::from_f32(*x).to_le_bytes()));
}
fn dequantize_bf16(src: &[u8], out: &mut [f32]) {
    src.chunks_exact(2).zip(out).for_each(|(b, y)| *y = bf16::from_le_bytes([b[0], b[1]]).to_f32());
}
/// Round to nearest even, as ggml's `ggml_compute_fp32_to_bf16`.
fn quantize_bf16(src: &[f32], out: &mut [u8]) {
    src.iter().zip(out.chunks_exact_mut(2)).for_each(|(x, b)| b.copy_from_slice(&bf16::from_f32(*x).to_le_bytes()));
}

/// Every type lowbit reads and writes.
pub const REGISTRY: &[TypeTraits] = &[
    TypeTraits {
        ty: GgmlType::F32,
        name: "F32",
        block_len: 1,
        block_bytes: 4,
        dequantize: dequantize_f32,
        quantize: Some(quantize_f32),
        quantize_weighted: None,
    },
    TypeTraits {
        ty: GgmlType::F16,
        name: "F16",
        block_len: 1,
        block_bytes: 2,
        dequantize: dequantize_f16,
        quantize: Some(quantize_f16),
        quantize_weighted: None,
    },
    TypeTraits {
        ty: GgmlType::Bf16,
        name: "BF16",
        block_len: 1,
        block_bytes: 2,
        dequantize: dequantize_bf16,
        quantize: Some(quantize_bf16),
        quantize_weighted: None,
    },
    weighted_row::<blocks::BlockQ4_0>("Q4_0"),
    weighted_row::<blocks::BlockQ4_1>("Q4_1"),
    weighted_row::<blocks::BlockQ5_0>("Q5_0"),
    weighted_row::<blocks::BlockQ5_1>("Q5_1"),
    block_row::<blocks::BlockQ8_0>("Q8_0"),
    weighted_row::<blocks::BlockQ2K>("Q2_K"),
    weighted_row::<blocks::BlockQ3K>("Q3_K"),
    weighted_row::<blocks::BlockQ4K>("Q4_K"),
    weighted_row::<blocks::BlockQ5K>("Q5_K"),
    weighted_row::<blocks::BlockQ6K>("Q6_K"),
    block_row::<blocks::BlockQ8K>("Q8_K"),
];

impl GgmlType {
    /// The type for ggml's numeric id, if lowbit reads it.
    pub fn from_id(id: u32) -> Option<Self> {
        REGISTRY.iter().find(|t| t.ty as u32 == id).map(|t| t.ty)
    }
    /// The type for ggml's name (`"Q4_K"`), if lowbit reads it.
    pub fn from_name(name: &str) -> Option<Self> {
        REGISTRY.iter().find(|t| t.name == name).map(|t| t.ty)
    }
    /// ggml's numeric id.
    pub fn id(self) -> u32 {
        self as u32
    }
    /// The registry row.
    pub fn traits(self) -> &'static TypeTraits {
        // Every variant has a row (checked by a test), so the fallback is never taken.
        REGISTRY.iter().find(|t| t.ty == self).unwrap_or(&REGISTRY[0])
    }
    /// ggml's name.
    pub fn name(self) -> &'static str {
        self.traits().name
    }
    /// Weights per block.
    pub fn block_len(self) -> usize {
        self.traits().block_len
    }
    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        self.traits().block_bytes
    }
    /// Bytes holding `n` weights, or `None` when `n` is not a whole number of blocks (or the
    /// byte count overflows).
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        let t = self.traits();
        (n % t.block_len == 0).then(|| n / t.block_len).and_then(|b| b.checked_mul(t.block_bytes))
    }
    fn blocks_checked(self, n: usize) -> Result<usize> {
        self.bytes_for(n).ok_or(GgufError::NotWholeBlocks { ty: self, n, block_len: self.block_len() })
    }
}

/// Dequantizes `out.len()` weights of type `ty` from `src`, which must hold exactly
/// `ty.bytes_for(out.len())` bytes.
pub fn dequantize(ty: GgmlType, src: &[u8], out: &mut [f32]) -> Result<()> {
    let nbytes = ty.blocks_checked(out.len())?;
    if src.len() != nbytes {
        return Err(GgufError::Length { op: "dequantize", unit: "bytes", expected: nbytes, got: src.len() });
    }
    (ty.traits().dequantize)(src, out);
    Ok(())
}

/// Quantizes `src` to type `ty` with llama.cpp's reference quantizer (`quantize_row_*_ref`, what
/// `llama-quantize` uses without an importance matrix). `src.len()` must be whole blocks.
pub fn quantize(ty: GgmlType, src: &[f32]) -> Result<Vec<u8>> {
    let nbytes = ty.blocks_checked(src.len())?;
    let q = ty.traits().quantize.ok_or(GgufError::NoQuantizer { ty })?;
    let mut out = vec![0u8; nbytes];
    q(src, &mut out);
    Ok(out)
}

/// Quantizes rows of `imatrix.len()` weights with llama.cpp's importance-weighted quantizer
/// (`ggml_quantize_chunk` given `imatrix`, as `llama-quantize --imatrix` runs it): `imatrix`
/// holds one importance per column, the mean x^2 of the layer's input. A row must be whole
/// blocks and `src` whole rows. The float types, Q8_0 (whose llama.cpp quantizer ignores an
/// importance matrix) and Q8_K are refused with [`GgufError::NoWeightedQuantizer`].
pub fn quantize_weighted(ty: GgmlType, src: &[f32], imatrix: &[f32]) -> Result<Vec<u8>> {
    let q = ty.traits().quantize_weighted.ok_or(GgufError::NoWeightedQuantizer { ty })?;
    let row_bytes = ty.blocks_checked(imatrix.len())?;
    if imatrix.is_empty() || src.len() % imatrix.len() != 0 {
        return Err(GgufError::Length {
            op: "quantize_weighted",
            unit: "weights (whole rows of the importance matrix's length)",
            expected: src.len().div_ceil(imatrix.len().max(1)) * imatrix.len(),
            got: src.len(),
        });
    }
    let mut out = vec![0u8; src.len() / imatrix.len() * row_bytes];
    q(src, imatrix, &mut out);
    Ok(out)
}

/// [`dequantize`] into a new vector of `n` weights.
pub fn dequantize_to_vec(ty: GgmlType, src: &[u8], n: usize) -> Result<Vec<f32>> {
    // Check before allocating: `n` may come from an untrusted header.
    let nbytes = ty.blocks_checked(n)?;
    if src.len() != nbytes {
        return Err(GgufError::Length { op: "dequantize", unit: "bytes", expected: nbytes, got: src.len() });
    }
    let mut out = vec![0f32; n];
    dequantize(ty, src, &mut out)?;
    Ok(out)
}
