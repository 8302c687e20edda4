//! `Linear`: a weight matrix in kernel-ready layout and its product with activations.

use crate::{driver, scalar, CpuError, Int8Linear, KernelLevel, Result};
use half::{bf16, f16};
use lowbit_core::{QParams, QTensor};

/// What a `Linear` stores.
#[derive(Clone, Debug)]
pub enum WeightKind {
    /// Dense f32.
    F32(Vec<f32>),
    /// Dense f16.
    F16(Vec<f16>),
    /// Dense bf16.
    Bf16(Vec<bf16>),
    /// A lowbit quantized tensor (any scheme).
    Quant(QTensor),
}

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
    rows: usize,
    cols: usize,
    weight: WeightKind,
    absmax: Vec<f32>,
    /// W8A8 mode ([`Linear::enable_int8_activations`]): the weight packed for int8 x int8 products.
    int8: Option<Box<Int8Linear>>,
}

impl Linear {
    /// Wraps a dense or quantized weight of shape `[rows, cols]`.
    pub fn new(rows: usize, cols: usize, weight: WeightKind) -> Result<Self> {
        let len = match &weight {
            WeightKind::F32(v) => v.len(),
            WeightKind::F16(v) => v.len(),
            WeightKind::Bf16(v) => v.len(),
            WeightKind::Quant(q) => {
                if q.shape() != [rows, cols] {
                    return Err(CpuError::shape("Linear", format!("[{rows}, {cols}]"), format!("{:?}", q.shape())));
                }
                rows * cols
            }
        };
        if len != rows * cols || rows == 0 || cols == 0 {
            return Err(CpuError::shape("Linear", format!("{} weights for [{rows}, {cols}]", rows * cols), len));
        }
        let absmax = match &weight {
            WeightKind::Quant(q) => match q.params() {
                QParams::Codebook { absmax } => {
                    (0..q.numel().div_ceil(codebook_block(q))).map(|i| absmax.get(i)).collect()
                }
                QParams::Int { .. } => Vec::new(),
            },
            _ => Vec::new(),
        };
        Ok(Linear { rows, cols, weight, absmax, int8: None })
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
        self.rows
    }
    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// The stored weight.
    pub fn weight(&self) -> &WeightKind {
        &self.weight
    }
    /// Bytes of weight storage a forward pass reads: codes, scales and zeros as stored; for
    /// NF4/FP4 the f32 absmax the kernels read (4 bytes per block, also with double quantization).
    pub fn nbytes(&self) -> usize {
        if let Some(w) = &self.int8 {
            return w.nbytes();
        }
        match &self.weight {
            WeightKind::F32(v) => 4 * v.len(),
            WeightKind::F16(v) => 2 * v.len(),
            WeightKind::Bf16(v) => 2 * v.len(),
            WeightKind::Quant(q) => match q.params() {
                QParams::Int { .. } => q.nbytes(),
                QParams::Codebook { .. } => q.codes().len() + 4 * self.absmax.len(),
            },
        }
    }

    /// The absmax of every NF4/FP4 block as f32 (empty for other weights).
    pub(crate) fn absmax_f32(&self) -> &[f32] {
        &self.absmax
    }

    /// `out[m, rows] = x[m, cols] · Wᵀ` with the kernels of [`crate::kernel_level`].
    pub fn forward(&self, x: &[f32], m: usize, out: &mut [f32]) -> Result<()> {
        self.forward_with(crate::kernel_level(), x, m, out)
    }

    /// `out[m, rows] = x[m, cols] · Wᵀ` with the kernels of `level` (for tests and benchmarks);
    /// a level this CPU lacks is an error.
    pub fn forward_with(&self, level: KernelLevel, x: &[f32], m: usize, out: &mut [f32]) -> Result<()> {
        if x.len() != m * self.cols {
            return Err(CpuError::shape("Linear::forward input", m * self.cols, x.len()));
        }
        if out.len() != m * self.rows {
            return Err(CpuError::shape("Linear::forward output", m * self.rows, out.len()));
        }
        if m == 0 {
            return Ok(());
        }
        if let Some(w) = &self.int8 {
            return w.forward_with(level, x, m, out);
        }
        match level {
            KernelLevel::Scalar => driver::forward(crate::isa::Portable, self, x, m, out),
            #[cfg(target_arch = "x86_64")]
            KernelLevel::Avx2 => match crate::x86::avx2::Avx2::new() {
                Some(isa) => driver::forward(isa, self, x, m, out),
                None => return Err(CpuError::KernelLevel(level.name().into())),
            },
            #[cfg(target_arch = "x86_64")]
            KernelLevel::Avx512 => match crate::x86::avx512::Avx512::new() {
                Some(isa) => driver::forward(isa, self, x, m, out),
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
        assert_eq!(x.len(), m * self.cols, "forward_scalar input");
        assert_eq!(out.len(), m * self.rows, "forward_scalar output");
        if let Some(w) = &self.int8 {
            if let Err(e) = w.forward_scalar(x, m, out) {
                panic!("forward_scalar: {e}");
            }
            return;
        }
        let (rows, cols) = (self.rows, self.cols);
        let dense;
        let row_dot = |r: usize, xi: &[f32]| -> f32 {
            let span = r * cols..(r + 1) * cols;
            match &self.weight {
                WeightKind::F32(w) => scalar::dot_f32(xi, &w[span]),
                WeightKind::F16(w) => scalar::dot_f16(xi, &w[span]),
                WeightKind::Bf16(w) => scalar::dot_bf16(xi, &w[span]),
                WeightKind::Quant(_) => unreachable!(),
            }
        };
        if let WeightKind::Quant(q) = &self.weight {
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

fn codebook_block(q: &QTensor) -> usize {
    match q.scheme() {
        lowbit_core::Scheme::Codebook(s) => s.block_size,
        lowbit_core::Scheme::Int(_) => unreachable!("called for codebook tensors only"),
    }
}
