//! AWQ (Lin et al. 2023, "AWQ: Activation-aware Weight Quantization", Section 3.2) for one group
//! of linear layers that share an input `X[tokens, cols]` (q/k/v, or gate/up, ...).
//!
//! 1. Scale search (llm-awq `auto_scale`): `s_x = mean_t |x_tc|` per input channel; for
//!    `alpha = i / n_grid`, `i = 0..n_grid` (20 points, 1 excluded, as llm-awq does),
//!    `s = max(s_x^alpha, 1e-4)`, normalised `s / sqrt(max(s) * min(s))`; each layer is
//!    quantized as `Q(W diag(s))` (lowbit RTN, the requested scheme) and the loss is the mean
//!    squared output error `||X W^T - (X / s) Q(W s)^T||^2 / (tokens * sum rows)` over the group's
//!    layers. The alpha with the least loss wins (first on ties).
//! 2. Clipping search (llm-awq `auto_clip_layer`), per layer on the scaled weights `W s` and
//!    activations `X / s`: for each row and quantization group,
//!    `max_val = absmax * (1 - i / clip_grid)` for `i < max_shrink * clip_grid`; the weights are
//!    clamped to `[-max_val, max_val]` and quantized, and the `max_val` with the least mean
//!    squared partial output of that group wins.
//! 3. The result: `Q(clamp(W s, +-max_val))` per layer, and `s`, which the pipeline folds into the
//!    preceding operation (divide the RMSNorm weight, or the previous linear's output rows, by `s`).
//!
//! As a pipeline method ([`AwqMethod`]) the clipping policy is llm-awq's, refined: every layer
//! but q and k is clipped (attention scores are too sensitive), and with zero points the lower
//! and upper end of each range are refined separately ([`refine_ranges`]).
//!
//! Both searches only ever need `s_x` and the second moment `M = X^T X / tokens`: with
//! `D = W - Q(W s) / s`, the output error is `||X D^T||^2 / tokens = tr(D M D^T)`, and a group's
//! partial output error under `X / s` is the group's diagonal block of `diag(1/s) M diag(1/s)`.
//! So [`AwqStats`] accumulates them once, batch by batch (a symmetric rank-k update, as GPTQ's
//! Hessian), and every grid point costs `rows * cols^2` flops instead of `tokens * rows * cols`:
//! the searches see every calibration token (llm-awq subsamples 512 for clipping) at a fraction
//! of the cost, and no activations are kept.

use crate::gptq::group_layout;
use crate::hessian::{check_finite_activations, Hessian, HessianPrecision};
use crate::method::{
    downcast, int_scheme, CalibShape, FoldTarget, Group, GroupSolution, LayerWeight, MethodInfo, QuantMethod, Role,
    SolvedLayer, Statistics,
};
use crate::par::faer_par;
use crate::report::LayerReport;
use crate::{Result, SolverError};
use faer::{Accum, Mat, MatRef};
use lowbit_core::clock::Instant;
use lowbit_core::{check_finite, rtn, IntScheme, QTensor, Scheme};
use serde_json::{Map, Value};

/// AWQ settings (llm-awq defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AwqConfig {
    /// Output format.
    pub scheme: IntScheme,
    /// Grid points for alpha in `[0, 1)` (20).
    pub n_grid: usize,
    /// Run the clipping search (llm-awq skips it for q and k projections).
    pub clip: bool,
    /// Grid resolution of the clipping search (20).
    pub clip_grid: usize,
    /// Largest fraction of the range removed by clipping (0.5).
    pub max_shrink: f32,
    /// Scales shared by the query heads of one KV head (see [`HeadTie`]); `None`: per channel.
    pub tie: Option<HeadTie>,
}

/// The input of o_proj under grouped-query attention: `heads` query heads of `head_dim` lanes,
/// every `heads / kv_heads` consecutive ones reading the same value head. A scale folded into
/// v_proj's output row `(k, d)` reaches lane `d` of every query head of group `k`, so o_proj's
/// scales must be equal across those heads: the search ties `s_x` by averaging it over them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeadTie {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (divides `heads`).
    pub kv_heads: usize,
    /// Lanes per head.
    pub head_dim: usize,
}

