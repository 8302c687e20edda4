//! LLM.int8()'s mixed-precision decomposition (Dettmers et al. 2022, §3.2) on top of the W8A8
//! kernels: for a batch `X[m, cols]`, the columns where any `|x| >= t` (the outlier columns `O`,
//! found per batch at run time) are multiplied in floating point with the dequantized int8 weight
//! columns (as bitsandbytes multiplies `X[:, O]` with `CB[:, O] * SCB / 127`), the rest in int8 x
//! int8 with exact i32 sums:
//!
//! ```text
//! x'[t, c]  = 0 for c in O, else x[t, c]              (per-token scale from non-outliers only)
//! int[t, r] = W8A8(x', W)[t, r]                        (crate::w8a8, every level bit-identical)
//! cor[t, r] = ((0 + x[t, o0] * wd[r, o0]) + x[t, o1] * wd[r, o1]) + ...   (o0 < o1 < ..., f32)
//! y[t, r]   = int[t, r] + cor[t, r]                    wd[r, c] = code(r, c) as f32 * w_scale[r]
//! ```
//!
//! Zeroing the outlier columns before quantizing makes the W8A8 kernels compute exactly the
//! int8 part over the remaining columns; the correction multiplies then adds (no fused
//! multiply-add) in a fixed order, so every level returns [`Int8Linear::forward_scalar`]'s
//! outputs bit for bit. Without outliers (the common case) the cost over plain W8A8 is one scan
//! of `X` (an integer max of the magnitudes per token).

use crate::int8_linear::Int8Linear;
use crate::par;
use crate::scalar::absmax_bits;
use crate::w8a8::non_finite;
use crate::{CpuError, Result};
use std::sync::atomic::{AtomicU64, Ordering};

/// How many outlier columns the decomposition found: summed over the batches it ran on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutlierCounts {
    /// Forward calls (batches of tokens; one per decode step).
    pub batches: u64,
    /// Outlier columns, summed over the batches.
    pub outlier_columns: u64,
    /// Columns per batch (the layer's input width).
    pub columns: u64,
}

impl OutlierCounts {
    /// The fraction of (batch, column) pairs that were outliers (0 before any batch).
    pub fn fraction(&self) -> f64 {
        if self.batches == 0 {
            return 0.0;
        }
        self.outlier_columns as f64 / (self.batches * self.columns) as f64
    }
}

/// The counters a layer updates on every forward pass (shared by clones of the layer's model
/// only through copies: a clone starts from the counts of its original).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    batches: AtomicU64,
    outlier_columns: AtomicU64,
}

impl Clone for Counters {
    fn clone(&self) -> Self {
        Counters {
            batches: AtomicU64::new(self.batches.load(Ordering::Relaxed)),
            outlier_columns: AtomicU64::new(self.outlier_columns.load(Ordering::Relaxed)),
        }
    }
}

impl Counters {
    pub(crate) fn add(&self, outliers: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.outlier_columns.fetch_add(outliers as u64, Ordering::Relaxed);
    }
    pub(crate) fn get(&self, columns: usize) -> OutlierCounts {
        OutlierCounts {
            batches: self.batches.load(Ordering::Relaxed),
            outlier_columns: self.outlier_columns.load(Ordering::Relaxed),
            columns: columns as u64,
        }
    }
    pub(crate) fn reset(&self) {
        self.batches.store(0, Ordering::Relaxed);
        self.outlier_columns.store(0, Ordering::Relaxed);
    }
}

/// Checks an outlier threshold: positive (infinity: no decomposition, plain W8A8), not NaN.
pub(crate) fn check_threshold(op: &'static str, t: f32) -> Result<()> {
    if t > 0.0 {
        Ok(())
    } else {
        Err(CpuError::shape(op, "an outlier threshold > 0 (infinity: no decomposition)", t))
    }
}

/// The outlier columns of `x[m, cols]` at threshold `t` (finite, > 0), ascending: every `c`
/// with some `|x[t, c]| >= t`. One integer-max scan per token; only tokens reaching `t` are
/// looked at column by column. A NaN or infinite activation is an error.
pub(crate) fn outlier_columns(x: &[f32], cols: usize, t: f32) -> Result<Vec<usize>> {
    // Magnitudes compare as their bit patterns (sign cleared), NaN and infinities above all.
    let tb = t.to_bits();
    let mut mark: Vec<bool> = vec![];
    for (i, row) in x.chunks_exact(cols).enumerate() {
        if absmax_bits(row) < tb {
            continue;
        }
        if mark.is_empty() {
            mark = vec![false; cols];
        }
        for (c, &v) in row.iter().enumerate() {
            if v.to_bits() & 0x7fff_ffff >= tb {
                if !v.is_finite() {
                    return Err(non_finite(x, cols, i));
                }
                mark[c] = true;
            }
        }
    }
    Ok(mark.iter().enumerate().filter_map(|(c, &o)| o.then_some(c)).collect())
}

/// `out[t, r] += cor[t, r]` (module docs): the outlier columns `cols_o` of `x[m, cols]` times
/// the dequantized weight columns, summed in ascending column order from 0, multiply then add.
pub(crate) fn add_correction(w: &Int8Linear, x: &[f32], m: usize, cols_o: &[usize], out: &mut [f32]) {
    let (rows, cols) = (w.rows(), w.cols());
    // wd[k, r]: column o_k of the dequantized weight, contiguous over r so the loop below
    // vectorizes across outputs (each lane keeps its own order of operations).
    let mut wd = vec![0f32; cols_o.len() * rows];
    for (&c, d) in cols_o.iter().zip(wd.chunks_exact_mut(rows)) {
        w.column_f32(c, d);
    }
    // Tokens are independent: split them over threads when the product is large (late layers
    // of SmolLM2 send half of down_proj's 1536 columns here in a 2048-token window).
    let par = m * rows * cols_o.len() >= par::PARALLEL_MIN_MACS && par::threads() > 1;
    let per = if par { m.div_ceil(par::threads() * 4) } else { m };
    par::for_each_chunk(&mut out[..m * rows], per * rows, par, |chunk, o| {
        let mut cor = vec![0f32; rows];
        for (i, orow) in o.chunks_exact_mut(rows).enumerate() {
            let t = chunk * per + i;
            cor.fill(0.0);
            for (k, &c) in cols_o.iter().enumerate() {
                let xv = x[t * cols + c];
                for (a, &d) in cor.iter_mut().zip(&wd[k * rows..(k + 1) * rows]) {
                    *a += xv * d;
                }
            }
            for (o, &a) in orow.iter_mut().zip(&cor) {
                *o += a;
            }
        }
    });
}

/// `x` with the columns `cols_o` set to zero.
pub(crate) fn zero_columns(x: &[f32], cols: usize, cols_o: &[usize]) -> Vec<f32> {
    let mut xz = x.to_vec();
    for row in xz.chunks_exact_mut(cols) {
        for &c in cols_o {
            row[c] = 0.0;
        }
    }
    xz
}
