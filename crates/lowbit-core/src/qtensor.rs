//! `QTensor`: a quantized tensor (shape, scheme, packed codes, scales, zeros).

use crate::codebook::{self, Absmax};
use crate::pack::{packed_len, unpack_into};
use crate::par::{self, for_each_chunk};
use crate::rtn::{decode_row, decode_row_with, matrix_dims, Affine, GroupParams};
use crate::sparse::SparseOutliers;
use crate::stats::QuantStats;
use crate::{CoreError, Granularity, Result, ScaleDtype, Scheme};
use half::f16;

/// Scales in their storage dtype.
#[derive(Clone, Debug, PartialEq)]
pub enum Scales {
    /// Half precision.
    F16(Vec<f16>),
    /// Single precision.
    F32(Vec<f32>),
}

impl Scales {
    /// Converts f32 scales to `dtype` storage.
    pub fn from_f32(values: impl Iterator<Item = f32>, dtype: ScaleDtype) -> Self {
        match dtype {
            ScaleDtype::F16 => Scales::F16(values.map(f16::from_f32).collect()),
            ScaleDtype::F32 => Scales::F32(values.collect()),
        }
    }
    /// Scale `i` as f32.
    #[inline]
    pub fn get(&self, i: usize) -> f32 {
        match self {
            Scales::F16(v) => v[i].to_f32(),
            Scales::F32(v) => v[i],
        }
    }
    /// Number of scales.
    pub fn len(&self) -> usize {
        match self {
            Scales::F16(v) => v.len(),
            Scales::F32(v) => v.len(),
        }
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Storage dtype.
    pub fn dtype(&self) -> ScaleDtype {
        match self {
            Scales::F16(_) => ScaleDtype::F16,
            Scales::F32(_) => ScaleDtype::F32,
        }
    }
    /// Bytes of storage.
    pub fn nbytes(&self) -> usize {
        self.len() * self.dtype().size()
    }
}

/// Zero points of an asymmetric integer tensor, in code units: `w = (q - zero) * scale`.
#[derive(Clone, Debug, PartialEq)]
pub enum ZeroPoints {
    /// Integer codes in `0..=maxq` (what RTN, GPTQ and AWQ produce, and what GPTQ/AWQ files hold).
    Codes(Vec<u8>),
    /// Floats in f16 or f32 (HQQ's optimized zeros; also second-level-quantized statistics once
    /// decoded). Kernels that need integer zeros (the int8-activation path) decline these.
    Float(Scales),
}

impl ZeroPoints {
    /// Zero point `i` as f32.
    #[inline]
    pub fn get(&self, i: usize) -> f32 {
        match self {
            ZeroPoints::Codes(z) => f32::from(z[i]),
            ZeroPoints::Float(z) => z.get(i),
        }
    }
    /// Number of zero points.
    pub fn len(&self) -> usize {
        match self {
            ZeroPoints::Codes(z) => z.len(),
            ZeroPoints::Float(z) => z.len(),
        }
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The integer codes, or `None` for float zero points.
    pub fn codes(&self) -> Option<&[u8]> {
        match self {
            ZeroPoints::Codes(z) => Some(z),
            ZeroPoints::Float(_) => None,
        }
    }
    /// Bytes of storage.
    pub fn nbytes(&self) -> usize {
        match self {
            ZeroPoints::Codes(z) => z.len(),
            ZeroPoints::Float(z) => z.nbytes(),
        }
    }
}

/// The per-group parameters of a `QTensor`.
#[derive(Clone, Debug, PartialEq)]
pub enum QParams {
    /// Integer schemes.
    Int {
        /// One scale per group.
        scales: Scales,
        /// One zero point per group (asymmetric only).
        zeros: Option<ZeroPoints>,
    },
    /// Integer schemes whose scales and (float) zeros are themselves quantized (SpQR's
    /// second-level statistics, [`crate::stats`]); asymmetric, groups or per channel.
    IntStats(Box<QuantStats>),
    /// Codebook schemes.
    Codebook {
        /// One absmax per block.
        absmax: Absmax,
    },
    /// Per-row codebooks ([`crate::rowlut`]).
    RowLut {
        /// `rows * 2^bits` f16 values, row-major: row r's table at `r * 2^bits`.
        tables: Vec<f16>,
    },
}

/// A quantized tensor. Construct it with [`crate::rtn::quantize`], [`crate::codebook::quantize`],
/// [`QTensor::from_parts`] (validated) or load it with [`crate::io`].
#[derive(Clone, Debug, PartialEq)]
pub struct QTensor {
    shape: Vec<usize>,
    scheme: Scheme,
    codes: Vec<u8>,
    params: QParams,
    /// Weights kept exactly beside the codes, added to the dequantized matrix.
    outliers: Option<Box<SparseOutliers>>,
}

impl QTensor {
    /// Most dimensions a tensor's shape may have (weights have 2; 8 leaves room for any layout).
    /// Checked by [`QTensor::from_parts`] and the quantizers, so a shape read from an untrusted
    /// file is bounded before anything is sized from it.
    pub const MAX_DIMS: usize = 8;
    /// Most elements one tensor may hold: 2^40 (about 1.1e12, thousands of times any weight
    /// matrix). Every count derived from a checked shape (elements, code bits, bytes) then fits
    /// in a `u64` without overflow.
    pub const MAX_ELEMENTS: u64 = 1 << 40;