impl HeadTie {
    /// `v` (one value per query-head lane) averaged over the heads of each KV group, broadcast
    /// back to every head of the group.
    pub fn tie(&self, v: &[f32]) -> Vec<f32> {
        let (group, hd) = (self.heads / self.kv_heads, self.head_dim);
        let mut out = vec![0.0f32; v.len()];
        for k in 0..self.kv_heads {
            for d in 0..hd {
                let mean = (0..group).map(|g| v[(k * group + g) * hd + d]).sum::<f32>() / group as f32;
                (0..group).for_each(|g| out[(k * group + g) * hd + d] = mean);
            }
        }
        out
    }

    /// Per value-head lane (v_proj's output rows), the scale of its group.
    pub fn per_kv_lane(&self, s: &[f32]) -> Vec<f32> {
        let (group, hd) = (self.heads / self.kv_heads, self.head_dim);
        (0..self.kv_heads * hd).map(|i| s[(i / hd) * group * hd + i % hd]).collect()
    }
}

impl AwqConfig {
    /// llm-awq's defaults for a scheme.
    pub fn new(scheme: IntScheme) -> Self {
        AwqConfig { scheme, n_grid: 20, clip: true, clip_grid: 20, max_shrink: 0.5, tie: None }
    }
}

/// The result of AWQ on a group of layers.
#[derive(Clone, Debug)]
pub struct AwqOutput {
    /// Per input channel `s`: the quantized tensors hold `W diag(s)`; divide the input by `s`.
    pub scales: Vec<f32>,
    /// The chosen alpha.
    pub alpha: f32,
    /// The loss of every grid point, in grid order.
    pub grid_losses: Vec<f64>,
    /// Per layer, the clipping bound of each `[row, group]` (row-major); `absmax` where clipping
    /// did not help or was off.
    pub clip: Vec<Vec<f32>>,
    /// Per layer, `Q(clamp(W diag(s), +-clip))`.
    pub qtensors: Vec<QTensor>,
    /// `loss`: mean squared output error of the final quantized layers (scales and clipping).
    pub report: LayerReport,
}

/// What AWQ needs from a group's input activations: per channel `sum_t |x_tc|` and the second
/// moment `X^T X`, accumulated batch by batch.
#[derive(Clone, Debug)]
pub struct AwqStats {
    abs_sum: Vec<f64>,
    /// `2/N X^T X` (GPTQ's Hessian of the same input).
    hessian: Hessian,
}

impl AwqStats {
    /// Empty statistics for inputs of `cols` channels.
    pub fn new(cols: usize) -> Self {
        AwqStats { abs_sum: vec![0.0; cols], hessian: Hessian::with_precision(cols, HessianPrecision::F32Chunks) }
    }

    /// Statistics of one row-major batch `x[tokens, cols]`, second moment in f64.
    pub fn from_activations(x: &[f32], tokens: usize, cols: usize) -> Result<Self> {
        let mut st = AwqStats { abs_sum: vec![0.0; cols], hessian: Hessian::new(cols) };
        st.add_batch(x, tokens)?;
        Ok(st)
    }

    /// Adds a row-major batch `x[tokens, cols]`; rejects NaN/Inf (naming the first).
    pub fn add_batch(&mut self, x: &[f32], tokens: usize) -> Result<()> {
        let cols = self.cols();
        if cols == 0 || x.len() != tokens * cols {
            return Err(SolverError::shape("awq activations", format!("{tokens} x {cols}"), x.len()));
        }
        check_finite_activations("awq", x, cols)?;
        self.hessian.add_batch(x, tokens)?;
        for row in x.chunks_exact(cols) {
            self.abs_sum.iter_mut().zip(row).for_each(|(a, &v)| *a += f64::from(v.abs()));
        }
        Ok(())
    }

    /// Input channels.
    pub fn cols(&self) -> usize {
        self.abs_sum.len()
    }

    /// Tokens seen.
    pub fn tokens(&self) -> u64 {
        self.hessian.tokens()
    }

    /// `s_x`: mean absolute activation per input channel.
    pub fn activation_scale(&self) -> Vec<f32> {
        let n = self.tokens().max(1) as f64;
        self.abs_sum.iter().map(|a| (a / n) as f32).collect()
    }

    /// `X^T X / tokens`, full and symmetric, f32.
    fn second_moment(&self) -> Mat<f32> {
        let h = self.hessian.matrix();
        Mat::from_fn(h.nrows(), h.ncols(), |i, j| (h[(i, j)] * 0.5) as f32)
    }
}

