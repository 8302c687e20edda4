//! The layer Hessian of GPTQ (Frantar et al. 2022, Section 3): `H = 2/N * sum_x x x^T` over the
//! `N` calibration tokens `x` (columns of `X[cols, N]`) that reach one linear layer's input.
//!
//! Batches arrive as row-major `[tokens, cols]` activations (one row per token, as a
//! `nn.Linear` sees them). Each batch is added as a symmetric rank-k update of the lower
//! triangle (faer's triangular GEMM, multi-threaded), with the running-mean rescaling of the
//! GPTQ reference (`H *= n / (n + k); H += 2 / (n + k) * X_b X_b^T`), so `H` is a valid mean at
//! every point. The accumulator is f64. Two precisions for the rank-k product itself:
//!
//! * [`HessianPrecision::F64`] (default): the batch is widened to f64 before the GEMM; nothing is
//!   lost beyond f64 rounding.
//! * [`HessianPrecision::F32Chunks`]: the product of each chunk of at most
//!   [`F32_CHUNK_TOKENS`] tokens runs in f32 (twice the throughput) and is added to the f64
//!   accumulator, so the f32 rounding error is bounded by one chunk's length, not by `N`.
//!
//! The GPTQ reference counts `nsamples` in sequences, not tokens, so its `H` is `seqlen` times
//! ours; GPTQ's result is invariant to that scale (damping is relative to `mean(diag H)`), only
//! its reported loss scales with it.

use crate::par::faer_par;
use crate::{Result, SolverError};
use faer::linalg::matmul::triangular::{matmul, BlockStructure};
use faer::{Accum, ColMut, Mat, MatRef};

/// Tokens per f32 rank-k product in [`HessianPrecision::F32Chunks`].
pub const F32_CHUNK_TOKENS: usize = 1024;
/// Tokens widened to f64 at a time in [`HessianPrecision::F64`] (bounds the temporary).
const F64_CHUNK_TOKENS: usize = 2048;

/// Arithmetic of the rank-k product (the accumulator is always f64).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HessianPrecision {
    /// Widen activations to f64 (exact up to f64 rounding).
    #[default]
    F64,
    /// f32 GEMM per chunk of [`F32_CHUNK_TOKENS`] tokens, summed in f64.
    F32Chunks,
}

/// A running GPTQ Hessian `H = 2/N * X X^T` of one layer input.
#[derive(Clone, Debug)]
pub struct Hessian {
    /// Lower triangle holds `H`; the strict upper triangle is not maintained.
    lower: Mat<f64>,
    tokens: u64,
    precision: HessianPrecision,
}

impl Hessian {
    /// An empty Hessian for inputs of `cols` channels (f64 products).
    pub fn new(cols: usize) -> Self {
        Self::with_precision(cols, HessianPrecision::F64)
    }

    /// An empty Hessian with the given product precision.
    pub fn with_precision(cols: usize, precision: HessianPrecision) -> Self {
        Hessian { lower: Mat::zeros(cols, cols), tokens: 0, precision }
    }

    /// A Hessian from a full symmetric row-major `[cols, cols]` matrix that was computed
    /// elsewhere (only its lower triangle is read), standing for `tokens` tokens.
    pub fn from_matrix(cols: usize, h: &[f64], tokens: u64) -> Result<Self> {
        if h.len() != cols * cols {
            return Err(SolverError::shape(
                "Hessian::from_matrix",
                format!("{cols}x{cols} = {}", cols * cols),
                h.len(),
            ));
        }
        let lower = Mat::from_fn(cols, cols, |i, j| if i >= j { h[i * cols + j] } else { 0.0 });
        Ok(Hessian { lower, tokens, precision: HessianPrecision::F64 })
    }

    /// Number of input channels.
    pub fn cols(&self) -> usize {
        self.lower.nrows()
    }

    /// Calibration tokens accumulated so far (`N`).
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// Adds a row-major batch `x[tokens, cols]` of activations.
    ///
    /// Rejects a wrong length and NaN/Inf activations (naming the first) before touching `H`.
    pub fn add_batch(&mut self, x: &[f32], tokens: usize) -> Result<()> {
        let cols = self.cols();
        if x.len() != tokens * cols {
            return Err(SolverError::shape(
                "Hessian::add_batch",
                format!("{tokens} tokens x {cols} channels = {}", tokens * cols),
                x.len(),
            ));
        }
        check_finite_activations("Hessian::add_batch", x, cols)?;
        if tokens == 0 {
            return Ok(());
        }
        let n = self.tokens as f64;
        let total = n + tokens as f64;
        let keep = n / total;
        if keep != 1.0 {
            for_each_lower_col(&mut self.lower, |j, col| {
                col.subrows_mut(j, cols - j).iter_mut().for_each(|v| *v *= keep)
            });
        }
        let alpha = 2.0 / total;
        let par = faer_par();
        match self.precision {
            HessianPrecision::F64 => {
                for chunk in x.chunks(F64_CHUNK_TOKENS * cols) {
                    let k = chunk.len() / cols;
                    // X^T of the chunk, column-major [cols, k]: column t is token t.
                    let xt = Mat::<f64>::from_fn(cols, k, |c, t| f64::from(chunk[t * cols + c]));
                    matmul(
                        self.lower.as_mut(),
                        BlockStructure::TriangularLower,
                        Accum::Add,
                        xt.as_ref(),
                        BlockStructure::Rectangular,
                        xt.transpose(),
                        BlockStructure::Rectangular,
                        alpha,
                        par,
                    );
                }
            }
            HessianPrecision::F32Chunks => {
                let mut partial = Mat::<f32>::zeros(cols, cols);
                for chunk in x.chunks(F32_CHUNK_TOKENS * cols) {
                    let k = chunk.len() / cols;
                    // A row-major [k, cols] batch is a column-major [cols, k] matrix: X^T, no copy.
                    let xt = MatRef::from_column_major_slice(chunk, cols, k);
                    matmul(
                        partial.as_mut(),
                        BlockStructure::TriangularLower,
                        Accum::Replace,
                        xt,
                        BlockStructure::Rectangular,
                        xt.transpose(),
                        BlockStructure::Rectangular,
                        1.0f32,
                        par,
                    );
                    for_each_lower_col(&mut self.lower, |j, mut dst| {
                        let src = partial.col(j);
                        for i in j..cols {
                            dst[i] += alpha * f64::from(src[i]);
                        }
                    });
                }
            }
        }
        self.tokens += tokens as u64;
        Ok(())
    }

