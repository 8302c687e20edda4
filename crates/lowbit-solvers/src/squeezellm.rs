//! SqueezeLLM (Kim et al. 2023, "SqueezeLLM: Dense-and-Sparse Quantization"): non-uniform
//! quantization with one codebook per output channel, fitted by sensitivity-weighted k-means,
//! plus a sparse f16 part for the few weights a codebook serves worst.
//!
//! Per layer `W[rows, cols]`:
//!
//! 1. **Sensitivity.** The paper weights each weight by its Fisher information (squared
//!    gradients of the loss). lowbit has no gradients yet, so the weight of input column `c` is
//!    the diagonal of the layer Hessian instead: `s_c = mean over calibration tokens of x_c^2`
//!    (the activation second moments, [`DiagStats`]), the same for every row. This is **not**
//!    the paper's Fisher weighting; the manifest says so (`"sensitivity"`).
//! 2. **Dense-and-sparse split.** The [`SqueezeLlmMethod::outlier_percent`] of the layer's weights
//!    with the largest magnitude (0.45% by default, as the paper) and then the
//!    [`SqueezeLlmMethod::sensitive_percent`] with the largest `s_c * w^2` are taken out before
//!    clustering and kept in f16 in [`lowbit_core::SparseOutliers`].
//! 3. **Weighted k-means per row** of the remaining weights into `2^bits` centroids, minimizing
//!    `sum_c s_c (w_c - centroid(w_c))^2`: initialized at weighted quantiles (the weighted mean of
//!    each of `2^bits` equal-weight slices of the sorted row), then Lloyd's iterations
//!    ([`KMEANS_ITERS`] at most, stopping when the assignment no longer changes). In one
//!    dimension the clusters are intervals of the sorted row, so each iteration is a binary
//!    search per boundary over prefix sums, not a pass over every weight. Deterministic.
//! 4. **Storage**: the centroids become the row's f16 table ([`lowbit_core::rowlut`]), every weight
//!    the index of its nearest entry; a sparse weight stores `w - table[code]` (its dense part is
//!    the nearest entry, so the sum reproduces `w` to f16 precision of the residual).
//!
//! **Error feedback** ([`SqueezeLlmMethod::error_feedback`], off by default; not in the paper):
//! the codebooks are fitted as above, then the codes are chosen by GPTQ's sweep (act-order,
//! the full layer Hessian) instead of nearest rounding, so each column's rounding error moves
//! the columns after it; the sparse weights keep their swept values exactly.
//!
//! The common group size, symmetry and scale dtype do not apply (one codebook per row): the
//! method's [`QuantMethod::scheme`] turns the common integer scheme into a row-codebook one.

use crate::gptq::{gptq_row_tables, GptqConfig, RowTables};
use crate::hessian::{check_finite_activations, Hessian, HessianPrecision};
use crate::method::{downcast, CalibShape, Group, GroupSolution, MethodInfo, QuantMethod, SolvedLayer, Statistics};
use crate::report::LayerReport;
use crate::{Result, SolverError};
use lowbit_core::clock::Instant;
use lowbit_core::{check_finite, rowlut, Bits, IntScheme, QTensor, RowLutScheme, ScaleDtype, Scheme, SparseOutliers};
use rayon::prelude::*;
use serde_json::{Map, Value};

/// Most Lloyd iterations per row.
pub const KMEANS_ITERS: usize = 100;
/// The paper's share of outlier weights kept in f16, percent.
pub const DEFAULT_OUTLIER_PERCENT: f64 = 0.45;
/// The share of sensitive weights kept in f16 by default, percent.
pub const DEFAULT_SENSITIVE_PERCENT: f64 = 0.05;

/// SqueezeLLM as a pipeline method.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SqueezeLlmMethod {
    /// Largest-magnitude weights kept in f16, percent of each layer's (0 to 100).
    pub outlier_percent: f64,
    /// Then the most sensitive weights (largest `s_c * w^2`) kept in f16, percent of each layer's.
    pub sensitive_percent: f64,
    /// Choose the codes by GPTQ's sweep onto the fitted codebooks (lowbit's addition).
    pub error_feedback: bool,
}

impl Default for SqueezeLlmMethod {
    fn default() -> Self {
        SqueezeLlmMethod {
            outlier_percent: DEFAULT_OUTLIER_PERCENT,
            sensitive_percent: DEFAULT_SENSITIVE_PERCENT,
            error_feedback: false,
        }
    }
}

