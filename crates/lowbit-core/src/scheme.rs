//! Quantization schemes: what a user asks for, validated once.

use crate::{CoreError, Result};
use serde::{Deserialize, Serialize};

/// Bit width of an integer code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "u32", into = "u32")]
pub enum Bits {
    /// 2-bit codes, 4 per byte.
    B2,
    /// 3-bit codes, 8 per 3 bytes.
    B3,
    /// 4-bit codes, 2 per byte.
    B4,
    /// 8-bit codes, 1 per byte.
    B8,
}

impl Bits {
    /// The number of bits.
    pub const fn get(self) -> u32 {
        match self {
            Bits::B2 => 2,
            Bits::B3 => 3,
            Bits::B4 => 4,
            Bits::B8 => 8,
        }
    }
    /// Largest code, `2^bits - 1`.
    pub const fn maxq(self) -> u8 {
        ((1u32 << self.get()) - 1) as u8
    }
    /// Implied zero point of symmetric schemes, `2^(bits-1)`.
    pub const fn symmetric_zero(self) -> u8 {
        1u8 << (self.get() - 1)
    }
}

impl TryFrom<u32> for Bits {
    type Error = CoreError;
    fn try_from(bits: u32) -> Result<Self> {
        match bits {
            2 => Ok(Bits::B2),
            3 => Ok(Bits::B3),
            4 => Ok(Bits::B4),
            8 => Ok(Bits::B8),
            _ => Err(CoreError::UnsupportedBits { bits }),
        }
    }
}

impl From<Bits> for u32 {
    fn from(b: Bits) -> u32 {
        b.get()
    }
}

/// Which elements share one scale (and zero point).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Granularity {
    /// One scale for the whole tensor.
    PerTensor,
    /// One scale per output row.
    PerChannel,
    /// One scale per `g` consecutive elements of a row. When `g` does not divide the row, the
    /// last group of each row is shorter (the GPTQ convention, needed for e.g. 576-wide layers
    /// at group 128); [`Granularity::require_dividing`] refuses that where it is unwanted.
    Group(usize),
}

impl Granularity {
    /// Scale groups in one row of `cols` elements (1 for per-tensor).
    pub fn groups_per_row(self, cols: usize) -> usize {
        match self {
            Granularity::PerTensor | Granularity::PerChannel => 1,
            Granularity::Group(g) => cols.div_ceil(g),
        }
    }

    /// Shape of the scales (and zeros) of a `[rows, cols]` matrix.
    pub fn scale_shape(self, rows: usize, cols: usize) -> Vec<usize> {
        match self {
            Granularity::PerTensor => vec![1],
            Granularity::PerChannel => vec![rows],
            Granularity::Group(g) => vec![rows, cols.div_ceil(g)],
        }
    }

    /// Index of the scale of flat element `i` in a matrix with rows of `cols` elements.
    #[inline]
    pub fn param_index(self, cols: usize, i: usize) -> usize {
        match self {
            Granularity::PerTensor => 0,
            Granularity::PerChannel => i / cols,
            Granularity::Group(g) => (i / cols) * cols.div_ceil(g) + (i % cols) / g,
        }
    }

    /// Refuses a group size that does not divide the row (no short final group).
    pub fn require_dividing(self, cols: usize) -> Result<()> {
        match self {
            Granularity::Group(g) if g > 0 && cols % g != 0 => Err(CoreError::GroupSize {
                group_size: g,
                cols,
                reason: "it must divide the row length (or allow a shorter final group, as GPTQ does)",
            }),
            _ => Ok(()),
        }
    }

    /// Checks the granularity against a row length and bit width.
    pub fn validate(self, cols: usize, bits: Bits) -> Result<()> {
        if let Granularity::Group(g) = self {
            let err = |reason| CoreError::GroupSize { group_size: g, cols, reason };
            if g == 0 {
                return Err(err("it must be at least 1"));
            }
            if bits == Bits::B3 && g % 8 != 0 && g < cols {
                return Err(err("3-bit groups must be a multiple of 8 so groups start on byte boundaries"));
            }
        }
        Ok(())
    }
}

/// Storage dtype of scales.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScaleDtype {
    /// IEEE half precision (default).
    #[default]
    F16,
    /// IEEE single precision.
    F32,
}

/// Scales rounded per stack buffer in [`ScaleDtype::round_slice`].
const ROUND_CHUNK: usize = 32;

impl ScaleDtype {
    /// Rounds a scale to what storage will hold.
    pub fn round(self, scale: f32) -> f32 {
        match self {
            ScaleDtype::F16 => half::f16::from_f32(scale).to_f32(),
            ScaleDtype::F32 => scale,
        }
    }
    /// [`ScaleDtype::round`] of each of `src` into `dst` (the same values; one vector conversion
    /// for f16 instead of one call per scale).
    pub fn round_slice(self, src: &[f32], dst: &mut [f32]) {
        match self {
            ScaleDtype::F16 => {
                use half::slice::HalfFloatSliceExt;
                let mut h = [half::f16::ZERO; ROUND_CHUNK];
                for (s, d) in src.chunks(ROUND_CHUNK).zip(dst.chunks_mut(ROUND_CHUNK)) {
                    let h = &mut h[..s.len()];
                    h.convert_from_f32_slice(s);
                    h.convert_to_f32_slice(d);
                }
            }
            ScaleDtype::F32 => dst.copy_from_slice(src),
        }
    }
    /// Bytes per stored scale.
    pub const fn size(self) -> usize {
        match self {
            ScaleDtype::F16 => 2,
            ScaleDtype::F32 => 4,
        }
    }
}

