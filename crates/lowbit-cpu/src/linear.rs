//! `Linear`: a weight matrix in kernel-ready layout and its product with activations.

use crate::int8_linear::Int8Linear;
use crate::llm_int8::OutlierCounts;
use crate::q8::{self, Activations, PackedInt, Q8Level};
use crate::weight::{Weight, WeightKind};
use crate::{driver, scalar, CpuError, KernelLevel, Result};
use std::sync::OnceLock;

impl WeightKind {
    /// The weights as f32, row-major: a copy, widened from f16/bf16 or dequantized.
    pub fn to_f32(&self) -> Vec<f32> {
        match self {
            WeightKind::F32(v) => v.clone(),
            WeightKind::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
            WeightKind::Bf16(v) => v.iter().map(|x| x.to_f32()).collect(),
            WeightKind::Quant(q) => q.dequantize(),
        }
    }
}

/// A weight matrix `W[rows, cols]` ready for `Y = X · Wᵀ`.
///
/// The weight is kept exactly as given ([`Linear::weight`] returns it); the f32-activation kernels
/// read the packed codes, scales and zeros in place. Derived data: for NF4/FP4, the per-block
/// absmax decoded to f32 once (double quantization is undone at construction, 4 bytes per block);
/// for 4- and 8-bit integer weights, on the first product with int8 activations
/// ([`Activations`]), a copy repacked in 16-row panels for those kernels (crate `q8` module).
#[derive(Clone, Debug)]
pub struct Linear {
    weight: Weight,
    /// W8A8 mode ([`Linear::enable_int8_activations`]): the weight packed for int8 x int8 products.
    int8: Option<Box<Int8Linear>>,
    /// The weight repacked for int8 activations (`None` inside: a format those kernels lack).
    q8: OnceLock<Option<Box<PackedInt>>>,
}

impl Linear {
    /// Wraps a dense or quantized weight of shape `[rows, cols]`.
    pub fn new(rows: usize, cols: usize, weight: WeightKind) -> Result<Self> {
        Ok(Linear { weight: Weight::new(rows, cols, weight)?, int8: None, q8: OnceLock::new() })
    }

    /// The weight repacked for the int8-activation kernels (built on first use), if its format
    /// has them: 4- or 8-bit integer codes, rows a multiple of 32 long, groups a multiple of 32,
    /// per channel or per tensor.
    fn packed_q8(&self) -> Option<&PackedInt> {
        self.q8.get_or_init(|| PackedInt::from_weight(&self.weight).map(Box::new)).as_deref()
    }

    /// Switches to W8A8 (SmoothQuant): activations are quantized per token to int8 and multiplied
    /// with the int8 weight codes in integers ([`Int8Linear`]). The weight must be an 8-bit
    /// symmetric per-channel QTensor; [`Linear::weight`] still returns it.
    pub fn enable_int8_activations(&mut self) -> Result<()> {
        self.int8 = Some(Box::new(Int8Linear::from_linear(self)?));
        Ok(())
    }

    /// LLM.int8() (Dettmers et al. 2022): W8A8 as [`Linear::enable_int8_activations`] with the
    /// mixed-precision decomposition at threshold `t` (6.0 in the paper): per batch, the input
    /// columns holding any `|x| >= t` are multiplied in f32 with the dequantized weight columns,
    /// the rest in int8 ([`Int8Linear::with_outlier_threshold`]). `t = +inf` is plain W8A8.
    pub fn enable_int8_decomposition(&mut self, t: f32) -> Result<()> {
        self.int8 = Some(Box::new(Int8Linear::from_linear(self)?.with_outlier_threshold(t)?));
        Ok(())
    }

    /// Whether [`Linear::forward`] quantizes activations to int8 (W8A8).
    pub fn int8_activations(&self) -> bool {
        self.int8.is_some()
    }

    /// The LLM.int8() outlier threshold, if the product runs the decomposition.
    pub fn outlier_threshold(&self) -> Option<f32> {
        self.int8.as_ref().and_then(|w| w.outlier_threshold())
    }

    /// The outlier columns the decomposition found (see [`Int8Linear::outlier_counts`]); `None`
    /// without the decomposition.
    pub fn outlier_counts(&self) -> Option<OutlierCounts> {
        self.int8.as_ref().filter(|w| w.outlier_threshold().is_some()).map(|w| w.outlier_counts())
    }

    /// Sets the outlier counts back to zero.
    pub fn reset_outlier_counts(&self) {
        if let Some(w) = &self.int8 {
            w.reset_outlier_counts();
        }
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.weight.rows()
    }
    /// Input features.
    pub fn cols(&self) -> usize {
        self.weight.cols()
    }
    /// The stored weight.
    pub fn weight(&self) -> &WeightKind {
        self.weight.kind()
    }
    /// Bytes of weight storage a forward pass reads: codes, scales and zeros as stored; for
    /// NF4/FP4 the f32 absmax the kernels read (4 bytes per block, also with double quantization).
    pub fn nbytes(&self) -> usize {
        match &self.int8 {
            Some(w) => w.nbytes(),
            None => self.weight.nbytes(),
        }
    }