impl SqueezeLlmMethod {
    fn check(&self) -> Result<()> {
        for (name, v) in [("outlier_percent", self.outlier_percent), ("sensitive_percent", self.sensitive_percent)] {
            if !(0.0..=100.0).contains(&v) {
                return Err(SolverError::param(name, v, "must be a percentage from 0 to 100"));
            }
        }
        if self.outlier_percent + self.sensitive_percent > 100.0 {
            return Err(SolverError::param(
                "sensitive_percent",
                self.sensitive_percent,
                "outlier_percent + sensitive_percent must not exceed 100",
            ));
        }
        Ok(())
    }
}

/// The row-codebook scheme of a group's common scheme: its code width, 3 or 4 bits.
fn row_scheme(scheme: &Scheme) -> Result<RowLutScheme> {
    let bits = match scheme {
        Scheme::Int(s) => s.bits,
        Scheme::RowLut(s) => s.bits,
        Scheme::Codebook(_) => {
            return Err(SolverError::param("format", "nf4/fp4", "squeezellm fits its own per-row codebooks"))
        }
    };
    match bits {
        Bits::B3 | Bits::B4 => Ok(RowLutScheme { bits }),
        b => Err(SolverError::param("bits", b.get(), "squeezellm stores 3- or 4-bit codes")),
    }
}