    pub(crate) fn from_parts_unchecked(shape: Vec<usize>, scheme: Scheme, codes: Vec<u8>, params: QParams) -> Self {
        QTensor { shape, scheme, codes, params, outliers: None }
    }

    /// Builds a tensor from its parts, checking that every size agrees with the scheme.
    pub fn from_parts(shape: Vec<usize>, scheme: Scheme, codes: Vec<u8>, params: QParams) -> Result<Self> {
        let (rows, cols) = matrix_dims(&shape)?;
        let numel = rows * cols;
        let bits = scheme.code_bits();
        // `numel * bits` can exceed a 32-bit usize even under MAX_ELEMENTS.
        if numel.checked_mul(bits.get() as usize).is_none() {
            return Err(CoreError::shape("QTensor shape", "a size this platform can address", format!("{shape:?}")));
        }
        let want = packed_len(numel, bits);
        if codes.len() != want {
            return Err(CoreError::shape("QTensor codes", format!("{want} bytes"), codes.len()));
        }
        match (&scheme, &params) {
            (Scheme::Int(s), QParams::Int { scales, zeros }) => {
                s.granularity.validate(cols, s.bits)?;
                let groups = group_count(s.granularity, rows, cols);
                if scales.len() != groups {
                    return Err(CoreError::shape("QTensor scales", groups, scales.len()));
                }
                if scales.dtype() != s.scale_dtype {
                    return Err(CoreError::shape(
                        "QTensor scales dtype",
                        format!("{:?}", s.scale_dtype),
                        format!("{:?}", scales.dtype()),
                    ));
                }
                match (s.symmetric, zeros) {
                    (true, None) => {}
                    (false, Some(ZeroPoints::Codes(z))) if z.len() == groups => {
                        if let Some(bad) = z.iter().find(|&&z| z > s.bits.maxq()) {
                            return Err(CoreError::shape("QTensor zeros", format!("<= {}", s.bits.maxq()), bad));
                        }
                    }
                    (false, Some(ZeroPoints::Float(z))) if z.len() == groups => {
                        if (0..z.len()).any(|i| !z.get(i).is_finite()) {
                            return Err(CoreError::Corrupt("non-finite zero point".into()));
                        }
                    }
                    (sym, z) => {
                        let want = if sym { "none (symmetric)".to_string() } else { groups.to_string() };
                        return Err(CoreError::shape(
                            "QTensor zeros",
                            want,
                            z.as_ref().map_or("none".into(), |z| z.len().to_string()),
                        ));
                    }
                }
                if (0..scales.len()).any(|i| !scales.get(i).is_finite()) {
                    return Err(CoreError::Corrupt("non-finite scale".into()));
                }
            }
            (Scheme::Int(s), QParams::IntStats(stats)) => {
                s.granularity.validate(cols, s.bits)?;
                if s.symmetric || s.granularity == Granularity::PerTensor {
                    return Err(CoreError::shape(
                        "QTensor with quantized statistics",
                        "an asymmetric group-wise or per-channel scheme",
                        format!("{:?}", s.granularity),
                    ));
                }
                stats.validate(rows, s.granularity.groups_per_row(cols))?;
            }
            (Scheme::Codebook(s), QParams::Codebook { absmax }) => {
                if s.block_size == 0 {
                    return Err(CoreError::BlockSize(0));
                }
                absmax.validate(numel.div_ceil(s.block_size), s.double_quant)?;
            }
            (Scheme::RowLut(s), QParams::RowLut { tables }) => {
                crate::RowLutScheme::new(s.bits)?;
                if tables.len() != rows * s.entries() {
                    return Err(CoreError::shape(
                        "QTensor row codebooks",
                        format!("{rows} rows x {} entries = {} values", s.entries(), rows * s.entries()),
                        tables.len(),
                    ));
                }
                if let Some(i) = tables.iter().position(|t| !t.is_finite()) {
                    return Err(CoreError::Corrupt(format!("non-finite row codebook value at {i}")));
                }
            }
            _ => return Err(CoreError::shape("QTensor params", "params matching the scheme", "the other kind")),
        }
        Ok(QTensor { shape, scheme, codes, params, outliers: None })
    }

