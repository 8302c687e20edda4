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
//!    activations `X / s`, over a subsample of tokens (every `tokens / clip_tokens`-th): for each
//!    row and quantization group, `max_val = absmax * (1 - i / clip_grid)` for
//!    `i < max_shrink * clip_grid`; the weights are clamped to `[-max_val, max_val]` and quantized,
//!    and the `max_val` with the least mean squared partial output of that group wins.
//! 3. The result: `Q(clamp(W s, +-max_val))` per layer, and `s`, which the pipeline folds into the
//!    preceding operation (divide the RMSNorm weight, or the previous linear's output rows, by `s`).
//!
//! The output error is evaluated as one GEMM `X (W - Q(W s) / s)^T` per layer and grid point,
//! which equals `X W^T - (X / s) Q(W s)^T` and avoids cancelling two large products.

use crate::gptq::group_layout;
use crate::hessian::check_finite_activations;
use crate::par::faer_par;
use crate::report::{LayerReport, Method};
use crate::{Result, SolverError};
use faer::{Accum, Mat, MatRef};
use lowbit_core::{check_finite, rtn, IntScheme, QTensor};
use std::time::Instant;

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
    /// Tokens sampled for the clipping search (512).
    pub clip_tokens: usize,
}

impl AwqConfig {
    /// llm-awq's defaults for a scheme.
    pub fn new(scheme: IntScheme) -> Self {
        AwqConfig { scheme, n_grid: 20, clip: true, clip_grid: 20, max_shrink: 0.5, clip_tokens: 512 }
    }
}

/// One layer of the group: row-major `w[rows, cols]`.
#[derive(Clone, Copy, Debug)]
pub struct AwqLayer<'a> {
    /// The weight, `[rows, cols]`, row-major.
    pub w: &'a [f32],
    /// Output features.
    pub rows: usize,
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

fn validate(x: &[f32], tokens: usize, cols: usize, layers: &[AwqLayer], scheme: IntScheme) -> Result<()> {
    if tokens == 0 {
        return Err(SolverError::NoCalibrationData { op: "awq" });
    }
    if cols == 0 || x.len() != tokens * cols {
        return Err(SolverError::shape("awq activations", format!("{tokens} x {cols}"), x.len()));
    }
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

/// `sum_t sum_r (X (W - Weff)^T)_tr^2` with `delta = W - Weff` row-major `[rows, cols]`.
fn output_sq_error(x: MatRef<'_, f32>, delta: &[f32], rows: usize) -> f64 {
    let cols = x.ncols();
    let d = MatRef::from_row_major_slice(delta, rows, cols);
    let mut out = Mat::<f32>::zeros(x.nrows(), rows);
    faer::linalg::matmul::matmul(out.as_mut(), Accum::Replace, x, d.transpose(), 1.0f32, faer_par());
    out.col_iter().map(|c| c.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>()).sum()
}

/// Mean squared output error of the group when each layer is replaced by `Q(W diag(s)) / s`.
pub fn scale_loss(
    x: &[f32],
    tokens: usize,
    cols: usize,
    layers: &[AwqLayer],
    scheme: IntScheme,
    s: &[f32],
) -> Result<f64> {
    validate(x, tokens, cols, layers, scheme)?;
    let xm = MatRef::from_row_major_slice(x, tokens, cols);
    let mut total = 0.0;
    let mut count = 0usize;
    for l in layers {
        let q = rtn::quantize(&scale_columns(l.w, s), &[l.rows, cols], scheme)?.dequantize();
        let delta: Vec<f32> = l.w.iter().zip(&q).enumerate().map(|(i, (&w, &qv))| w - qv / s[i % cols]).collect();
        total += output_sq_error(xm, &delta, l.rows);
        count += tokens * l.rows;
    }
    Ok(total / count as f64)
}

/// The scale search alone: `(alpha, s, grid losses)`.
pub fn search_scales(
    x: &[f32],
    tokens: usize,
    cols: usize,
    layers: &[AwqLayer],
    scheme: IntScheme,
    n_grid: usize,
) -> Result<(f32, Vec<f32>, Vec<f64>)> {
    if n_grid == 0 {
        return Err(SolverError::param("n_grid", 0, "it must be at least 1"));
    }
    validate(x, tokens, cols, layers, scheme)?;
    let s_x = activation_scale(x, cols);
    let mut best = (f64::INFINITY, 0.0f32, vec![1.0f32; cols]);
    let mut losses = Vec::with_capacity(n_grid);
    for i in 0..n_grid {
        let alpha = i as f32 / n_grid as f32;
        let s = scales_for_alpha(&s_x, alpha);
        let loss = scale_loss(x, tokens, cols, layers, scheme, &s)?;
        losses.push(loss);
        if loss < best.0 {
            best = (loss, alpha, s);
        }
    }
    Ok((best.1, best.2, losses))
}

/// llm-awq's `auto_clip_layer` on scaled weights `w[rows, cols]` and scaled activations:
/// the best clipping bound per `[row, group]`.
pub fn search_clip(
    ws: &[f32],
    rows: usize,
    xs: &[f32],
    tokens: usize,
    cols: usize,
    cfg: &AwqConfig,
) -> Result<Vec<f32>> {
    let scheme = cfg.scheme;
    let (g, groups) = group_layout(scheme.granularity, cols);
    let step = (tokens / cfg.clip_tokens.max(1)).max(1);
    let sub: Vec<f32> = xs.chunks_exact(cols).step_by(step).flatten().copied().collect();
    let t = sub.len() / cols;
    let xm = MatRef::from_row_major_slice(&sub, t, cols);
    let absmax: Vec<f32> = (0..rows * groups)
        .map(|k| {
            let (r, grp) = (k / groups, k % groups);
            ws[r * cols + grp * g..r * cols + ((grp + 1) * g).min(cols)].iter().fold(0.0f32, |m, v| m.max(v.abs()))
        })
        .collect();
    let mut best = absmax.clone();
    let mut best_err = vec![f64::INFINITY; rows * groups];
    let steps = (cfg.max_shrink * cfg.clip_grid as f32) as usize;
    let mut delta = vec![0.0f32; rows * cols];
    for i_s in 0..steps.max(1) {
        let shrink = 1.0 - i_s as f32 / cfg.clip_grid as f32;
        let max_val: Vec<f32> = absmax.iter().map(|m| m * shrink).collect();
        let clamped: Vec<f32> = ws
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let m = max_val[(i / cols) * groups + (i % cols) / g];
                w.clamp(-m, m)
            })
            .collect();
        let q = rtn::quantize(&clamped, &[rows, cols], scheme)?.dequantize();
        for (d, (&w, &qv)) in delta.iter_mut().zip(ws.iter().zip(&q)) {
            *d = w - qv;
        }
        for grp in 0..groups {
            let (a, b) = (grp * g, ((grp + 1) * g).min(cols));
            let xg = xm.subcols(a, b - a);
            let dg = MatRef::from_row_major_slice(&delta, rows, cols).subcols(a, b - a);
            let mut out = Mat::<f32>::zeros(t, rows);
            faer::linalg::matmul::matmul(out.as_mut(), Accum::Replace, xg, dg.transpose(), 1.0f32, faer_par());
            for r in 0..rows {
                let err = out.col(r).iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / t as f64;
                let k = r * groups + grp;
                if err < best_err[k] {
                    best_err[k] = err;
                    best[k] = max_val[k];
                }
            }
        }
    }
    Ok(best)
}

