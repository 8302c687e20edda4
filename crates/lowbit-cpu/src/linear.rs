//! `Linear`: a weight matrix in kernel-ready layout and its product with activations.

use crate::{scalar, CpuError, Result};
use half::{bf16, f16};
use lowbit_core::QTensor;

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

/// A weight matrix `W[rows, cols]` ready for `Y = X · Wᵀ`.
#[derive(Clone, Debug)]
pub struct Linear {
    rows: usize,
    cols: usize,
    weight: WeightKind,
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
        Ok(Linear { rows, cols, weight })
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
    /// Bytes of weight storage a forward pass reads.
    pub fn nbytes(&self) -> usize {
        match &self.weight {
            WeightKind::F32(v) => 4 * v.len(),
            WeightKind::F16(v) => 2 * v.len(),
            WeightKind::Bf16(v) => 2 * v.len(),
            WeightKind::Quant(q) => q.nbytes(),
        }
    }

    /// `out[m, rows] = x[m, cols] · Wᵀ`.
    pub fn forward(&self, x: &[f32], m: usize, out: &mut [f32]) -> Result<()> {
        if x.len() != m * self.cols {
            return Err(CpuError::shape("Linear::forward input", m * self.cols, x.len()));
        }
        if out.len() != m * self.rows {
            return Err(CpuError::shape("Linear::forward output", m * self.rows, out.len()));
        }
        self.forward_scalar(x, m, out);
        Ok(())
    }

    /// The scalar reference product.
    pub fn forward_scalar(&self, x: &[f32], m: usize, out: &mut [f32]) {
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