/// How RTN chooses a group's range.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum ClipSearch {
    /// The group's full min-max range.
    #[default]
    MinMax,
    /// Try the shrink factors `1 - i / grid` for `i < grid * max_shrink` of the range and keep the
    /// one with the least squared reconstruction error (the GPTQ reference's `mse` search).
    Mse {
        /// Grid resolution (100 in the GPTQ reference).
        grid: u32,
        /// Largest fraction of the range removed (0.8 in the GPTQ reference).
        max_shrink: f32,
    },
}

impl ClipSearch {
    /// The GPTQ reference's defaults: grid 100, shrink up to 0.8.
    pub const MSE_DEFAULT: ClipSearch = ClipSearch::Mse { grid: 100, max_shrink: 0.8 };

    /// The shrink factors to try, largest first.
    pub fn factors(self) -> Vec<f32> {
        (0..self.steps()).map(|i| self.factor(i)).collect()
    }

    /// Number of shrink factors (`factors().len()`, without allocating).
    pub fn steps(self) -> usize {
        match self {
            ClipSearch::MinMax => 1,
            ClipSearch::Mse { grid, max_shrink } => ((grid as f32 * max_shrink) as u32).max(1) as usize,
        }
    }

    /// The `i`-th shrink factor (`factors()[i]`).
    pub fn factor(self, i: usize) -> f32 {
        match self {
            ClipSearch::MinMax => 1.0,
            ClipSearch::Mse { grid, .. } => 1.0 - i as f32 / grid as f32,
        }
    }
}

/// An integer quantization scheme.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct IntScheme {
    /// Code width.
    pub bits: Bits,
    /// No stored zero point (implied `2^(bits-1)`).
    pub symmetric: bool,
    /// Which elements share a scale.
    pub granularity: Granularity,
    /// Storage of scales.
    pub scale_dtype: ScaleDtype,
    /// Range selection.
    pub clip: ClipSearch,
}

impl IntScheme {
    /// Symmetric `bits`-bit with one f16 scale per output channel, min-max ranges (INT8's usual
    /// form).
    pub fn per_channel_sym(bits: Bits) -> Self {
        IntScheme { symmetric: true, granularity: Granularity::PerChannel, ..IntScheme::group(bits, 1) }
    }

    /// Group-wise asymmetric `bits`-bit with f16 scales, min-max ranges.
    pub fn group(bits: Bits, group_size: usize) -> Self {
        IntScheme {
            bits,
            symmetric: false,
            granularity: Granularity::Group(group_size),
            scale_dtype: ScaleDtype::F16,
            clip: ClipSearch::MinMax,
        }
    }
}

/// The 4-bit codebooks of QLoRA.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Codebook {
    /// 4-bit NormalFloat.
    Nf4,
    /// 4-bit float, E2M1.
    Fp4,
}

/// A codebook scheme: block-wise absmax scaling of the flattened tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CodebookScheme {
    /// Which table.
    pub codebook: Codebook,
    /// Elements per absmax block (64 in QLoRA).
    pub block_size: usize,
    /// Quantize the absmax values to 8 bits in blocks of 256.
    pub double_quant: bool,
}

/// A per-output-channel codebook (SqueezeLLM's non-uniform quantization): each row has its own
/// table of `2^bits` f16 values, and a weight is stored as a 3- or 4-bit index into its row's
/// table (layout in [`crate::rowlut`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RowLutScheme {
    /// Code width: [`Bits::B3`] or [`Bits::B4`].
    pub bits: Bits,
}

impl RowLutScheme {
    /// The scheme for `bits`, refusing widths other than 3 and 4.
    pub fn new(bits: Bits) -> Result<Self> {
        match bits {
            Bits::B3 | Bits::B4 => Ok(RowLutScheme { bits }),
            b => Err(CoreError::shape("row codebook bits", "3 or 4", b.get())),
        }
    }
    /// Table entries per row, `2^bits`.
    pub const fn entries(self) -> usize {
        1 << self.bits.get()
    }
}

/// Any lowbit quantization scheme.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scheme {
    /// Integer codes with scales (and zero points).
    Int(IntScheme),
    /// NF4 / FP4 codebooks.
    Codebook(CodebookScheme),
    /// Per-row codebooks of `2^bits` f16 values (SqueezeLLM).
    RowLut(RowLutScheme),
}

impl Scheme {
    /// Bits per code.
    pub fn code_bits(&self) -> Bits {
        match self {
            Scheme::Int(s) => s.bits,
            Scheme::Codebook(_) => Bits::B4,
            Scheme::RowLut(s) => s.bits,
        }
    }
}