fn validate(stats: &AwqStats, layers: &[LayerWeight], scheme: IntScheme) -> Result<()> {
    if stats.tokens() == 0 {
        return Err(SolverError::NoCalibrationData { op: "awq" });
    }
    validate_layers(stats.cols(), layers, scheme)
}

fn validate_layers(cols: usize, layers: &[LayerWeight], scheme: IntScheme) -> Result<()> {
    if layers.is_empty() {
        return Err(SolverError::shape("awq layers", "at least one layer", 0));
    }
    for l in layers {
        if l.rows == 0 || l.w.len() != l.rows * cols {
            return Err(SolverError::shape("awq weight", format!("{} x {cols}", l.rows), l.w.len()));
        }
        check_finite(l.w)?;
    }
    scheme.granularity.validate(cols, scheme.bits)?;
    Ok(())
}

/// Validates raw activations for the oracle.
fn validate_activations(x: &[f32], tokens: usize, cols: usize) -> Result<()> {
    if tokens == 0 {
        return Err(SolverError::NoCalibrationData { op: "awq" });
    }
    if cols == 0 || x.len() != tokens * cols {
        return Err(SolverError::shape("awq activations", format!("{tokens} x {cols}"), x.len()));
    }
    check_finite_activations("awq", x, cols)
}

/// `s_x`: mean absolute activation per input channel (f64 sums).
pub fn activation_scale(x: &[f32], cols: usize) -> Vec<f32> {
    let tokens = x.len() / cols.max(1);
    let mut acc = vec![0.0f64; cols];
    for row in x.chunks_exact(cols) {
        for (a, &v) in acc.iter_mut().zip(row) {
            *a += f64::from(v.abs());
        }
    }
    acc.into_iter().map(|a| (a / tokens.max(1) as f64) as f32).collect()
}

