//! QLoRA's 4-bit codebooks, NF4 and FP4, with block-wise absmax scaling and double quantization
//! (Dettmers et al. 2023, "QLoRA", section 3 and appendix E).
//!
//! Each block of `block_size` consecutive elements of the flattened tensor has one absmax `c`;
//! an element is stored as the index of the table entry nearest to `w / c` and read back as
//! `table[q] * c`. Codes are packed as 4-bit codes (`docs/format.md`).

use crate::pack::{pack_into, packed_len};
use crate::par::{self, for_each_chunk};
use crate::{check_finite, Bits, Codebook, CodebookScheme, CoreError, Element, QParams, QTensor, Result, Scheme};

/// NF4: the 16 quantiles of N(0, 1) normalised to [-1, 1], as published with QLoRA (bitsandbytes).
// The digits are the published ones (f32 values printed in full); the compiler rounds them.
#[allow(clippy::excessive_precision)]
pub const NF4: [f32; 16] = [
    -1.0,
    -0.696_192_800_998_687_7,
    -0.525_073_051_452_636_7,
    -0.394_917_488_098_144_53,
    -0.284_441_381_692_886_35,
    -0.184_773_430_228_233_34,
    -0.091_050_036_251_544_95,
    0.0,
    0.079_580_299_556_255_34,
    0.160_930_201_411_247_25,
    0.246_112_301_945_686_34,
    0.337_915_241_718_292_24,
    0.440_709_829_330_444_34,
    0.562_617_003_917_694_1,
    0.722_956_836_223_602_3,
    1.0,
];

/// FP4 (OCP E2M1) normalised by its largest magnitude 6: bit 3 is the sign, bits 0..2 index
/// the magnitudes `{0, 0.5, 1, 1.5, 2, 3, 4, 6} / 6`.
pub const FP4: [f32; 16] = [
    0.0,
    0.5 / 6.0,
    1.0 / 6.0,
    1.5 / 6.0,
    2.0 / 6.0,
    3.0 / 6.0,
    4.0 / 6.0,
    1.0,
    -0.0,
    -0.5 / 6.0,
    -1.0 / 6.0,
    -1.5 / 6.0,
    -2.0 / 6.0,
    -3.0 / 6.0,
    -4.0 / 6.0,
    -1.0,
];

/// Blocks of absmax values that share one second-level scale under double quantization.
pub const DOUBLE_QUANT_BLOCK: usize = 256;

impl Codebook {
    /// The 16 values.
    pub fn table(self) -> &'static [f32; 16] {
        match self {
            Codebook::Nf4 => &NF4,
            Codebook::Fp4 => &FP4,
        }
    }

    /// Index of the entry nearest to `x` (ties to the lower index).
    pub fn nearest(self, x: f32) -> u8 {
        let table = self.table();
        let mut best = 0;
        for (i, &t) in table.iter().enumerate() {
            if (x - t).abs() < (x - table[best]).abs() {
                best = i;
            }
        }
        best as u8
    }
}

/// The absmax scales of a codebook tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum Absmax {
    /// One f32 per block.
    F32(Vec<f32>),
    /// Double quantization: `absmax[i] ~ codes[i] * scales[i / 256] + offset`.
    Double {
        /// int8 codes, one per block.
        codes: Vec<i8>,
        /// f32 second-level scales, one per 256 blocks.
        scales: Vec<f32>,
        /// The mean absmax, subtracted before quantizing.
        offset: f32,
    },
}

impl Absmax {
    /// Double-quantizes `absmax` values.
    pub fn double_quantize(absmax: &[f32]) -> Absmax {
        let offset = (absmax.iter().map(|&a| f64::from(a)).sum::<f64>() / absmax.len().max(1) as f64) as f32;
        let mut codes = Vec::with_capacity(absmax.len());
        let mut scales = Vec::with_capacity(absmax.len().div_ceil(DOUBLE_QUANT_BLOCK));
        for block in absmax.chunks(DOUBLE_QUANT_BLOCK) {
            let m = block.iter().fold(0.0f32, |m, &a| m.max((a - offset).abs()));
            let s = if m == 0.0 { 1.0 } else { m / 127.0 };
            scales.push(s);
            codes.extend(block.iter().map(|&a| ((a - offset) / s).round_ties_even().clamp(-127.0, 127.0) as i8));
        }
        Absmax::Double { codes, scales, offset }
    }

    /// Absmax of block `i`.
    #[inline]
    pub fn get(&self, i: usize) -> f32 {
        match self {
            Absmax::F32(v) => v[i],
            Absmax::Double { codes, scales, offset } => f32::from(codes[i]) * scales[i / DOUBLE_QUANT_BLOCK] + offset,
        }
    }

    /// Bytes of storage (offset included).
    pub fn nbytes(&self) -> usize {
        match self {
            Absmax::F32(v) => 4 * v.len(),
            Absmax::Double { codes, scales, .. } => codes.len() + 4 * scales.len() + 4,
        }
    }

    pub(crate) fn validate(&self, blocks: usize, double_quant: bool) -> Result<()> {
        let (len, ok_kind) = match self {
            Absmax::F32(v) => (v.len(), !double_quant),
            Absmax::Double { codes, scales, offset } => {
                if scales.len() != codes.len().div_ceil(DOUBLE_QUANT_BLOCK) || !offset.is_finite() {
                    return Err(CoreError::Corrupt("double-quantized absmax sizes disagree".into()));
                }
                (codes.len(), double_quant)
            }
        };
        if !ok_kind {
            return Err(CoreError::shape(
                "absmax",
                if double_quant { "double-quantized" } else { "f32" },
                "the other kind",
            ));
        }
        if len != blocks {
            return Err(CoreError::shape("absmax blocks", blocks, len));
        }
        // Like integer scales: a non-finite absmax would dequantize to NaN or infinity.
        let finite = match self {
            Absmax::F32(v) => v.iter().all(|x| x.is_finite()),
            Absmax::Double { scales, .. } => scales.iter().all(|x| x.is_finite()),
        };
        if !finite {
            return Err(CoreError::Corrupt("non-finite absmax".into()));
        }
        Ok(())
    }
}