    /// Adds sparse outliers (their shape must be the tensor's matrix shape); the tensor's value
    /// becomes the dequantized codes plus the outliers.
    pub fn with_outliers(mut self, outliers: SparseOutliers) -> Result<Self> {
        let (rows, cols) = self.matrix_dims();
        if (outliers.rows(), outliers.cols()) != (rows, cols) {
            return Err(CoreError::shape(
                "QTensor outliers",
                format!("[{rows}, {cols}]"),
                format!("[{}, {}]", outliers.rows(), outliers.cols()),
            ));
        }
        self.outliers = Some(Box::new(outliers));
        Ok(self)
    }

    /// The sparse outliers added to the dequantized codes, if any.
    pub fn outliers(&self) -> Option<&SparseOutliers> {
        self.outliers.as_deref()
    }

    /// Logical shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// The scheme.
    pub fn scheme(&self) -> &Scheme {
        &self.scheme
    }
    /// Packed codes (see `docs/format.md`).
    pub fn codes(&self) -> &[u8] {
        &self.codes
    }
    /// Scales, zeros or absmax values.
    pub fn params(&self) -> &QParams {
        &self.params
    }
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// `(rows, cols)` of the matrix view (last dimension = columns).
    pub fn matrix_dims(&self) -> (usize, usize) {
        matrix_dims(&self.shape).expect("validated at construction")
    }
    /// Shape of the scales (and zeros) array.
    pub fn scale_shape(&self) -> Vec<usize> {
        let (rows, cols) = self.matrix_dims();
        match &self.scheme {
            Scheme::Int(s) => s.granularity.scale_shape(rows, cols),
            Scheme::Codebook(s) => vec![self.numel().div_ceil(s.block_size)],
            Scheme::RowLut(s) => vec![rows, s.entries()],
        }
    }
    /// Bytes of storage: codes plus scales, zeros, absmax values, quantized statistics, row
    /// codebooks and outliers (offsets, indices and values).
    pub fn nbytes(&self) -> usize {
        self.codes.len()
            + match &self.params {
                QParams::Int { scales, zeros } => scales.nbytes() + zeros.as_ref().map_or(0, ZeroPoints::nbytes),
                QParams::IntStats(stats) => stats.nbytes(),
                QParams::Codebook { absmax } => absmax.nbytes(),
                QParams::RowLut { tables } => 2 * tables.len(),
            }
            + self.outliers.as_ref().map_or(0, |o| o.nbytes())
    }
    /// Storage bits per weight, everything included.
    pub fn bits_per_weight(&self) -> f64 {
        self.nbytes() as f64 * 8.0 / self.numel() as f64
    }
    /// Group parameters of an integer tensor with integer zero points (scale, zero), row-major;
    /// `None` for codebooks, float zero points, quantized statistics and tensors with outliers
    /// (which plain group parameters do not describe: exporters that read them refuse such
    /// tensors).
    pub fn group_params(&self) -> Option<Vec<GroupParams>> {
        if self.outliers.is_some() {
            return None;
        }
        self.int_group_params()
    }