/// `s = max(s_x^alpha, 1e-4) / sqrt(max(s) * min(s))` (f32, as llm-awq).
pub fn scales_for_alpha(s_x: &[f32], alpha: f32) -> Vec<f32> {
    let s: Vec<f32> = s_x.iter().map(|&v| v.powf(alpha).max(1e-4)).collect();
    let (lo, hi) = s.iter().fold((f32::INFINITY, 0.0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let norm = (hi * lo).sqrt();
    s.into_iter().map(|v| v / norm).collect()
}

/// `W diag(s)`, row-major.
fn scale_columns(w: &[f32], s: &[f32]) -> Vec<f32> {
    w.chunks_exact(s.len()).flat_map(|row| row.iter().zip(s).map(|(a, b)| a * b)).collect()
}

/// `sum_r d_r^T M d_r` for the rows `d_r` of the row-major `delta[rows, cols]`: the squared
/// output error per token, `||X D^T||^2 / tokens`, when `m = X^T X / tokens`.
fn output_sq_error(m: MatRef<'_, f32>, delta: &[f32], rows: usize) -> f64 {
    let cols = m.ncols();
    let d = MatRef::from_row_major_slice(delta, rows, cols);
    let mut dm = Mat::<f32>::zeros(rows, cols);
    faer::linalg::matmul::matmul(dm.as_mut(), Accum::Replace, d, m, 1.0f32, faer_par());
    (0..cols)
        .map(|c| dm.col(c).iter().zip(d.col(c).iter()).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum::<f64>())
        .sum()
}

/// `W - Q(W diag(s)) / s`, given the dequantized `Q(W diag(s))`.
fn scaled_delta(w: &[f32], q: &[f32], s: &[f32]) -> Vec<f32> {
    let cols = s.len();
    w.iter().zip(q).enumerate().map(|(i, (&w, &qv))| w - qv / s[i % cols]).collect()
}

/// Mean squared output error of the group when each layer is replaced by `Q(W diag(s)) / s`.
pub fn scale_loss(stats: &AwqStats, layers: &[LayerWeight], scheme: IntScheme, s: &[f32]) -> Result<f64> {
    validate(stats, layers, scheme)?;
    loss_with(stats.second_moment().as_ref(), layers, scheme, s)
}

fn loss_with(m: MatRef<'_, f32>, layers: &[LayerWeight], scheme: IntScheme, s: &[f32]) -> Result<f64> {
    let cols = s.len();
    let (mut total, mut count) = (0.0, 0usize);
    for l in layers {
        let q = rtn::quantize(&scale_columns(l.w, s), &[l.rows, cols], scheme)?.dequantize();
        total += output_sq_error(m, &scaled_delta(l.w, &q, s), l.rows);
        count += l.rows;
    }
    Ok(total / count as f64)
}

/// The scale search alone: `(alpha, s, grid losses)`.
pub fn search_scales(
    stats: &AwqStats,
    layers: &[LayerWeight],
    scheme: IntScheme,
    n_grid: usize,
) -> Result<(f32, Vec<f32>, Vec<f64>)> {
    search_scales_tied(stats, layers, scheme, n_grid, None)
}

/// [`search_scales`] with scales tied across the query heads of each KV head.
pub fn search_scales_tied(
    stats: &AwqStats,
    layers: &[LayerWeight],
    scheme: IntScheme,
    n_grid: usize,
    tie: Option<HeadTie>,
) -> Result<(f32, Vec<f32>, Vec<f64>)> {
    if let Some(t) = tie {
        if t.kv_heads == 0 || t.heads % t.kv_heads != 0 || t.heads * t.head_dim != stats.cols() {
            return Err(SolverError::shape("awq head tie", stats.cols(), t.heads * t.head_dim));
        }
    }
    if n_grid == 0 {
        return Err(SolverError::param("n_grid", 0, "it must be at least 1"));
    }
    validate(stats, layers, scheme)?;
    let m = stats.second_moment();
    let s_x = stats.activation_scale();
    let s_x = tie.map_or(s_x.clone(), |t| t.tie(&s_x));
    let mut best = (f64::INFINITY, 0.0f32, vec![1.0f32; stats.cols()]);
    let mut losses = Vec::with_capacity(n_grid);
    for i in 0..n_grid {
        let alpha = i as f32 / n_grid as f32;
        let s = scales_for_alpha(&s_x, alpha);
        let loss = loss_with(m.as_ref(), layers, scheme, &s)?;
        losses.push(loss);
        if loss < best.0 {
            best = (loss, alpha, s);
        }
    }
    Ok((best.1, best.2, losses))
}

/// `w` with each `[row, group]` clamped to its `(lo, hi)`.
fn clamp_ranges(w: &[f32], cols: usize, scheme: IntScheme, ranges: &[(f32, f32)]) -> Vec<f32> {
    let (g, groups) = group_layout(scheme.granularity, cols);
    w.iter()
        .enumerate()
        .map(|(i, &v)| {
            let (lo, hi) = ranges[(i / cols) * groups + (i % cols) / g];
            v.clamp(lo, hi)
        })
        .collect()
}

/// `(min, max)` of each `[row, group]`.
fn group_min_max(w: &[f32], rows: usize, cols: usize, scheme: IntScheme) -> Vec<(f32, f32)> {
    let (g, groups) = group_layout(scheme.granularity, cols);
    (0..rows * groups)
        .map(|k| {
            let (r, grp) = (k / groups, k % groups);
            w[r * cols + grp * g..r * cols + ((grp + 1) * g).min(cols)]
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)))
        })
        .collect()
}

/// Scores clipping ranges of the scaled weights `ws[rows, cols]` on the scaled inputs `X / s`:
/// for each candidate `i < n`, every `[row, group]` k is clamped to `candidate(i, k)`, quantized,
/// and its partial output error `d^T M_g d` (`M_g`: the group's block of the second moment of
/// `X / s`) compared; returns the best range per `[row, group]` (first on ties).
fn best_ranges(
    ws: &[f32],
    rows: usize,
    stats: &AwqStats,
    s: &[f32],
    scheme: IntScheme,
    n: usize,
    candidate: impl Fn(usize, usize) -> (f32, f32),
) -> Result<Vec<(f32, f32)>> {
    let cols = stats.cols();
    let (g, groups) = group_layout(scheme.granularity, cols);
    let m = stats.second_moment();
    let blocks: Vec<Mat<f32>> = (0..groups)
        .map(|grp| {
            let (a, b) = (grp * g, ((grp + 1) * g).min(cols));
            Mat::<f32>::from_fn(b - a, b - a, |i, j| m[(a + i, a + j)] / (s[a + i] * s[a + j]))
        })
        .collect();
    let mut best = vec![(0.0f32, 0.0f32); rows * groups];
    let mut best_err = vec![f64::INFINITY; rows * groups];
    let mut delta = vec![0.0f32; rows * cols];
    for i in 0..n {
        let ranges: Vec<(f32, f32)> = (0..rows * groups).map(|k| candidate(i, k)).collect();
        let q = rtn::quantize(&clamp_ranges(ws, cols, scheme, &ranges), &[rows, cols], scheme)?.dequantize();
        for (d, (&w, &qv)) in delta.iter_mut().zip(ws.iter().zip(&q)) {
            *d = w - qv;
        }
        for (grp, mg) in blocks.iter().enumerate() {
            let (a, b) = (grp * g, ((grp + 1) * g).min(cols));
            let dg = MatRef::from_row_major_slice(&delta, rows, cols).subcols(a, b - a);
            let mut dm = Mat::<f32>::zeros(rows, b - a);
            faer::linalg::matmul::matmul(dm.as_mut(), Accum::Replace, dg, mg.as_ref(), 1.0f32, faer_par());
            for r in 0..rows {
                let err: f64 = dm.row(r).iter().zip(dg.row(r).iter()).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum();
                let k = r * groups + grp;
                if err < best_err[k] {
                    best_err[k] = err;
                    best[k] = ranges[k];
                }
            }
        }
    }
    Ok(best)
}