    /// `out[m, rows] = x[m, cols] · Wᵀ` with the kernels of [`crate::kernel_level`].
    pub fn forward(&self, x: &[f32], m: usize, out: &mut [f32]) -> Result<()> {
        self.forward_with(crate::kernel_level(), x, m, out)
    }

    /// `out[m, rows] = x[m, cols] · Wᵀ` with the kernels of `level` (for tests and benchmarks);
    /// a level this CPU lacks is an error. Activations as [`crate::activations`] says.
    pub fn forward_with(&self, level: KernelLevel, x: &[f32], m: usize, out: &mut [f32]) -> Result<()> {
        self.forward_activations(level, crate::activations(), x, m, out)
    }

    /// [`Linear::forward_with`] with the activation mode `acts`: with int8 activations (where
    /// the weight's format has kernels for them), `x` is quantized in blocks of 32 and the
    /// products summed in integers (crate `q8` module); a NaN or infinite activation takes the
    /// f32 path.
    pub fn forward_activations(
        &self,
        level: KernelLevel,
        acts: Activations,
        x: &[f32],
        m: usize,
        out: &mut [f32],
    ) -> Result<()> {
        if acts.int8_for(level) && self.int8.is_none() && m > 0 {
            if let Some(p) = self.packed_q8() {
                self.check(x, m, out)?;
                crate::dispatch::Level::new(level)?;
                if q8::forward_many(Q8Level::of(level), &[p], x, m, &mut [&mut *out]) {
                    return Ok(());
                }
            }
        }
        self.forward_f32(level, x, m, out)
    }

    /// Products of several weights with one input (q/k/v, gate/up), `outs[i] = x · W_iᵀ`, at
    /// `level` with activation mode `acts`: with int8 activations, `x` is quantized once and all
    /// run as one parallel job; otherwise one after another.
    pub fn forward_many(
        level: KernelLevel,
        acts: Activations,
        linears: &[&Linear],
        x: &[f32],
        m: usize,
        outs: &mut [&mut [f32]],
    ) -> Result<()> {
        if linears.len() != outs.len() {
            return Err(CpuError::shape("Linear::forward_many outputs", linears.len(), outs.len()));
        }
        for (l, o) in linears.iter().zip(outs.iter()) {
            l.check(x, m, o)?;
        }
        crate::dispatch::Level::new(level)?;
        if m > 0 && acts.int8_for(level) {
            let packed: Option<Vec<&PackedInt>> =
                linears.iter().map(|l| if l.int8.is_none() { l.packed_q8() } else { None }).collect();
            if let Some(ps) = packed.filter(|ps| !ps.is_empty()) {
                if q8::forward_many(Q8Level::of(level), &ps, x, m, outs) {
                    return Ok(());
                }
            }
        }
        for (l, o) in linears.iter().zip(outs.iter_mut()) {
            l.forward_f32(level, x, m, o)?;
        }
        Ok(())
    }

    fn check(&self, x: &[f32], m: usize, out: &[f32]) -> Result<()> {
        if x.len() != m * self.cols() {
            return Err(CpuError::shape("Linear::forward input", m * self.cols(), x.len()));
        }
        if out.len() != m * self.rows() {
            return Err(CpuError::shape("Linear::forward output", m * self.rows(), out.len()));
        }
        Ok(())
    }

    fn forward_f32(&self, level: KernelLevel, x: &[f32], m: usize, out: &mut [f32]) -> Result<()> {
        self.check(x, m, out)?;
        if m == 0 {
            return Ok(());
        }
        if let Some(w) = &self.int8 {
            return w.forward_with(level, x, m, out);
        }
        match level {
            KernelLevel::Scalar => driver::forward(crate::isa::Portable, &self.weight, x, m, out),
            #[cfg(target_arch = "x86_64")]
            KernelLevel::Avx2 => match crate::x86::avx2::Avx2::new() {
                Some(isa) => driver::forward(isa, &self.weight, x, m, out),
                None => return Err(CpuError::KernelLevel(level.name().into())),
            },
            #[cfg(target_arch = "x86_64")]
            KernelLevel::Avx512 => match crate::x86::avx512::Avx512::new() {
                // Groups too short for AVX-512's chunk but whole AVX2 chunks (4-bit groups of
                // 16, SpQR's): AVX2's fast kernels beat AVX-512's generic path (about 4x).
                Some(_) if driver::fast_only_at_avx2(&self.weight) => match crate::x86::avx2::Avx2::new() {
                    Some(isa) => driver::forward(isa, &self.weight, x, m, out),
                    None => return Err(CpuError::KernelLevel(level.name().into())),
                },
                Some(isa) => driver::forward(isa, &self.weight, x, m, out),
                None => return Err(CpuError::KernelLevel(level.name().into())),
            },
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            KernelLevel::Simd128 => match crate::wasm::simd128::Simd128::new() {
                Some(isa) => driver::forward(isa, &self.weight, x, m, out),
                None => return Err(CpuError::KernelLevel(level.name().into())),
            },
            #[cfg(not(target_arch = "x86_64"))]
            _ => return Err(CpuError::KernelLevel(level.name().into())),
        }
        Ok(())
    }

