//! The stored weight matrix: what a [`crate::Linear`] holds and the kernel driver reads.

use crate::{CpuError, Result};

/// f32 entries of a widened row table (one AVX-512 register, two AVX2 ones).
pub(crate) const ROW_TABLE: usize = 16;
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
/// block); for row codebooks, each row's table widened to 16 f32 once (a 3-bit table of 8
/// repeated twice, so a lookup on the low 4 bits of a code lane reads the right entry).
#[derive(Clone, Debug)]
pub(crate) struct Weight {
    rows: usize,
    cols: usize,
    kind: WeightKind,
    absmax: Vec<f32>,
    row_tables: Vec<f32>,
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
        let row_tables = match &kind {
            WeightKind::Quant(q) => match q.params() {
                QParams::RowLut { tables } => {
                    let n = tables.len() / rows;
                    (0..rows * ROW_TABLE).map(|i| tables[(i / ROW_TABLE) * n + i % n].to_f32()).collect()
                }
                _ => Vec::new(),
            },
            _ => Vec::new(),
        };
        Ok(Weight { rows, cols, kind, absmax, row_tables })
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
    /// Each row's codebook as [`ROW_TABLE`] f32 (empty for other weights).
    pub(crate) fn row_tables(&self) -> &[f32] {
        &self.row_tables
    }
    /// Bytes a forward pass reads: codes, scales and zeros as stored; for NF4/FP4 the f32 absmax
    /// the kernels read (4 bytes per block, also with double quantization); for row codebooks
    /// the f32 tables and the outliers.
    pub(crate) fn nbytes(&self) -> usize {
        match &self.kind {
            WeightKind::F32(v) => 4 * v.len(),
            WeightKind::F16(v) => 2 * v.len(),
            WeightKind::Bf16(v) => 2 * v.len(),
            WeightKind::Quant(q) => match q.params() {
                QParams::Int { .. } | QParams::IntStats(_) => q.nbytes(),
                QParams::Codebook { .. } => q.codes().len() + 4 * self.absmax.len(),
                QParams::RowLut { tables } => q.nbytes() - 2 * tables.len() + 4 * self.row_tables.len(),
            },
        }
    }
}