fn check_clip_shapes(ws: &[f32], rows: usize, cols: usize, s: &[f32]) -> Result<()> {
    if ws.len() != rows * cols || s.len() != cols {
        return Err(SolverError::shape("awq clip", format!("{rows} x {cols} weights, {cols} scales"), ws.len()));
    }
    Ok(())
}

/// llm-awq's `auto_clip_layer` on the scaled weights `ws = W diag(s)` of one layer, for the
/// scaled inputs `X / s`: the best clipping bound per `[row, group]` (weights clamped to
/// `+-bound`).
pub fn search_clip(ws: &[f32], rows: usize, stats: &AwqStats, s: &[f32], cfg: &AwqConfig) -> Result<Vec<f32>> {
    let cols = stats.cols();
    check_clip_shapes(ws, rows, cols, s)?;
    let absmax: Vec<f32> = group_min_max(ws, rows, cols, cfg.scheme).iter().map(|&(lo, hi)| hi.max(-lo)).collect();
    let steps = ((cfg.max_shrink * cfg.clip_grid as f32) as usize).max(1);
    let shrink = |i: usize| 1.0 - i as f32 / cfg.clip_grid as f32;
    let best = best_ranges(ws, rows, stats, s, cfg.scheme, steps, |i, k| {
        let m = absmax[k] * shrink(i);
        (-m, m)
    })?;
    Ok(best.into_iter().map(|(_, hi)| hi).collect())
}

/// Refines symmetric clipping bounds into a range per `[row, group]` for asymmetric codes: from
/// `[max(min, -bound), min(max, bound)]`, first the lower end, then the upper end is shrunk
/// towards zero over the same grid as [`search_clip`], each step keeping the range with the least
/// partial output error. It never does worse than the bounds it starts from (step 0 is the
/// starting range).
pub fn refine_ranges(
    ws: &[f32],
    rows: usize,
    stats: &AwqStats,
    s: &[f32],
    cfg: &AwqConfig,
    bounds: &[f32],
) -> Result<Vec<(f32, f32)>> {
    let cols = stats.cols();
    check_clip_shapes(ws, rows, cols, s)?;
    let start: Vec<(f32, f32)> = group_min_max(ws, rows, cols, cfg.scheme)
        .iter()
        .zip(bounds)
        .map(|(&(lo, hi), &b)| (lo.max(-b), hi.min(b)))
        .collect();
    let steps = ((cfg.max_shrink * cfg.clip_grid as f32) as usize).max(1);
    let shrink = |i: usize| 1.0 - i as f32 / cfg.clip_grid as f32;
    let lower = best_ranges(ws, rows, stats, s, cfg.scheme, steps, |i, k| (start[k].0 * shrink(i), start[k].1))?;
    let both = best_ranges(ws, rows, stats, s, cfg.scheme, steps, |i, k| (lower[k].0, lower[k].1 * shrink(i)))?;
    Ok(both)
}

