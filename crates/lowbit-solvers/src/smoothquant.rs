//! SmoothQuant (Xiao et al. 2022, "SmoothQuant: Accurate and Efficient Post-Training Quantization
//! for Large Language Models", Section 4): W8A8 with activation outliers migrated into weights.
//!
//! For layers sharing an input with per-channel activation absmax `max|X_j|` and weights `W`,
//! `s_j = max|X_j|^alpha / max|W_j|^(1-alpha)` (both clamped at 1e-5 as the reference code does,
//! alpha 0.5 by default); the pipeline divides the preceding norm's weight by `s` (so the layer
//! sees `X diag(s)^-1`) and the layers are quantized as `W diag(s)` to int8, per output channel,
//! symmetric (`scale = absmax / 127`, codes in `[-127, 127]`, stored as lowbit 8-bit symmetric
//! codes `q + 128`). Activations are quantized per token at run time, dynamically, the same way.
//! [`matmul_w8a8_ref`] is the scalar int8 x int8 -> int32 reference the fast kernel
//! (lowbit-cpu) is tested against.

use crate::hessian::check_finite_activations;
use crate::method::{
    downcast, int_scheme, CalibShape, FoldTarget, Group, GroupSolution, LayerWeight, MethodInfo, QuantMethod,
    SolvedLayer, Statistics,
};
use crate::report::LayerReport;
use crate::rtn::rtn_layers;
use crate::{Result, SolverError};
use lowbit_core::clock::Instant;
use lowbit_core::pack::unpack;
use lowbit_core::{check_finite, rtn, Bits, ClipSearch, Granularity, IntScheme, QParams, QTensor, ScaleDtype, Scheme};
use serde_json::{Map, Value};

/// The reference code's floor for activation/weight maxima and for `s`.
const FLOOR: f32 = 1e-5;

/// SmoothQuant settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SmoothQuantConfig {
    /// Migration strength (0.5).
    pub alpha: f32,
    /// Storage of the per-channel weight scales (f32 by default: int8 kernels read f32).
    pub scale_dtype: ScaleDtype,
}

impl Default for SmoothQuantConfig {
    fn default() -> Self {
        SmoothQuantConfig { alpha: 0.5, scale_dtype: ScaleDtype::F32 }
    }
}

impl SmoothQuantConfig {
    /// The weight scheme: 8-bit, symmetric, per channel.
    pub fn weight_scheme(&self) -> IntScheme {
        IntScheme {
            bits: Bits::B8,
            symmetric: true,
            granularity: Granularity::PerChannel,
            scale_dtype: self.scale_dtype,
            clip: ClipSearch::MinMax,
        }
    }
}

/// Smoothing factors and the int8 weights of a group of layers.
#[derive(Clone, Debug)]
pub struct SmoothQuantOutput {
    /// `s` per input channel: divide the input (the preceding norm's weight) by it.
    pub factors: Vec<f32>,
    /// Per layer, `W diag(s)` as 8-bit symmetric per-channel lowbit tensors.
    pub qtensors: Vec<QTensor>,
    /// `loss`: `sum (W - Q(W diag(s)) diag(s)^-1)^2` over the layers, in the original units.
    pub report: LayerReport,
}

/// `max_t |x_tj|` per channel of a row-major `x[tokens, cols]` (the statistic SmoothQuant calibrates).
pub fn activation_absmax(x: &[f32], cols: usize) -> Result<Vec<f32>> {
    if cols == 0 || x.len() % cols != 0 {
        return Err(SolverError::shape("activation_absmax", format!("a multiple of {cols}"), x.len()));
    }
    check_finite_activations("activation_absmax", x, cols)?;
    let mut m = vec![0.0f32; cols];
    for row in x.chunks_exact(cols) {
        for (a, &v) in m.iter_mut().zip(row) {
            *a = a.max(v.abs());
        }
    }
    Ok(m)
}

/// `s_j = max|X_j|^alpha / max|W_j|^(1-alpha)`, with `max|W_j|` over every row of every layer.
pub fn smoothing_factors(act_absmax: &[f32], layers: &[LayerWeight], alpha: f32) -> Result<Vec<f32>> {
    let cols = act_absmax.len();
    if !(0.0..=1.0).contains(&alpha) {
        return Err(SolverError::param("alpha", alpha, "it must lie in [0, 1]"));
    }
    if layers.is_empty() || cols == 0 {
        return Err(SolverError::shape("smoothing_factors", "at least one layer and one channel", layers.len()));
    }
    check_finite_activations("smoothing_factors", act_absmax, cols)?;
    let mut wmax = vec![0.0f32; cols];
    for l in layers {
        if l.w.len() != l.rows * cols {
            return Err(SolverError::shape("smoothquant weight", format!("{} x {cols}", l.rows), l.w.len()));
        }
        check_finite(l.w)?;
        for row in l.w.chunks_exact(cols) {
            for (m, &v) in wmax.iter_mut().zip(row) {
                *m = m.max(v.abs());
            }
        }
    }
    Ok(act_absmax
        .iter()
        .zip(&wmax)
        .map(|(&a, &w)| (a.max(FLOOR).powf(alpha) / w.max(FLOOR).powf(1.0 - alpha)).max(FLOOR))
        .collect())
}

