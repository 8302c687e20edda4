//! The stored weight matrix: what a [`crate::Linear`] holds and the kernel driver reads.

use crate::{CpuError, Result};
use half::{bf16, f16};
use lowbit_core::{QParams, QTensor, Scheme};

/// A tensor's element storage: what a `Linear` stores (and what loaders hand over, unconverted).
#[derive(Clone, Debug)]
pub enum WeightKind {
    /// Dense f32.
    F32(Vec<f32>),
    /// Dense f16.
    F16(Vec<f16>),
    /// Dense bf16.
    Bf16(Vec<bf16>),
    /// A lowbit quantized tensor (any scheme), kept packed.
    Quant(QTensor),
}

impl WeightKind {
    /// A short name of the storage, for messages.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            WeightKind::F32(_) => "f32",
            WeightKind::F16(_) => "f16",
            WeightKind::Bf16(_) => "bf16",
            WeightKind::Quant(_) => "quantized",
        }
    }
}

/// A weight `W[rows, cols]` exactly as given, plus the one derived datum the kernels need: for
/// NF4/FP4, the per-block absmax decoded to f32 once (double quantization undone, 4 bytes per
/// block).
#[derive(Clone, Debug)]
pub(crate) struct Weight {
    rows: usize,
    cols: usize,
    kind: WeightKind,
    absmax: Vec<f32>,
}

impl Weight {
    /// Checks that `kind` holds `rows * cols` weights (a QTensor of shape `[rows, cols]`).
    pub(crate) fn new(rows: usize, cols: usize, kind: WeightKind) -> Result<Self> {
        let len = match &kind {
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
        let absmax = match &kind {
            WeightKind::Quant(q) => match (q.scheme(), q.params()) {
                (Scheme::Codebook(s), QParams::Codebook { absmax }) => {
                    (0..q.numel().div_ceil(s.block_size)).map(|i| absmax.get(i)).collect()
                }
                _ => Vec::new(),
            },
            _ => Vec::new(),
        };
        Ok(Weight { rows, cols, kind, absmax })
    }

    /// Output features.
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }
    /// Input features.
    pub(crate) fn cols(&self) -> usize {
        self.cols
    }
    /// The stored weight.
    pub(crate) fn kind(&self) -> &WeightKind {
        &self.kind
    }
    /// The absmax of every NF4/FP4 block as f32 (empty for other weights).
    pub(crate) fn absmax_f32(&self) -> &[f32] {
        &self.absmax
    }
    /// Bytes a forward pass reads: codes, scales and zeros as stored; for NF4/FP4 the f32 absmax
    /// the kernels read (4 bytes per block, also with double quantization).
    pub(crate) fn nbytes(&self) -> usize {
        match &self.kind {
            WeightKind::F32(v) => 4 * v.len(),
            WeightKind::F16(v) => 2 * v.len(),
            WeightKind::Bf16(v) => 2 * v.len(),
            WeightKind::Quant(q) => match q.params() {
                QParams::Int { .. } | QParams::IntStats(_) => q.nbytes(),
                QParams::Codebook { .. } => q.codes().len() + 4 * self.absmax.len(),
            },
        }
    }
}