/// `w` clamped to the ranges and quantized.
pub fn quantize_ranges(
    ws: &[f32],
    rows: usize,
    cols: usize,
    scheme: IntScheme,
    ranges: &[(f32, f32)],
) -> Result<QTensor> {
    Ok(rtn::quantize(&clamp_ranges(ws, cols, scheme, ranges), &[rows, cols], scheme)?)
}

/// AWQ on one group of layers sharing an input, from that input's statistics.
pub fn awq_quantize(stats: &AwqStats, layers: &[LayerWeight], cfg: &AwqConfig) -> Result<AwqOutput> {
    let start = Instant::now();
    if cfg.clip && (cfg.clip_grid == 0 || !(cfg.max_shrink >= 0.0 && cfg.max_shrink < 1.0)) {
        return Err(SolverError::param(
            "clip_grid / max_shrink",
            format!("{} / {}", cfg.clip_grid, cfg.max_shrink),
            "need clip_grid >= 1 and 0 <= max_shrink < 1",
        ));
    }
    let scheme = cfg.scheme;
    let cols = stats.cols();
    let (alpha, s, grid_losses) = search_scales_tied(stats, layers, scheme, cfg.n_grid, cfg.tie)?;
    let m = stats.second_moment();
    let mut clip = Vec::with_capacity(layers.len());
    let mut qtensors = Vec::with_capacity(layers.len());
    let (mut total, mut count) = (0.0f64, 0usize);
    for l in layers {
        let ws = scale_columns(l.w, &s);
        let bounds = if cfg.clip {
            search_clip(&ws, l.rows, stats, &s, cfg)?
        } else {
            group_min_max(&ws, l.rows, cols, scheme).iter().map(|&(lo, hi)| hi.max(-lo)).collect()
        };
        let qt = quantize_ranges(&ws, l.rows, cols, scheme, &bounds.iter().map(|&b| (-b, b)).collect::<Vec<_>>())?;
        total += output_sq_error(m.as_ref(), &scaled_delta(l.w, &qt.dequantize(), &s), l.rows);
        count += l.rows;
        clip.push(bounds);
        qtensors.push(qt);
    }
    let report = LayerReport {
        method: "awq",
        loss: total / count as f64,
        damping: None,
        dead_inputs: 0,
        seconds: start.elapsed().as_secs_f64(),
    };
    Ok(AwqOutput { scales: s, alpha, grid_losses, clip, qtensors, report })
}

/// The slow oracle for the scale search: evaluates every grid point directly as
/// `mean (X W^T - (X / s) Q(W s)^T)^2` with scalar f64 loops, returning `(alpha, losses)`.
/// Tests use it to prove that [`search_scales`] picks the exhaustive minimum.
pub fn brute_force_alpha(
    x: &[f32],
    tokens: usize,
    cols: usize,
    layers: &[LayerWeight],
    scheme: IntScheme,
    n_grid: usize,
) -> Result<(f32, Vec<f64>)> {
    validate_activations(x, tokens, cols)?;
    validate_layers(cols, layers, scheme)?;
    let s_x = activation_scale(x, cols);
    let mut losses = Vec::new();
    let (mut best, mut best_alpha) = (f64::INFINITY, 0.0f32);
    for i in 0..n_grid {
        let alpha = i as f32 / n_grid as f32;
        let s = scales_for_alpha(&s_x, alpha);
        let (mut total, mut count) = (0.0f64, 0usize);
        for l in layers {
            let q = rtn::quantize(&scale_columns(l.w, &s), &[l.rows, cols], scheme)?.dequantize();
            for t in 0..tokens {
                let xt = &x[t * cols..(t + 1) * cols];
                for r in 0..l.rows {
                    let (mut org, mut new) = (0.0f64, 0.0f64);
                    for c in 0..cols {
                        org += f64::from(xt[c]) * f64::from(l.w[r * cols + c]);
                        new += f64::from(xt[c] / s[c]) * f64::from(q[r * cols + c]);
                    }
                    total += (org - new) * (org - new);
                    count += 1;
                }
            }
        }
        let loss = total / count as f64;
        losses.push(loss);
        if loss < best {
            best = loss;
            best_alpha = alpha;
        }
    }
    Ok((best_alpha, losses))
}

/// AWQ as a pipeline method: scales searched per group and folded into the preceding op, then
/// the clipping policy of [`AwqMethod::solve_group`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AwqMethod {
    /// Calibration windows (the first ones) whose statistics the searches see (all 128 by
    /// default; llm-awq used 32, its cost growing with the tokens, lowbit's does not).
    pub samples: usize,
}