    fn int_group_params(&self) -> Option<Vec<GroupParams>> {
        let (Scheme::Int(s), QParams::Int { scales, zeros }) = (&self.scheme, &self.params) else {
            return None;
        };
        let codes = match zeros {
            Some(z) => Some(z.codes()?),
            None => None,
        };
        Some(
            (0..scales.len())
                .map(|i| GroupParams { scale: scales.get(i), zero: codes.map_or(s.bits.symmetric_zero(), |z| z[i]) })
                .collect(),
        )
    }

    /// `(scale, zero)` of group `i` of an integer tensor as f32, whatever the zeros' storage.
    #[inline]
    fn affine(scheme: &crate::IntScheme, scales: &Scales, zeros: Option<&ZeroPoints>, i: usize) -> Affine {
        Affine { scale: scales.get(i), zero: zeros.map_or(f32::from(scheme.bits.symmetric_zero()), |z| z.get(i)) }
    }

    /// Dequantizes to a new f32 buffer.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0.0; self.numel()];
        self.dequantize_into(&mut out).expect("buffer sized from the tensor");
        out
    }

    /// Dequantizes row `r` of the `[rows, cols]` matrix into `out` (`cols` values): an embedding
    /// lookup. Integer tensors whose rows start on byte boundaries (every width when `cols` is a
    /// multiple of 8) decode that row alone; other tensors (codebooks, odd packings) are
    /// dequantized whole first, the cost of one [`QTensor::dequantize`].
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) -> Result<()> {
        let (rows, cols) = self.matrix_dims();
        if out.len() != cols {
            return Err(CoreError::shape("dequantize_row", cols, out.len()));
        }
        if r >= rows {
            return Err(CoreError::shape("dequantize_row (row index)", rows, r));
        }
        if let (Scheme::Int(s), QParams::Int { scales, zeros }) = (&self.scheme, &self.params) {
            let bits = s.bits;
            if (cols * bits.get() as usize) % 8 == 0 {
                let row_bytes = cols * bits.get() as usize / 8;
                let mut q = vec![0u8; cols];
                unpack_into(&self.codes[r * row_bytes..(r + 1) * row_bytes], bits, &mut q);
                let param = |p: usize| Self::affine(s, scales, zeros.as_ref(), p);
                decode_row_with(&q, r, s.granularity, param, out);
                if let Some(o) = &self.outliers {
                    o.add_to_rows(r, out);
                }
                return Ok(());
            }
        }
        out.copy_from_slice(&self.dequantize()[r * cols..(r + 1) * cols]);
        Ok(())
    }

