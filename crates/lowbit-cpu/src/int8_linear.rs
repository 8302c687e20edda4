//! `Int8Linear`: a W8A8 weight matrix (8-bit symmetric per-channel codes, packed once into the
//! panel layout of [`crate::w8a8`]) and its product with activations quantized per token to int8.

use crate::llm_int8::{self, Counters, OutlierCounts};
use crate::scalar::{act_scale_i8, quantize_i8};
use crate::w8a8::{self, Panels, LINE, PANEL_ROWS, QUAD, W8A8_MAX_COLS};
use crate::{CpuError, KernelLevel, Result};
use lowbit_core::{Bits, Granularity, QParams, QTensor, Scheme};

/// A weight matrix `W[rows, cols]` of int8 codes with one f32 scale per row, for
/// `Y = X · Wᵀ` computed in integers (SmoothQuant's W8A8):
///
/// ```text
/// sx[t]    = max_c |x[t, c]| / 127            (1 for a row of zeros)
/// xq[t, c] = clamp(round_ties_even(x[t, c] / sx[t]), -127, 127)
/// y[t, r]  = (Σ_c xq[t, c] * wq[r, c]) as f32 * sx[t] * w_scale[r]      (i32 sum, exact)
/// ```
///
/// the same arithmetic as `lowbit_solvers::smoothquant::matmul_w8a8_ref`, so outputs agree with it
/// bit for bit, and every kernel level returns bit-identical outputs. Build it from a QTensor with
/// [`Int8Linear::from_qtensor`] (8-bit, symmetric, per-channel or per-tensor), from a [`crate::Linear`]
/// holding one with [`Int8Linear::from_linear`], or from raw codes with [`Int8Linear::from_i8`].
///
/// With an outlier threshold ([`Int8Linear::with_outlier_threshold`]) the product is LLM.int8()'s
/// mixed-precision decomposition (crate `llm_int8` module): the input columns holding any
/// `|x| >= t` in the batch go through an f32 product with the dequantized weight columns, the rest
/// through the int8 kernels, the per-token scales taken over the rest only.
#[derive(Clone, Debug)]
pub struct Int8Linear {
    rows: usize,
    cols: usize,
    /// Column quads per row.
    kq: usize,
    /// Panels of unsigned codes `w + 128` (layout in [`crate::w8a8`]).
    codes: Vec<u8>,
    /// Per-row scales, zero-padded to whole panels.
    scales: Vec<f32>,
    /// LLM.int8(): columns with any `|x| >= t` run in f32 (`None`: plain W8A8).
    threshold: Option<f32>,
    /// Outlier columns found by the decomposition.
    outliers: Counters,
}

impl Int8Linear {
    /// Packs an 8-bit symmetric QTensor of matrix shape `[rows, cols]` (per-channel: one scale per
    /// row; per-tensor: its one scale for every row). Its codes `u` stand for `w = u - 128`,
    /// `W ≈ w * scale` (lowbit-core's symmetric convention). Other schemes are
    /// [`CpuError::Unsupported`]; rows longer than [`W8A8_MAX_COLS`] a [`CpuError::Shape`].
    pub fn from_qtensor(q: &QTensor) -> Result<Self> {
        const OP: &str = "Int8Linear::from_qtensor";
        let unsupported = || CpuError::Unsupported {
            op: OP,
            what: format!("{:?} (W8A8 needs 8-bit symmetric per-channel or per-tensor integer weights)", q.scheme()),
        };
        let Scheme::Int(s) = q.scheme() else { return Err(unsupported()) };
        let granularity_ok = matches!(s.granularity, Granularity::PerChannel | Granularity::PerTensor);
        if s.bits != Bits::B8 || !s.symmetric || !granularity_ok {
            return Err(unsupported());
        }
        let QParams::Int { scales, .. } = q.params() else { return Err(unsupported()) };
        if q.outliers().is_some() {
            return Err(CpuError::Unsupported { op: OP, what: "a weight with sparse outliers".into() });
        }
        let (rows, cols) = q.matrix_dims();
        let scales: Vec<f32> = match s.granularity {
            Granularity::PerTensor => vec![scales.get(0); rows],
            _ => (0..rows).map(|r| scales.get(r)).collect(),
        };
        Self::pack(OP, rows, cols, q.codes(), scales)
    }