/// Quantizes `weights` of `shape` to a codebook scheme.
pub fn quantize<T: Element>(weights: &[T], shape: &[usize], scheme: CodebookScheme) -> Result<QTensor> {
    let numel: usize = shape.iter().product();
    if shape.is_empty() || numel == 0 {
        return Err(CoreError::Empty { shape: shape.to_vec() });
    }
    if weights.len() != numel {
        return Err(CoreError::shape("quantize", format!("{numel} elements for shape {shape:?}"), weights.len()));
    }
    if scheme.block_size == 0 {
        return Err(CoreError::BlockSize(0));
    }
    check_finite(weights)?;
    let bs = scheme.block_size;
    let absmax: Vec<f32> = weights.chunks(bs).map(|b| b.iter().fold(0.0f32, |m, w| m.max(w.to_f32().abs()))).collect();
    let absmax = if scheme.double_quant { Absmax::double_quantize(&absmax) } else { Absmax::F32(absmax) };
    let mut codes = vec![0u8; packed_len(numel, Bits::B4)];
    // Chunks of an even number of blocks keep every chunk byte-aligned in the 4-bit stream.
    let elems_per_chunk = bs * if bs % 2 == 0 { 1 } else { 2 };
    let book = scheme.codebook;
    for_each_chunk(&mut codes, elems_per_chunk / 2, par::pays(numel), |k, out| {
        let start = k * elems_per_chunk;
        let end = (start + elems_per_chunk).min(numel);
        let q: Vec<u8> = (start..end)
            .map(|i| {
                let c = absmax.get(i / bs);
                book.nearest(if c == 0.0 { 0.0 } else { weights[i].to_f32() / c })
            })
            .collect();
        pack_into(&q, Bits::B4, out);
    });
    QTensor::from_parts(shape.to_vec(), Scheme::Codebook(scheme), codes, QParams::Codebook { absmax })
}

pub(crate) fn dequantize_into(scheme: &CodebookScheme, codes: &[u8], absmax: &Absmax, out: &mut [f32]) {
    let table = scheme.codebook.table();
    let bs = scheme.block_size;
    for (i, o) in out.iter_mut().enumerate() {
        let q = (codes[i / 2] >> (4 * (i % 2))) & 0xF;
        *o = table[q as usize] * absmax.get(i / bs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nf4_matches_the_published_table() {
        // bitsandbytes `functional.py` get_4bit_type("nf4"), as printed with float32 precision.
        let published = [
            -1.0,
            -0.6961928009986877,
            -0.5250730514526367,
            -0.39491748809814453,
            -0.28444138169288635,
            -0.18477343022823334,
            -0.09105003625154495,
            0.0,
            0.07958029955625534,
            0.16093020141124725,
            0.24611230194568634,
            0.33791524171829224,
            0.44070982933044434,
            0.5626170039176941,
            0.7229568362236023,
            1.0,
        ];
        for (a, b) in NF4.iter().zip(published) {
            assert_eq!(*a, b as f32);
        }
    }

    #[test]
    fn fp4_is_e2m1() {
        let magnitudes = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0];
        for (i, m) in magnitudes.iter().enumerate() {
            assert_eq!(FP4[i] * 6.0, *m);
            assert_eq!(FP4[i + 8] * 6.0, -*m);
        }
    }

    #[test]
    fn nearest_code_reconstructs_table_entries() {
        for book in [Codebook::Nf4, Codebook::Fp4] {
            let w: Vec<f32> = book.table().iter().map(|v| v * 3.0).collect();
            let qt =
                quantize(&w, &[16], CodebookScheme { codebook: book, block_size: 16, double_quant: false }).unwrap();
            assert_eq!(qt.dequantize(), w);
        }
    }

    #[test]
    fn double_quant_reconstructs_absmax_within_half_a_step() {
        let absmax: Vec<f32> = (0..1000).map(|i| 0.01 + (i as f32 * 0.37).sin().abs()).collect();
        let Absmax::Double { scales, .. } = Absmax::double_quantize(&absmax) else { unreachable!() };
        let dq = Absmax::double_quantize(&absmax);
        for (i, &a) in absmax.iter().enumerate() {
            assert!((dq.get(i) - a).abs() <= scales[i / DOUBLE_QUANT_BLOCK] / 2.0 + 1e-6);
        }
        assert_eq!(dq.nbytes(), 1000 + 4 * 4 + 4);
    }

    #[test]
    fn odd_block_sizes_and_tails() {
        let w: Vec<f32> = (0..101).map(|i| (i as f32 * 0.7).cos()).collect();
        for bs in [1, 3, 7, 64] {
            let qt =
                quantize(&w, &[101], CodebookScheme { codebook: Codebook::Nf4, block_size: bs, double_quant: false })
                    .unwrap();
            let dq = qt.dequantize();
            for (i, (&a, &b)) in w.iter().zip(&dq).enumerate() {
                let c = w[i / bs * bs..((i / bs + 1) * bs).min(101)].iter().fold(0f32, |m, x| m.max(x.abs()));
                // the widest NF4 gap is 1 - 0.7230; half of it bounds the error
                assert!((a - b).abs() <= c * (1.0 - 0.722_956_85) / 2.0 + 1e-6);
            }
        }
    }
}