    /// Dequantizes into `out`, which must hold `numel` elements.
    pub fn dequantize_into(&self, out: &mut [f32]) -> Result<()> {
        let numel = self.numel();
        if out.len() != numel {
            return Err(CoreError::shape("dequantize_into", numel, out.len()));
        }
        match (&self.scheme, &self.params) {
            (Scheme::Int(s), QParams::Int { scales, zeros }) => {
                let params: Vec<Affine> =
                    (0..scales.len()).map(|i| Self::affine(s, scales, zeros.as_ref(), i)).collect();
                let (rows, cols) = self.matrix_dims();
                let bits = s.bits;
                if (cols * bits.get() as usize) % 8 == 0 {
                    let row_bytes = cols * bits.get() as usize / 8;
                    let codes = &self.codes;
                    for_each_chunk(out, cols, par::pays(numel), |r, row| {
                        let mut q = vec![0u8; cols];
                        unpack_into(&codes[r * row_bytes..], bits, &mut q);
                        decode_row(&q, r, s.granularity, &params, row);
                    });
                } else {
                    let mut q = vec![0u8; numel];
                    unpack_into(&self.codes, bits, &mut q);
                    for r in 0..rows {
                        let span = r * cols..(r + 1) * cols;
                        decode_row(&q[span.clone()], r, s.granularity, &params, &mut out[span]);
                    }
                }
            }
            (Scheme::Int(s), QParams::IntStats(stats)) => {
                let (rows, cols) = self.matrix_dims();
                let gpr = s.granularity.groups_per_row(cols);
                let mut q = vec![0u8; numel];
                unpack_into(&self.codes, s.bits, &mut q);
                let (mut scales, mut zeros) = (vec![0f32; rows * gpr], vec![0f32; rows * gpr]);
                stats.decode_rows(rows, gpr, 0, rows, &mut scales, &mut zeros);
                let g = match s.granularity {
                    Granularity::Group(g) => g,
                    Granularity::PerChannel | Granularity::PerTensor => cols,
                };
                for (i, (o, &c)) in out.iter_mut().zip(&q).enumerate() {
                    let p = (i / cols) * gpr + (i % cols) / g;
                    *o = (f32::from(c) - zeros[p]) * scales[p];
                }
            }
            (Scheme::Codebook(s), QParams::Codebook { absmax }) => {
                codebook::dequantize_into(s, &self.codes, absmax, out);
            }
            (Scheme::RowLut(s), QParams::RowLut { tables }) => {
                crate::rowlut::dequantize_into(*s, &self.codes, tables, self.matrix_dims().1, out);
            }
            _ => unreachable!("from_parts pairs schemes with their params"),
        }
        if let Some(o) = &self.outliers {
            o.add_to_rows(0, out);
        }
        Ok(())
    }
}

fn group_count(granularity: Granularity, rows: usize, cols: usize) -> usize {
    granularity.scale_shape(rows, cols).iter().product()
}

#[cfg(test)]
mod row_tests {
    use crate::{codebook, rtn, Bits, Codebook, CodebookScheme, Granularity, IntScheme};

    #[test]
    fn dequantize_row_equals_the_row_of_dequantize() {
        // 3-bit rows of 20 codes end mid-byte: the whole-tensor fallback; the rest decode one row.
        let (rows, cols) = (5, 40);
        let w: Vec<f32> = (0..rows * cols).map(|i| ((i * 37 % 101) as f32 - 50.0) / 17.0).collect();
        let asym3 = IntScheme { symmetric: false, ..IntScheme::group(Bits::B3, 20) };
        let tensors = [
            rtn::quantize(&w, &[rows, cols], IntScheme::group(Bits::B4, 8)).unwrap(),
            rtn::quantize(&w, &[rows, cols], IntScheme { granularity: Granularity::PerChannel, ..asym3 }).unwrap(),
            rtn::quantize(&w[..rows * 20], &[rows, 20], asym3).unwrap(),
            codebook::quantize(
                &w,
                &[rows, cols],
                CodebookScheme { codebook: Codebook::Nf4, block_size: 8, double_quant: false },
            )
            .unwrap(),
        ];
        for q in tensors {
            let (n, c) = q.matrix_dims();
            let all = q.dequantize();
            let mut row = vec![0f32; c];
            for r in 0..n {
                q.dequantize_row(r, &mut row).unwrap();
                assert_eq!(row, all[r * c..(r + 1) * c], "{:?} row {r}", q.scheme());
            }
            assert!(q.dequantize_row(n, &mut row).is_err());
        }
    }
}