    /// Packs signed codes `codes[r * cols + c]` (`W ≈ codes * scales[r]`) with one finite scale
    /// per row.
    pub fn from_i8(rows: usize, cols: usize, codes: &[i8], scales: &[f32]) -> Result<Self> {
        const OP: &str = "Int8Linear::from_i8";
        if codes.len() != rows * cols {
            return Err(CpuError::shape(OP, format!("{} codes for [{rows}, {cols}]", rows * cols), codes.len()));
        }
        if scales.len() != rows {
            return Err(CpuError::shape(OP, format!("{rows} scales"), scales.len()));
        }
        if let Some(bad) = scales.iter().find(|s| !s.is_finite()) {
            return Err(CpuError::shape(OP, "finite scales", bad));
        }
        let unsigned: Vec<u8> = codes.iter().map(|&c| (c as u8) ^ 0x80).collect();
        Self::pack(OP, rows, cols, &unsigned, scales.to_vec())
    }

    /// Reorders row-major unsigned codes into panels (module docs of [`crate::w8a8`]).
    fn pack(op: &'static str, rows: usize, cols: usize, unsigned: &[u8], row_scales: Vec<f32>) -> Result<Self> {
        if rows == 0 || cols == 0 || cols > W8A8_MAX_COLS {
            return Err(CpuError::shape(
                op,
                format!("rows >= 1 and 1 <= cols <= {W8A8_MAX_COLS}"),
                format!("[{rows}, {cols}]"),
            ));
        }
        debug_assert_eq!(unsigned.len(), rows * cols);
        let kq = cols.div_ceil(QUAD);
        let panels = rows.div_ceil(PANEL_ROWS);
        let mut codes = vec![128u8; panels * kq * LINE];
        for (r, src) in unsigned.chunks_exact(cols).enumerate() {
            let panel = &mut codes[(r / PANEL_ROWS) * kq * LINE..][..kq * LINE];
            let i = r % PANEL_ROWS;
            for (q, quad) in src.chunks(QUAD).enumerate() {
                panel[q * LINE + i * QUAD..][..quad.len()].copy_from_slice(quad);
            }
        }
        let mut scales = row_scales;
        scales.resize(panels * PANEL_ROWS, 0.0);
        Ok(Int8Linear { rows, cols, kq, codes, scales, threshold: None, outliers: Counters::default() })
    }

    /// LLM.int8(): run products with the mixed-precision decomposition at threshold `t` (the
    /// paper's and bitsandbytes' 6.0); `t = +inf` is plain W8A8. NaN or `t <= 0` is an error.
    pub fn with_outlier_threshold(mut self, t: f32) -> Result<Self> {
        llm_int8::check_threshold("Int8Linear::with_outlier_threshold", t)?;
        self.threshold = t.is_finite().then_some(t);
        Ok(self)
    }

    /// The decomposition's threshold (`None`: plain W8A8).
    pub fn outlier_threshold(&self) -> Option<f32> {
        self.threshold
    }

    /// How many outlier columns the decomposition found since construction or the last
    /// [`Int8Linear::reset_outlier_counts`] (zero batches without a threshold).
    pub fn outlier_counts(&self) -> OutlierCounts {
        self.outliers.get(self.cols)
    }