impl Default for AwqMethod {
    fn default() -> Self {
        AwqMethod { samples: 128 }
    }
}

/// [`AwqStats`] of at most `max_tokens` tokens (the first ones); later batches are only checked.
struct AwqCollector {
    stats: AwqStats,
    max_tokens: usize,
}

impl Statistics for AwqCollector {
    fn add_batch(&mut self, x: &[f32], tokens: usize) -> Result<()> {
        let cols = self.stats.cols();
        if x.len() != tokens * cols {
            return Err(SolverError::shape("awq activations", format!("{tokens} x {cols}"), x.len()));
        }
        check_finite_activations("awq", x, cols)?;
        let take = self.max_tokens.saturating_sub(self.stats.tokens() as usize).min(tokens);
        self.stats.add_batch(&x[..take * cols], take)
    }
}

impl QuantMethod for AwqMethod {
    fn info(&self) -> MethodInfo {
        MethodInfo { name: "awq", aliases: &[], calibrated: true }
    }
    fn validate(&self, scheme: &Scheme) -> Result<()> {
        int_scheme(scheme, "awq")?;
        if self.samples == 0 {
            return Err(SolverError::param("awq_samples", 0, "it must be at least 1"));
        }
        Ok(())
    }
    fn params(&self, calib: CalibShape) -> Map<String, Value> {
        let d = AwqConfig::new(IntScheme::group(lowbit_core::Bits::B4, 128));
        Map::from_iter([
            ("awq_samples".to_string(), self.samples.min(calib.nsamples).into()),
            ("n_grid".to_string(), d.n_grid.into()),
            (
                "clip".to_string(),
                format!("llm-awq auto_clip (not q/k), grid {}, max_shrink {}, 512 tokens", d.clip_grid, d.max_shrink)
                    .into(),
            ),
        ])
    }
    fn statistics(&self, cols: usize, calib: CalibShape) -> Box<dyn Statistics> {
        let max_tokens = self.samples.min(calib.nsamples) * calib.seqlen;
        Box::new(AwqCollector { stats: AwqStats::new(cols), max_tokens })
    }
    /// The scale search over the whole group (scales tied across query heads when they fold into
    /// v's rows under GQA), then llm-awq's clipping of every layer but q and k on the scaled
    /// weights; with zero points both ends of each range are refined.
    fn solve_group(&self, group: &Group, stats: &dyn Statistics) -> Result<GroupSolution> {
        let st = &downcast::<AwqCollector>(stats, "awq")?.stats;
        let (scheme, cols) = (int_scheme(&group.scheme, "awq")?, group.cols);
        if group.fold == FoldTarget::None {
            return Err(SolverError::param("fold target", "none", "AWQ folds its scales into the preceding op"));
        }
        let layers: Vec<LayerWeight> = group.layers.iter().map(|l| LayerWeight { w: l.w, rows: l.rows }).collect();
        let mut scfg = AwqConfig::new(scheme);
        scfg.clip = false;
        if let FoldTarget::TiedHeadRows(tie) = group.fold {
            scfg.tie = Some(tie);
        }
        let out = awq_quantize(st, &layers, &scfg)?;
        let s = out.scales;
        let ccfg = AwqConfig::new(scheme);
        let start = Instant::now();
        let mut qts = out.qtensors;
        for (i, l) in group.layers.iter().enumerate() {
            if matches!(l.role, Role::Query | Role::Key) {
                continue;
            }
            let ws = scale_columns(l.w, &s);
            let bounds = search_clip(&ws, l.rows, st, &s, &ccfg)?;
            // With zero points the two ends of a range need not shrink alike: refine each.
            let ranges = if scheme.symmetric {
                bounds.iter().map(|&m| (-m, m)).collect()
            } else {
                refine_ranges(&ws, l.rows, st, &s, &ccfg, &bounds)?
            };
            qts[i] = quantize_ranges(&ws, l.rows, cols, scheme, &ranges)?;
        }
        let mut report = out.report;
        report.seconds += start.elapsed().as_secs_f64();
        let layers = qts
            .into_iter()
            .map(|qtensor| SolvedLayer { qtensor, report: report.clone(), alpha: Some(out.alpha) })
            .collect();
        Ok(GroupSolution { layers, fold: Some(s), int8_activations: false })
    }
}