/// SmoothQuant for one group of layers sharing an input with activation absmax `act_absmax`.
pub fn smoothquant(act_absmax: &[f32], layers: &[LayerWeight], cfg: &SmoothQuantConfig) -> Result<SmoothQuantOutput> {
    let start = Instant::now();
    let cols = act_absmax.len();
    let factors = smoothing_factors(act_absmax, layers, cfg.alpha)?;
    let scheme = cfg.weight_scheme();
    let mut qtensors = Vec::with_capacity(layers.len());
    let mut loss = 0.0f64;
    for l in layers {
        let ws: Vec<f32> = l.w.chunks_exact(cols).flat_map(|r| r.iter().zip(&factors).map(|(w, s)| w * s)).collect();
        let qt = rtn::quantize(&ws, &[l.rows, cols], scheme)?;
        let q = qt.dequantize();
        loss +=
            l.w.iter()
                .zip(&q)
                .enumerate()
                .map(|(i, (&w, &qv))| (f64::from(w) - f64::from(qv / factors[i % cols])).powi(2))
                .sum::<f64>();
        qtensors.push(qt);
    }
    let report = LayerReport {
        method: "smoothquant",
        loss,
        damping: None,
        dead_inputs: 0,
        seconds: start.elapsed().as_secs_f64(),
    };
    Ok(SmoothQuantOutput { factors, qtensors, report })
}

/// Per-token dynamically quantized int8 activations.
#[derive(Clone, Debug, PartialEq)]
pub struct Int8Activations {
    /// Codes in `[-127, 127]`, row-major `[tokens, cols]`.
    pub codes: Vec<i8>,
    /// One scale per token: `x ~ code * scale`.
    pub scales: Vec<f32>,
    /// Channels per token.
    pub cols: usize,
}

/// Per-token symmetric int8: `scale_t = max|x_t| / 127` (1 for an all-zero token),
/// `q = clamp(round(x / scale_t), -127, 127)` with round half to even.
pub fn quantize_activations_per_token(x: &[f32], cols: usize) -> Result<Int8Activations> {
    if cols == 0 || x.len() % cols != 0 {
        return Err(SolverError::shape("quantize_activations_per_token", format!("a multiple of {cols}"), x.len()));
    }
    check_finite_activations("quantize_activations_per_token", x, cols)?;
    let mut codes = Vec::with_capacity(x.len());
    let mut scales = Vec::with_capacity(x.len() / cols);
    for row in x.chunks_exact(cols) {
        let absmax = row.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let scale = if absmax == 0.0 { 1.0 } else { absmax / 127.0 };
        codes.extend(row.iter().map(|&v| (v / scale).round_ties_even().clamp(-127.0, 127.0) as i8));
        scales.push(scale);
    }
    Ok(Int8Activations { codes, scales, cols })
}

/// Signed int8 codes (`q - 128`, row-major) and per-row scales of an 8-bit symmetric per-channel
/// lowbit tensor (what [`smoothquant`] returns).
pub fn weight_int8(qt: &QTensor) -> Result<(Vec<i8>, Vec<f32>)> {
    let ok = matches!(qt.scheme(), Scheme::Int(s) if s.bits == Bits::B8 && s.symmetric && s.granularity == Granularity::PerChannel);
    let QParams::Int { scales, .. } = qt.params() else {
        return Err(SolverError::param("weight scheme", "codebook", "expected 8-bit symmetric per-channel"));
    };
    if !ok {
        return Err(SolverError::param(
            "weight scheme",
            format!("{:?}", qt.scheme()),
            "expected 8-bit symmetric per-channel",
        ));
    }
    let codes = unpack(qt.codes(), Bits::B8, qt.numel())?;
    Ok((
        codes.into_iter().map(|q| (i16::from(q) - 128) as i8).collect(),
        (0..scales.len()).map(|i| scales.get(i)).collect(),
    ))
}