    /// Sets the outlier counts back to zero.
    pub fn reset_outlier_counts(&self) {
        self.outliers.reset();
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// The per-row weight scales.
    pub fn scales(&self) -> &[f32] {
        &self.scales[..self.rows]
    }
    /// The signed code of `W[r, c]` (`W ≈ code * scales()[r]`).
    ///
    /// # Panics
    /// If `r >= rows` or `c >= cols`.
    pub fn code(&self, r: usize, c: usize) -> i8 {
        assert!(r < self.rows && c < self.cols, "Int8Linear::code({r}, {c}) of [{}, {}]", self.rows, self.cols);
        let u = self.codes[(r / PANEL_ROWS) * self.kq * LINE + (c / QUAD) * LINE + (r % PANEL_ROWS) * QUAD + c % QUAD];
        (u ^ 0x80) as i8
    }
    /// Column `c` of the weight as f32, `code(r, c) * scale[r]` for every row, into `out`
    /// (`rows` long): LLM.int8()'s outlier columns, read straight from the panels.
    pub(crate) fn column_f32(&self, c: usize, out: &mut [f32]) {
        let (q, j) = (c / QUAD, c % QUAD);
        for (r, (o, &s)) in out[..self.rows].iter_mut().zip(&self.scales).enumerate() {
            let u = self.codes[(r / PANEL_ROWS) * self.kq * LINE + q * LINE + (r % PANEL_ROWS) * QUAD + j];
            *o = f32::from((u ^ 0x80) as i8) * s;
        }
    }

    /// The weight as f32, `code * scale`, row-major.
    pub fn dequantize(&self) -> Vec<f32> {
        (0..self.rows)
            .flat_map(|r| (0..self.cols).map(move |c| (r, c)))
            .map(|(r, c)| f32::from(self.code(r, c)) * self.scales[r])
            .collect()
    }
    /// Bytes a forward pass reads: the packed codes (rows and columns padded to 16 and 4) and
    /// the f32 scales.
    pub fn nbytes(&self) -> usize {
        self.panels().nbytes()
    }

    pub(crate) fn panels(&self) -> Panels<'_> {
        Panels { codes: &self.codes, kq: self.kq, scales: &self.scales, rows: self.rows, cols: self.cols }
    }

    fn check_shapes(&self, x: &[f32], m: usize, out: &[f32]) -> Result<()> {
        if x.len() != m * self.cols {
            return Err(CpuError::shape("Int8Linear::forward input", m * self.cols, x.len()));
        }
        if out.len() != m * self.rows {
            return Err(CpuError::shape("Int8Linear::forward output", m * self.rows, out.len()));
        }
        Ok(())
    }

    /// `out[m, rows] = x[m, cols] · Wᵀ` in W8A8 with the kernels of [`crate::kernel_level`].
    /// A NaN or infinite activation is [`CpuError::NonFiniteActivation`].
    pub fn forward(&self, x: &[f32], m: usize, out: &mut [f32]) -> Result<()> {
        self.forward_with(crate::kernel_level(), x, m, out)
    }

    /// [`Int8Linear::forward`] with the kernels of `level` (for tests and benchmarks); a level
    /// this CPU lacks is an error. `avx512` uses `vpdpbusd` (AVX512-VNNI) and falls back to the
    /// AVX2 integer kernels on AVX-512 CPUs without VNNI.
    pub fn forward_with(&self, level: KernelLevel, x: &[f32], m: usize, out: &mut [f32]) -> Result<()> {
        self.check_shapes(x, m, out)?;
        if m == 0 {
            return Ok(());
        }
        let Some(t) = self.threshold else { return self.forward_int8(level, x, m, out) };
        let outliers = llm_int8::outlier_columns(x, self.cols, t)?;
        self.outliers.add(outliers.len());
        if outliers.is_empty() {
            return self.forward_int8(level, x, m, out);
        }
        self.forward_int8(level, &llm_int8::zero_columns(x, self.cols, &outliers), m, out)?;
        llm_int8::add_correction(self, x, m, &outliers, out);
        Ok(())
    }