/// AWQ on one group of layers sharing the input `x[tokens, cols]` (row-major).
pub fn awq_quantize(x: &[f32], tokens: usize, cols: usize, layers: &[AwqLayer], cfg: &AwqConfig) -> Result<AwqOutput> {
    let start = Instant::now();
    if cfg.clip && (cfg.clip_grid == 0 || !(cfg.max_shrink >= 0.0 && cfg.max_shrink < 1.0)) {
        return Err(SolverError::param(
            "clip_grid / max_shrink",
            format!("{} / {}", cfg.clip_grid, cfg.max_shrink),
            "need clip_grid >= 1 and 0 <= max_shrink < 1",
        ));
    }
    let scheme = cfg.scheme;
    let (alpha, s, grid_losses) = search_scales(x, tokens, cols, layers, scheme, cfg.n_grid)?;
    let (g, groups) = group_layout(scheme.granularity, cols);
    let xs: Vec<f32> = x.iter().enumerate().map(|(i, &v)| v / s[i % cols]).collect();
    let xm = MatRef::from_row_major_slice(x, tokens, cols);
    let mut clip = Vec::with_capacity(layers.len());
    let mut qtensors = Vec::with_capacity(layers.len());
    let (mut total, mut count) = (0.0f64, 0usize);
    for l in layers {
        let ws = scale_columns(l.w, &s);
        let bounds = if cfg.clip {
            search_clip(&ws, l.rows, &xs, tokens, cols, cfg)?
        } else {
            (0..l.rows * groups)
                .map(|k| {
                    let (r, grp) = (k / groups, k % groups);
                    ws[r * cols + grp * g..r * cols + ((grp + 1) * g).min(cols)]
                        .iter()
                        .fold(0.0f32, |m, v| m.max(v.abs()))
                })
                .collect()
        };
        let clamped: Vec<f32> = ws
            .iter()
            .enumerate()
            .map(|(i, &w)| {
                let m = bounds[(i / cols) * groups + (i % cols) / g];
                w.clamp(-m, m)
            })
            .collect();
        let qt = rtn::quantize(&clamped, &[l.rows, cols], scheme)?;
        let q = qt.dequantize();
        let delta: Vec<f32> = l.w.iter().zip(&q).enumerate().map(|(i, (&w, &qv))| w - qv / s[i % cols]).collect();
        total += output_sq_error(xm, &delta, l.rows);
        count += tokens * l.rows;
        clip.push(bounds);
        qtensors.push(qt);
    }
    let report = LayerReport {
        method: Method::Awq,
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
    layers: &[AwqLayer],
    scheme: IntScheme,
    n_grid: usize,
) -> Result<(f32, Vec<f64>)> {
    validate(x, tokens, cols, layers, scheme)?;
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