    /// Merges another Hessian of the same input (e.g. accumulated on another thread), weighting
    /// each by its token count.
    pub fn merge(&mut self, other: &Hessian) -> Result<()> {
        if other.cols() != self.cols() {
            return Err(SolverError::shape("Hessian::merge", self.cols(), other.cols()));
        }
        let total = self.tokens + other.tokens;
        if total == 0 {
            return Ok(());
        }
        let (a, b) = (self.tokens as f64 / total as f64, other.tokens as f64 / total as f64);
        let cols = self.cols();
        for j in 0..cols {
            for i in j..cols {
                self.lower[(i, j)] = a * self.lower[(i, j)] + b * other.lower[(i, j)];
            }
        }
        self.tokens = total;
        Ok(())
    }

    /// The diagonal `H_ii`.
    pub fn diag(&self) -> Vec<f64> {
        (0..self.cols()).map(|i| self.lower[(i, i)]).collect()
    }

    /// The full symmetric matrix.
    pub fn matrix(&self) -> Mat<f64> {
        let l = &self.lower;
        Mat::from_fn(self.cols(), self.cols(), |i, j| if i >= j { l[(i, j)] } else { l[(j, i)] })
    }

    /// The full symmetric matrix, row-major.
    pub fn to_vec(&self) -> Vec<f64> {
        let cols = self.cols();
        let l = &self.lower;
        (0..cols * cols)
            .map(|k| (k / cols, k % cols))
            .map(|(i, j)| if i >= j { l[(i, j)] } else { l[(j, i)] })
            .collect()
    }
}

/// Calls `f(j, column j)` for every column of `m`, on all threads with the `parallel` feature:
/// the f64 updates of the lower triangle cost about a fifth of the f32 rank-k product they add.
fn for_each_lower_col(m: &mut Mat<f64>, f: impl Fn(usize, ColMut<'_, f64>) + Sync + Send) {
    // (faer's parallel iterators are not built on wasm32: no thread pool there)
    #[cfg(not(target_arch = "wasm32"))]
    if lowbit_core::par::ENABLED {
        use rayon::prelude::*;
        m.as_mut().par_col_iter_mut().enumerate().for_each(|(j, col)| f(j, col));
        return;
    }
    m.as_mut().col_iter_mut().enumerate().for_each(|(j, col)| f(j, col));
}

/// Rejects NaN/Inf in a row-major `[tokens, cols]` activation batch, naming the first.
pub(crate) fn check_finite_activations(op: &'static str, x: &[f32], cols: usize) -> Result<()> {
    match lowbit_core::first_non_finite(x) {
        Some(i) => {
            Err(SolverError::NonFiniteActivation { op, token: i / cols.max(1), channel: i % cols.max(1), value: x[i] })
        }
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f32], cols: usize) -> Vec<f64> {
        let n = x.len() / cols;
        let mut h = vec![0.0f64; cols * cols];
        for t in 0..n {
            for i in 0..cols {
                for j in 0..cols {
                    h[i * cols + j] += 2.0 * f64::from(x[t * cols + i]) * f64::from(x[t * cols + j]) / n as f64;
                }
            }
        }
        h
    }

    #[test]
    fn batches_with_running_mean_equal_one_pass() {
        let cols = 7;
        let x: Vec<f32> = (0..(3 + 10 + 1) * cols).map(|i| ((i * 7919 % 211) as f32 - 100.0) / 37.0).collect();
        for precision in [HessianPrecision::F64, HessianPrecision::F32Chunks] {
            let mut h = Hessian::with_precision(cols, precision);
            h.add_batch(&x[..3 * cols], 3).unwrap();
            h.add_batch(&x[3 * cols..13 * cols], 10).unwrap();
            h.add_batch(&[], 0).unwrap();
            h.add_batch(&x[13 * cols..], 1).unwrap();
            assert_eq!(h.tokens(), 14);
            let want = naive(&x, cols);
            let tol = if precision == HessianPrecision::F64 { 1e-12 } else { 1e-5 };
            for (a, b) in h.to_vec().iter().zip(&want) {
                assert!((a - b).abs() <= tol * b.abs().max(1.0), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn non_finite_activation_is_named() {
        let mut h = Hessian::new(3);
        let err = h.add_batch(&[1.0, 2.0, 3.0, 4.0, f32::NAN, 6.0], 2).unwrap_err();
        assert!(matches!(err, SolverError::NonFiniteActivation { token: 1, channel: 1, .. }), "{err}");
        assert_eq!(h.tokens(), 0);
        assert!(matches!(h.add_batch(&[1.0; 4], 2), Err(SolverError::Shape { .. })));
    }
}