    /// The int8 x int8 product of all of `x` at `level` (shapes checked, `m > 0`).
    fn forward_int8(&self, level: KernelLevel, x: &[f32], m: usize, out: &mut [f32]) -> Result<()> {
        match level {
            KernelLevel::Scalar => w8a8::forward(crate::isa::Portable, &self.panels(), x, m, out),
            #[cfg(target_arch = "x86_64")]
            KernelLevel::Avx2 => match crate::x86::w8a8_avx2::Avx2I8::new() {
                Some(isa) => w8a8::forward(isa, &self.panels(), x, m, out),
                None => Err(CpuError::KernelLevel(level.name().into())),
            },
            #[cfg(target_arch = "x86_64")]
            KernelLevel::Avx512 => {
                if crate::x86::avx512::Avx512::new().is_none() {
                    return Err(CpuError::KernelLevel(level.name().into()));
                }
                match (crate::x86::w8a8_avx512::Vnni512::new(), crate::x86::w8a8_avx2::Avx2I8::new()) {
                    (Some(isa), _) => w8a8::forward(isa, &self.panels(), x, m, out),
                    (None, Some(isa)) => w8a8::forward(isa, &self.panels(), x, m, out),
                    (None, None) => Err(CpuError::KernelLevel(level.name().into())),
                }
            }
            // W8A8 has no wasm kernels yet: the portable ones, bit-identical by definition.
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            KernelLevel::Simd128 => w8a8::forward(crate::isa::Portable, &self.panels(), x, m, out),
            #[cfg(not(target_arch = "x86_64"))]
            _ => Err(CpuError::KernelLevel(level.name().into())),
        }
    }

    /// The scalar reference, the definition every kernel is tested against (module docs of
    /// [`Int8Linear`]): per token, [`act_scale_i8`] and [`quantize_i8`], then for each output an
    /// i32 sum over the codes and `acc as f32 * sx * w_scale`. With a threshold `t`: the outlier
    /// columns `O` (any `|x[., c]| >= t` in the batch) are left out of the scale and of the
    /// integer sum, and `Σ_{c in O, ascending} x[t, c] * (code(r, c) as f32 * w_scale[r])`, summed
    /// from 0, is added to the result. Slow; single-threaded.
    pub fn forward_scalar(&self, x: &[f32], m: usize, out: &mut [f32]) -> Result<()> {
        self.check_shapes(x, m, out)?;
        let (rows, cols) = (self.rows, self.cols);
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(w8a8::non_finite(x, cols, i / cols));
        }
        let outlier: Vec<bool> =
            (0..cols).map(|c| self.threshold.is_some_and(|t| (0..m).any(|tok| x[tok * cols + c].abs() >= t))).collect();
        let any_outlier = outlier.contains(&true);
        let mut xq = vec![0i8; cols];
        for t in 0..m {
            let xt = &x[t * cols..(t + 1) * cols];
            let rest: Vec<f32> = xt.iter().zip(&outlier).filter(|(_, &o)| !o).map(|(&v, _)| v).collect();
            let sx = act_scale_i8(&rest).ok_or_else(|| w8a8::non_finite(x, cols, t))?;
            for ((q, &v), &o) in xq.iter_mut().zip(xt).zip(&outlier) {
                *q = if o { 0 } else { quantize_i8(v, sx) };
            }
            for r in 0..rows {
                let acc: i32 = xq.iter().enumerate().map(|(c, &q)| i32::from(q) * i32::from(self.code(r, c))).sum();
                let mut cor = 0f32;
                for c in (0..cols).filter(|&c| outlier[c]) {
                    cor += xt[c] * (f32::from(self.code(r, c)) * self.scales[r]);
                }
                let y = acc as f32 * sx * self.scales[r];
                out[t * rows + r] = if any_outlier { y + cor } else { y };
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_round_trips_codes() {
        let (rows, cols) = (19, 7);
        let codes: Vec<i8> = (0..rows * cols).map(|i| (i as i32 * 37 % 256 - 128) as i8).collect();
        let scales: Vec<f32> = (0..rows).map(|r| r as f32 + 0.5).collect();
        let lin = Int8Linear::from_i8(rows, cols, &codes, &scales).unwrap();
        for r in 0..rows {
            for c in 0..cols {
                assert_eq!(lin.code(r, c), codes[r * cols + c]);
            }
        }
        assert_eq!(lin.scales(), &scales[..]);
        // two panels of 2 quads, 64 bytes each
        assert_eq!(lin.nbytes(), 2 * 2 * 64 + 4 * rows);
    }
}