    /// The definition of the product with int8 activations (crate `q8` module docs), on the
    /// weight as stored: `x` quantized in blocks of 32, exact integer block sums, then the
    /// fused multiply-adds in order. Every level's int8 kernels return these outputs bit for bit.
    /// Slow. An error for weights without int8-activation kernels and for non-finite `x`.
    pub fn forward_int8_reference(&self, x: &[f32], m: usize, out: &mut [f32]) -> Result<()> {
        self.check(x, m, out)?;
        let unsupported = || CpuError::Unsupported {
            op: "Linear::forward_int8_reference",
            what: "a weight without int8-activation kernels (4/8-bit integer, rows and groups multiples of 32)".into(),
        };
        let (WeightKind::Quant(q), Some(_)) = (self.weight(), self.packed_q8()) else { return Err(unsupported()) };
        let cols = self.cols();
        let nb = cols / q8::QK;
        let (mut codes, mut scales, mut sums) = (vec![0i8; m * cols], vec![0f32; m * nb], vec![0i32; m * nb]);
        for (i, (xb, cb)) in x.chunks_exact(q8::QK).zip(codes.chunks_exact_mut(q8::QK)).enumerate() {
            let Some(v) = q8::quantize_block_ref(xb, cb) else {
                let j = xb.iter().position(|v| !v.is_finite()).unwrap_or(0);
                return Err(CpuError::NonFiniteActivation {
                    op: "Linear::forward_int8_reference",
                    index: i * q8::QK + j,
                    value: xb[j],
                });
            };
            (scales[i], sums[i]) = v;
        }
        q8::gemv_reference(q, &q8::Acts { codes: &codes, scales: &scales, sums: &sums, cols }, out);
        Ok(())
    }

    /// The scalar reference product, the definition every kernel is tested against: the weight
    /// dequantized by lowbit-core (`w = (q - zero) * scale`, `table[q] * absmax`), then for each
    /// output a left-to-right f32 sum of `x * w`. Slow, and it allocates the whole f32 matrix.
    ///
    /// # Panics
    /// If `x` or `out` do not hold `m * cols` and `m * rows` values.
    pub fn forward_scalar(&self, x: &[f32], m: usize, out: &mut [f32]) {
        assert_eq!(x.len(), m * self.cols(), "forward_scalar input");
        assert_eq!(out.len(), m * self.rows(), "forward_scalar output");
        if let Some(w) = &self.int8 {
            if let Err(e) = w.forward_scalar(x, m, out) {
                panic!("forward_scalar: {e}");
            }
            return;
        }
        let (rows, cols) = (self.rows(), self.cols());
        let dense;
        let row_dot = |r: usize, xi: &[f32]| -> f32 {
            let span = r * cols..(r + 1) * cols;
            match self.weight.kind() {
                WeightKind::F32(w) => scalar::dot_f32(xi, &w[span]),
                WeightKind::F16(w) => scalar::dot_f16(xi, &w[span]),
                WeightKind::Bf16(w) => scalar::dot_bf16(xi, &w[span]),
                WeightKind::Quant(_) => unreachable!(),
            }
        };
        if let WeightKind::Quant(q) = self.weight.kind() {
            dense = q.dequantize();
            for i in 0..m {
                let xi = &x[i * cols..(i + 1) * cols];
                for r in 0..rows {
                    out[i * rows + r] = scalar::dot_f32(xi, &dense[r * cols..(r + 1) * cols]);
                }
            }
            return;
        }
        for i in 0..m {
            let xi = &x[i * cols..(i + 1) * cols];
            for r in 0..rows {
                out[i * rows + r] = row_dot(r, xi);
            }
        }
    }
}

impl Int8Linear {
    /// [`Int8Linear::from_qtensor`] of the weight of `lin`, which must be such a QTensor.
    pub fn from_linear(lin: &Linear) -> Result<Self> {
        match lin.weight() {
            WeightKind::Quant(q) => Self::from_qtensor(q),
            other => Err(CpuError::Unsupported {
                op: "Int8Linear::from_linear",
                what: format!("{} weights (W8A8 needs an 8-bit symmetric per-channel QTensor)", other.name()),
            }),
        }
    }
}
