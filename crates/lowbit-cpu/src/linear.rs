//! `Linear`: a weight matrix in kernel-ready layout and its product with activations.

use crate::int8_linear::Int8Linear;
use crate::weight::{Weight, WeightKind};
use crate::{driver, scalar, CpuError, KernelLevel, Result};

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
/// The weight is kept exactly as given ([`Linear::weight`] returns it); the kernels read the packed
/// codes, scales and zeros in place. The only derived data is, for NF4/FP4, the per-block absmax
/// decoded to f32 once (double quantization is undone at construction, 4 bytes per block).
#[derive(Clone, Debug)]
pub struct Linear {
    weight: Weight,
    /// W8A8 mode ([`Linear::enable_int8_activations`]): the weight packed for int8 x int8 products.
    int8: Option<Box<Int8Linear>>,
}

impl Linear {
    /// Wraps a dense or quantized weight of shape `[rows, cols]`.
    pub fn new(rows: usize, cols: usize, weight: WeightKind) -> Result<Self> {
        Ok(Linear { weight: Weight::new(rows, cols, weight)?, int8: None })
    }

    /// Switches to W8A8 (SmoothQuant): activations are quantized per token to int8 and multiplied
    /// with the int8 weight codes in integers ([`Int8Linear`]). The weight must be an 8-bit
    /// symmetric per-channel QTensor; [`Linear::weight`] still returns it.
    pub fn enable_int8_activations(&mut self) -> Result<()> {
        self.int8 = Some(Box::new(Int8Linear::from_linear(self)?));
        Ok(())
    }

    /// Whether [`Linear::forward`] quantizes activations to int8 (W8A8).
    pub fn int8_activations(&self) -> bool {
        self.int8.is_some()
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
    /// a level this CPU lacks is an error.
    pub fn forward_with(&self, level: KernelLevel, x: &[f32], m: usize, out: &mut [f32]) -> Result<()> {
        if x.len() != m * self.cols() {
            return Err(CpuError::shape("Linear::forward input", m * self.cols(), x.len()));
        }
        if out.len() != m * self.rows() {
            return Err(CpuError::shape("Linear::forward output", m * self.rows(), out.len()));
        }
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
                Some(isa) => driver::forward(isa, &self.weight, x, m, out),
                None => return Err(CpuError::KernelLevel(level.name().into())),
            },
            #[cfg(not(target_arch = "x86_64"))]
            _ => return Err(CpuError::KernelLevel(level.name().into())),
        }
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