/// Scalar W8A8 reference: `y[t, r] = (sum_c xq[t, c] * wq[r, c]) (int32) * x_scale[t] * w_scale[r]`,
/// row-major `[tokens, rows]`.
pub fn matmul_w8a8_ref(x: &Int8Activations, wq: &[i8], w_scales: &[f32]) -> Result<Vec<f32>> {
    let cols = x.cols;
    let rows = w_scales.len();
    if wq.len() != rows * cols {
        return Err(SolverError::shape("matmul_w8a8_ref weight", format!("{rows} x {cols}"), wq.len()));
    }
    let mut y = Vec::with_capacity(x.scales.len() * rows);
    for (xt, &xs) in x.codes.chunks_exact(cols).zip(&x.scales) {
        for (wr, &ws) in wq.chunks_exact(cols).zip(w_scales) {
            let acc: i32 = xt.iter().zip(wr).map(|(&a, &b)| i32::from(a) * i32::from(b)).sum();
            y.push(acc as f32 * xs * ws);
        }
    }
    Ok(y)
}

/// SmoothQuant W8A8 as a pipeline method.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SmoothQuantMethod {
    /// Migration strength alpha (0.5).
    pub alpha: f32,
}

impl Default for SmoothQuantMethod {
    fn default() -> Self {
        SmoothQuantMethod { alpha: SmoothQuantConfig::default().alpha }
    }
}

/// Per-channel `max |x|` of a group input.
struct AbsMax(Vec<f32>);

impl Statistics for AbsMax {
    fn add_batch(&mut self, x: &[f32], tokens: usize) -> Result<()> {
        let cols = self.0.len();
        if x.len() != tokens * cols {
            return Err(SolverError::shape("smoothquant activations", format!("{tokens} x {cols}"), x.len()));
        }
        let batch = activation_absmax(x, cols)?;
        self.0.iter_mut().zip(batch).for_each(|(m, b)| *m = m.max(b));
        Ok(())
    }
}

impl QuantMethod for SmoothQuantMethod {
    fn info(&self) -> MethodInfo {
        MethodInfo { name: "smoothquant", aliases: &["sq"], calibrated: true }
    }
    fn validate(&self, scheme: &Scheme) -> Result<()> {
        let scheme = int_scheme(scheme, "smoothquant")?;
        if scheme.bits != Bits::B8 || scheme.granularity != Granularity::PerChannel || !scheme.symmetric {
            return Err(SolverError::param(
                "scheme",
                format!("{}-bit {:?}, symmetric {}", scheme.bits.get(), scheme.granularity, scheme.symmetric),
                "smoothquant is W8A8: bits 8, per-channel (no group size), symmetric",
            ));
        }
        if !(self.alpha.is_finite() && (0.0..=1.0).contains(&self.alpha)) {
            return Err(SolverError::param("sq_alpha", self.alpha, "it must lie in [0, 1]"));
        }
        Ok(())
    }
    fn params(&self, _calib: CalibShape) -> Map<String, Value> {
        Map::from_iter([
            ("alpha".to_string(), f64::from(self.alpha).into()),
            ("activations".to_string(), "int8 per-token dynamic".into()),
        ])
    }
    fn statistics(&self, cols: usize, _calib: CalibShape) -> Box<dyn Statistics> {
        Box::new(AbsMax(vec![0.0; cols]))
    }
    /// Smoothing folds into norms only, as in the paper; the groups after o and down (whose
    /// inputs come from a linear layer) get plain int8 per-channel weights. Either way the layers
    /// run W8A8 from here on, as the saved model will, so the rest of the calibration sees what
    /// the int8 model computes.
    fn solve_group(&self, group: &Group, stats: &dyn Statistics) -> Result<GroupSolution> {
        let absmax = &downcast::<AbsMax>(stats, "smoothquant")?.0;
        let cfg = SmoothQuantConfig { alpha: self.alpha, ..SmoothQuantConfig::default() };
        if group.fold != FoldTarget::Norm {
            let layers = rtn_layers(group, cfg.weight_scheme())?;
            return Ok(GroupSolution { layers, fold: None, int8_activations: true });
        }
        let sl: Vec<LayerWeight> = group.layers.iter().map(|l| LayerWeight { w: l.w, rows: l.rows }).collect();
        let out = smoothquant(absmax, &sl, &cfg)?;
        let layers = out
            .qtensors
            .into_iter()
            .map(|qtensor| SolvedLayer { qtensor, report: out.report.clone(), alpha: Some(self.alpha) })
            .collect();
        Ok(GroupSolution { layers, fold: Some(out.factors), int8_activations: true })
    }
}