impl QuantMethod for SqueezeLlmMethod {
    fn info(&self) -> MethodInfo {
        MethodInfo { name: "squeezellm", aliases: &["squeeze"], calibrated: true }
    }
    fn scheme(&self, common: Scheme) -> Scheme {
        match common {
            Scheme::Int(s) => Scheme::RowLut(RowLutScheme { bits: s.bits }),
            other => other,
        }
    }
    fn validate(&self, scheme: &Scheme) -> Result<()> {
        self.check()?;
        row_scheme(scheme).map(|_| ())
    }
    fn params(&self, _calib: CalibShape) -> Map<String, Value> {
        Map::from_iter([
            ("outlier_percent".to_string(), Value::from(self.outlier_percent)),
            ("sensitive_percent".to_string(), Value::from(self.sensitive_percent)),
            ("codebook".to_string(), "per output row, 2^bits f16 values".into()),
            (
                "sensitivity".to_string(),
                "hessian diagonal (activation second moments), not Fisher (lowbit has no gradients)".into(),
            ),
            ("kmeans".to_string(), format!("weighted Lloyd, weighted-quantile init, <= {KMEANS_ITERS} iters").into()),
            ("error_feedback".to_string(), Value::from(self.error_feedback)),
        ])
    }
    fn statistics(&self, cols: usize, _calib: CalibShape) -> Box<dyn Statistics> {
        if self.error_feedback {
            Box::new(Hessian::with_precision(cols, HessianPrecision::F32Chunks))
        } else {
            Box::new(DiagStats::new(cols))
        }
    }
    fn solve_group(&self, group: &Group, stats: &dyn Statistics) -> Result<GroupSolution> {
        let scheme = row_scheme(&group.scheme)?;
        let hessian = if self.error_feedback { Some(downcast::<Hessian>(stats, "squeezellm")?) } else { None };
        let s = match hessian {
            // The same weighting up to a factor (H = 2/n X^T X): k-means does not see the scale.
            Some(h) => h.diag().iter().map(|&v| v as f32).collect(),
            None => downcast::<DiagStats>(stats, "squeezellm")?.sensitivity(),
        };
        if s.len() != group.cols {
            return Err(SolverError::shape("squeezellm statistics", group.cols, s.len()));
        }
        let layers = group
            .layers
            .iter()
            .map(|l| {
                let start = Instant::now();
                let out = match hessian {
                    Some(h) => squeezellm_feedback(l.w, l.rows, group.cols, h, scheme, self)?,
                    None => squeezellm_quantize(l.w, l.rows, group.cols, &s, scheme, self)?,
                };
                let report = LayerReport {
                    method: "squeezellm",
                    loss: out.weighted_error,
                    damping: None,
                    dead_inputs: 0,
                    seconds: start.elapsed().as_secs_f64(),
                };
                Ok(SolvedLayer { qtensor: out.qtensor, report, alpha: None })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(GroupSolution { layers, fold: None, int8_activations: false })
    }
}

/// The diagonal of the layer Hessian: `sum x_c^2` per input column over every calibration token.
#[derive(Clone, Debug)]
pub struct DiagStats {
    sum_sq: Vec<f64>,
    tokens: u64,
}

impl DiagStats {
    /// An empty accumulator for `cols` input columns.
    pub fn new(cols: usize) -> Self {
        DiagStats { sum_sq: vec![0.0; cols], tokens: 0 }
    }
    /// `mean x_c^2` per column (zeros before any token).
    pub fn sensitivity(&self) -> Vec<f32> {
        let n = self.tokens.max(1) as f64;
        self.sum_sq.iter().map(|&v| (v / n) as f32).collect()
    }
}

impl Statistics for DiagStats {
    fn add_batch(&mut self, x: &[f32], tokens: usize) -> Result<()> {
        let cols = self.sum_sq.len();
        if x.len() != tokens * cols {
            return Err(SolverError::shape("squeezellm batch", format!("{tokens} x {cols}"), x.len()));
        }
        check_finite_activations("squeezellm", x, cols)?;
        for row in x.chunks_exact(cols.max(1)) {
            for (a, &v) in self.sum_sq.iter_mut().zip(row) {
                *a += f64::from(v) * f64::from(v);
            }
        }
        self.tokens += tokens as u64;
        Ok(())
    }
}

/// A SqueezeLLM-quantized layer.
#[derive(Clone, Debug)]
pub struct SqueezeLlmOutput {
    /// Codes, per-row tables and the sparse part.
    pub qtensor: QTensor,
    /// `sum_{r,c} s_c (w - dequantized)^2` over the whole layer (sparse part included).
    pub weighted_error: f64,
    /// Weights kept in the sparse part.
    pub sparse: usize,
}

/// Weighted k-means of `values` (sorted ascending) with weights `weights` into `k` centroids
/// (ascending): weighted-quantile init, then Lloyd's iterations until the assignment stops
/// changing or `iters` have run. Zero total weight falls back to equal weights.
pub fn weighted_kmeans_1d(values: &[f32], weights: &[f32], k: usize, iters: usize) -> Vec<f32> {
    assert_eq!(values.len(), weights.len());
    assert!(k > 0);
    if values.is_empty() {
        return vec![0.0; k];
    }
    let n = values.len();
    let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
    let uniform = total <= 0.0;
    // Prefix sums of weight and weighted value: a cluster [a, b) of the sorted row has weight
    // pw[b] - pw[a] and weighted sum ps[b] - ps[a].
    let mut pw = vec![0f64; n + 1];
    let mut ps = vec![0f64; n + 1];
    for i in 0..n {
        let w = if uniform { 1.0 } else { f64::from(weights[i]) };
        pw[i + 1] = pw[i] + w;
        ps[i + 1] = ps[i] + w * f64::from(values[i]);
    }
    let total = pw[n];
    let mean = |a: usize, b: usize, fallback: f32| {
        let w = pw[b] - pw[a];
        if w > 0.0 {
            ((ps[b] - ps[a]) / w) as f32
        } else {
            fallback
        }
    };
    // Init: slice j holds the elements whose cumulative weight midpoint lies in [j, j+1) * total/k.
    let mut bounds = vec![0usize; k + 1];
    for (j, b) in bounds.iter_mut().enumerate().skip(1) {
        let target = total * j as f64 / k as f64;
        *b = pw.partition_point(|&c| c < target).min(n);
    }
    bounds[k] = n;
    let mut c: Vec<f32> = (0..k)
        .map(|j| {
            let (a, b) = (bounds[j], bounds[j + 1].max(bounds[j]));
            mean(a, b, values[a.min(n - 1)])
        })
        .collect();
    for _ in 0..iters {
        // Assignment: cluster j takes the values nearer to c[j] than to its neighbours.
        let mut next = vec![0usize; k + 1];
        next[k] = n;
        for j in 1..k {
            let mid = (c[j - 1] + c[j]) / 2.0;
            // Ties go to the lower centroid, as `rowlut::nearest` does.
            next[j] = values.partition_point(|&v| v <= mid).max(next[j - 1]);
        }
        // A centroid equal to the one below it gets nothing (ties to the lower): its cluster is
        // empty, so its start moves to the next one's.
        for j in (1..k).rev() {
            if c[j] == c[j - 1] {
                next[j] = next[j + 1];
            }
        }
        for j in 0..k {
            c[j] = mean(next[j], next[j + 1], c[j]);
        }
        c.sort_by(f32::total_cmp);
        if next == bounds {
            break;
        }
        bounds = next;
    }
    c
}

/// SqueezeLLM-quantizes `w` (row-major `[rows, cols]`, finite) with per-column sensitivities
/// `s` (`cols` values >= 0, e.g. [`DiagStats::sensitivity`]).
pub fn squeezellm_quantize(
    w: &[f32],
    rows: usize,
    cols: usize,
    s: &[f32],
    scheme: RowLutScheme,
    m: &SqueezeLlmMethod,
) -> Result<SqueezeLlmOutput> {
    let (sparse, tables) = fit(w, rows, cols, s, scheme, m)?;
    let mut qtensor = rowlut::encode(w, rows, cols, scheme, &tables)?;
    let dense = qtensor.dequantize();
    let entries: Vec<(usize, usize, f32)> =
        (0..rows * cols).filter(|&i| sparse[i]).map(|i| (i / cols, i % cols, w[i] - dense[i])).collect();
    let nsparse = entries.len();
    if nsparse > 0 {
        qtensor = qtensor.with_outliers(SparseOutliers::from_entries(rows, cols, &entries)?)?;
    }
    Ok(finish(qtensor, w, s, nsparse))
}

/// [`squeezellm_quantize`] with the codes chosen by GPTQ's sweep onto the fitted codebooks (act
/// order, the reference damping), against the layer Hessian `h`; sensitivities are its diagonal.
pub fn squeezellm_feedback(
    w: &[f32],
    rows: usize,
    cols: usize,
    h: &Hessian,
    scheme: RowLutScheme,
    m: &SqueezeLlmMethod,
) -> Result<SqueezeLlmOutput> {
    let s: Vec<f32> = h.diag().iter().map(|&v| v as f32).collect();
    let (sparse, tables) = fit(w, rows, cols, &s, scheme, m)?;
    // The values the file holds.
    let tables: Vec<f32> = tables.iter().map(|&t| ScaleDtype::F16.round(t)).collect();
    let cfg = GptqConfig { act_order: true, ..GptqConfig::new(IntScheme::per_channel_sym(scheme.bits)) };
    let grid = RowTables { tables: &tables, k: scheme.entries(), exact: &sparse };
    let (codes, residuals) = gptq_row_tables(w, rows, cols, h, &cfg, grid)?;
    let mut qtensor = rowlut::from_codes(&codes, rows, cols, scheme, &tables)?;
    let nsparse = residuals.len();
    if nsparse > 0 {
        qtensor = qtensor.with_outliers(SparseOutliers::from_entries(rows, cols, &residuals)?)?;
    }
    Ok(finish(qtensor, w, &s, nsparse))
}

fn finish(qtensor: QTensor, w: &[f32], s: &[f32], sparse: usize) -> SqueezeLlmOutput {
    let cols = s.len();
    let d = qtensor.dequantize();
    let weighted_error =
        w.iter().zip(&d).enumerate().map(|(i, (a, b))| f64::from(s[i % cols]) * f64::from(a - b).powi(2)).sum();
    SqueezeLlmOutput { qtensor, weighted_error, sparse }
}

/// The sparse mask and the per-row codebooks (`rows * 2^bits`, f32) of a layer.
fn fit(
    w: &[f32],
    rows: usize,
    cols: usize,
    s: &[f32],
    scheme: RowLutScheme,
    m: &SqueezeLlmMethod,
) -> Result<(Vec<bool>, Vec<f32>)> {
    m.check()?;
    let scheme = RowLutScheme::new(scheme.bits)?;
    if w.len() != rows * cols || s.len() != cols {
        return Err(SolverError::shape(
            "squeezellm weight and sensitivity",
            format!("{} and {cols}", rows * cols),
            format!("{} and {}", w.len(), s.len()),
        ));
    }
    check_finite(w)?;
    if let Some(i) = s.iter().position(|v| !(v.is_finite() && *v >= 0.0)) {
        return Err(SolverError::param("sensitivity", s[i], "must be finite and >= 0"));
    }
    let numel = rows * cols;
    let sparse = sparse_mask(w, cols, s, m, numel);
    let k = scheme.entries();
    let mut tables = vec![0f32; rows * k];
    tables.par_chunks_mut(k).enumerate().for_each(|(r, t)| {
        let row = &w[r * cols..(r + 1) * cols];
        let mut idx: Vec<usize> = (0..cols).filter(|&c| !sparse[r * cols + c]).collect();
        idx.sort_by(|&a, &b| row[a].total_cmp(&row[b]));
        let values: Vec<f32> = idx.iter().map(|&c| row[c]).collect();
        let weights: Vec<f32> = idx.iter().map(|&c| s[c]).collect();
        t.copy_from_slice(&weighted_kmeans_1d(&values, &weights, k, KMEANS_ITERS));
    });
    Ok((sparse, tables))
}

/// Which weights go to the sparse part: the `outlier_percent` largest `|w|`, then among the rest
/// the `sensitive_percent` largest `s_c * w^2` (ties to the lower flat index).
fn sparse_mask(w: &[f32], cols: usize, s: &[f32], m: &SqueezeLlmMethod, numel: usize) -> Vec<bool> {
    let count = |p: f64| ((p / 100.0 * numel as f64).round() as usize).min(numel);
    let mut mask = vec![false; numel];
    let take = |score: &dyn Fn(usize) -> f32, n: usize, mask: &mut Vec<bool>| {
        if n == 0 {
            return;
        }
        let mut idx: Vec<usize> = (0..numel).filter(|&i| !mask[i]).collect();
        let n = n.min(idx.len());
        // Largest score first, ties to the lower index: a total order, so deterministic.
        let by = |a: &usize, b: &usize| score(*b).total_cmp(&score(*a)).then(a.cmp(b));
        if n < idx.len() {
            idx.select_nth_unstable_by(n, by);
        }
        for &i in &idx[..n] {
            mask[i] = true;
        }
    };
    take(&|i| w[i].abs(), count(m.outlier_percent), &mut mask);
    take(&|i| s[i % cols] * w[i] * w[i], count(m.sensitive_percent), &mut mask);
    mask
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random stream in [-1, 1).
    fn rand(seed: u64, n: usize) -> Vec<f32> {
        let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// Textbook weighted Lloyd: assign each point to its nearest centroid (full scan, ties to the
    /// lower), move each centroid to its cluster's weighted mean, from the same start.
    fn textbook(values: &[f32], weights: &[f32], init: &[f32], iters: usize) -> Vec<f32> {
        let mut c = init.to_vec();
        for _ in 0..iters {
            let (mut sw, mut sv) = (vec![0f64; c.len()], vec![0f64; c.len()]);
            for (&v, &w) in values.iter().zip(weights) {
                let j = rowlut::nearest(&c, v) as usize;
                sw[j] += f64::from(w);
                sv[j] += f64::from(w) * f64::from(v);
            }
            for j in 0..c.len() {
                if sw[j] > 0.0 {
                    c[j] = (sv[j] / sw[j]) as f32;
                }
            }
            c.sort_by(f32::total_cmp);
        }
        c
    }

    fn weighted_sse(values: &[f32], weights: &[f32], c: &[f32]) -> f64 {
        values
            .iter()
            .zip(weights)
            .map(|(&v, &w)| f64::from(w) * f64::from(v - c[rowlut::nearest(c, v) as usize]).powi(2))
            .sum()
    }

    #[test]
    fn kmeans_equals_textbook_lloyd_from_the_same_start() {
        for (seed, n, k) in [(1u64, 40, 4), (2, 200, 8), (3, 577, 16), (4, 16, 16), (5, 9, 8)] {
            let mut values = rand(seed, n);
            values.sort_by(f32::total_cmp);
            let weights: Vec<f32> = rand(seed + 100, n).iter().map(|v| v.abs() + 0.01).collect();
            let init = weighted_kmeans_1d(&values, &weights, k, 0);
            for iters in [1, 3, 30] {
                let ours = weighted_kmeans_1d(&values, &weights, k, iters);
                let theirs = textbook(&values, &weights, &init, iters);
                for (a, b) in ours.iter().zip(&theirs) {
                    assert!(
                        (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
                        "seed {seed} iters {iters}: {ours:?} vs {theirs:?}"
                    );
                }
                // Lloyd never increases the weighted error.
                assert!(weighted_sse(&values, &weights, &ours) <= weighted_sse(&values, &weights, &init) + 1e-9);
            }
        }
    }

    #[test]
    fn weighting_lowers_the_weighted_error_against_plain_kmeans() {
        // Heavy weights on a few points: the weighted fit serves them, plain k-means does not.
        let mut values = rand(7, 300);
        values.sort_by(f32::total_cmp);
        let weights: Vec<f32> = (0..300).map(|i| if i % 37 == 5 { 50.0 } else { 0.1 }).collect();
        let ones = vec![1.0f32; 300];
        for k in [8, 16] {
            let weighted = weighted_kmeans_1d(&values, &weights, k, KMEANS_ITERS);
            let plain = weighted_kmeans_1d(&values, &ones, k, KMEANS_ITERS);
            let (ew, ep) = (weighted_sse(&values, &weights, &weighted), weighted_sse(&values, &weights, &plain));
            assert!(ew < 0.7 * ep, "k {k}: weighted {ew} vs plain {ep}");
        }
    }

    #[test]
    fn sparse_split_takes_the_largest_then_the_most_sensitive() {
        let (rows, cols) = (8, 64);
        let mut w = rand(11, rows * cols);
        w[3 * cols + 7] = 9.0;
        w[5 * cols + 60] = -7.5;
        let mut s = vec![0.5f32; cols];
        s[20] = 1000.0;
        // 2 of 512 = 0.39% outliers, then 1 sensitive: the largest |w| in column 20.
        let m = SqueezeLlmMethod {
            outlier_percent: 2.0 / 512.0 * 100.0,
            sensitive_percent: 1.0 / 512.0 * 100.0,
            error_feedback: false,
        };
        let mask = sparse_mask(&w, cols, &s, &m, rows * cols);
        let picked: Vec<usize> = (0..rows * cols).filter(|&i| mask[i]).collect();
        let col20 = (0..rows).map(|r| r * cols + 20).max_by(|&a, &b| w[a].abs().total_cmp(&w[b].abs())).unwrap();
        let mut want = vec![3 * cols + 7, 5 * cols + 60, col20];
        want.sort_unstable();
        assert_eq!(picked, want);
        let out = squeezellm_quantize(&w, rows, cols, &s, RowLutScheme { bits: Bits::B3 }, &m).unwrap();
        assert_eq!(out.sparse, 3);
        let d = out.qtensor.dequantize();
        for &i in &want {
            assert!((d[i] - w[i]).abs() < 1e-2, "sparse weight {i}: {} vs {}", d[i], w[i]);
        }
        // The outliers did not stretch the codebooks: the dense rows fit better than without the split.
        let none = SqueezeLlmMethod { outlier_percent: 0.0, sensitive_percent: 0.0, error_feedback: false };
        let plain = squeezellm_quantize(&w, rows, cols, &s, RowLutScheme { bits: Bits::B3 }, &none).unwrap();
        assert!(out.weighted_error < plain.weighted_error, "{} vs {}", out.weighted_error, plain.weighted_error);
        assert_eq!(out.qtensor.nbytes(), 3 * 512 / 8 + 2 * 8 * 8 + (4 * 9 + 2 * 3 + 2 * 3));
    }

    #[test]
    fn beats_uniform_tables_and_round_trips_bit_identically() {
        let (rows, cols) = (16, 96);
        let w: Vec<f32> = rand(21, rows * cols).iter().map(|v| v * v * v).collect();
        let s: Vec<f32> = rand(22, cols).iter().map(|v| v.abs() + 0.05).collect();
        for bits in [Bits::B3, Bits::B4] {
            let scheme = RowLutScheme { bits };
            let out = squeezellm_quantize(&w, rows, cols, &s, scheme, &SqueezeLlmMethod::default()).unwrap();
            let uniform = rowlut::quantize(&w, &[rows, cols], scheme).unwrap().dequantize();
            let eu: f64 = w
                .iter()
                .zip(&uniform)
                .enumerate()
                .map(|(i, (a, b))| f64::from(s[i % cols]) * f64::from(a - b).powi(2))
                .sum();
            assert!(out.weighted_error < eu, "{bits:?}: {} vs uniform {eu}", out.weighted_error);
            let bytes = lowbit_core::io::to_bytes([("t", &out.qtensor)], &Default::default()).unwrap();
            let back = lowbit_core::io::from_bytes(&bytes).unwrap();
            assert_eq!(back.tensors["t"], out.qtensor);
            let again = lowbit_core::io::to_bytes([("t", &back.tensors["t"])], &Default::default()).unwrap();
            assert_eq!(again, bytes, "save, load, save: the same bytes");
        }
    }

    /// `sum over tokens of |(W - Q) x|^2`: the layer's output error on the calibration inputs.
    fn output_error(w: &[f32], q: &[f32], x: &[f32], rows: usize, cols: usize) -> f64 {
        let mut e = 0.0;
        for xt in x.chunks(cols) {
            for r in 0..rows {
                let d: f64 = (0..cols).map(|c| f64::from(w[r * cols + c] - q[r * cols + c]) * f64::from(xt[c])).sum();
                e += d * d;
            }
        }
        e
    }

    #[test]
    fn error_feedback_lowers_the_output_error_on_the_same_codebooks() {
        let (rows, cols, tokens) = (24, 64, 256);
        let w = rand(31, rows * cols);
        // Correlated inputs with uneven scales: what GPTQ's feedback exploits.
        let base = rand(32, tokens * cols);
        let x: Vec<f32> = (0..tokens * cols)
            .map(|i| (base[i] + 0.8 * base[i - i % cols]) * (1.0 + (i % cols) as f32 / 16.0))
            .collect();
        let mut h = Hessian::new(cols);
        h.add_batch(&x, tokens).unwrap();
        let s: Vec<f32> = h.diag().iter().map(|&v| v as f32).collect();
        for bits in [Bits::B3, Bits::B4] {
            let scheme = RowLutScheme { bits };
            let m = SqueezeLlmMethod { error_feedback: true, ..Default::default() };
            let fed = squeezellm_feedback(&w, rows, cols, &h, scheme, &m).unwrap();
            let near = squeezellm_quantize(&w, rows, cols, &s, scheme, &m).unwrap();
            // The same tables and the same sparse positions; only the codes (and residuals) differ.
            assert_eq!(fed.qtensor.params(), near.qtensor.params());
            assert_eq!(fed.sparse, near.sparse);
            let (ef, en) = (
                output_error(&w, &fed.qtensor.dequantize(), &x, rows, cols),
                output_error(&w, &near.qtensor.dequantize(), &x, rows, cols),
            );
            assert!(ef < 0.9 * en, "{bits:?}: feedback {ef} vs nearest {en}");
        }
    }

    #[test]
    fn bad_settings_are_refused() {
        let bad = [
            SqueezeLlmMethod { outlier_percent: f64::NAN, ..Default::default() },
            SqueezeLlmMethod { outlier_percent: 101.0, ..Default::default() },
            SqueezeLlmMethod { sensitive_percent: -1.0, ..Default::default() },
            SqueezeLlmMethod { outlier_percent: 60.0, sensitive_percent: 50.0, error_feedback: false },
        ];
        let scheme = Scheme::Int(lowbit_core::IntScheme::group(Bits::B3, 128));
        for m in bad {
            assert!(m.validate(&scheme).is_err(), "{m:?}");
        }
        let m = SqueezeLlmMethod::default();
        assert!(m.validate(&scheme).is_ok());
        for bits in [Bits::B2, Bits::B8] {
            let e = m.validate(&Scheme::Int(lowbit_core::IntScheme::group(bits, 128))).unwrap_err();
            assert!(e.to_string().contains("3- or 4-bit"), "{e}");
        }
        let w = vec![0.5f32; 8];
        assert!(squeezellm_quantize(&w, 2, 4, &[1.0, f32::NAN, 1.0, 1.0], RowLutScheme { bits: Bits::B4 }, &m).is_err());
        let mut stats = DiagStats::new(4);
        assert!(stats.add_batch(&[1.0, 2.0, f32::INFINITY, 0.0], 1).is_err());
        stats.add_batch(&[1.0, 2.0, 3.0, 0.0, 3.0, 2.0, 1.0, 0.0], 2).unwrap();
        assert_eq!(stats.sensitivity(), [5.0, 4.0, 5.0, 0.0]);
    }
}
