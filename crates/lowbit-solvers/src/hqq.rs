//! HQQ, half-quadratic quantization (Badri & Shaji 2023, "Half-Quadratic Quantization of Large
//! Machine Learning Models"; the `hqq` package's `optimize_weights_proximal`): calibration-free
//! zero-point optimization for an lp-norm (p < 1) error.
//!
//! Per group, with min-max ranges (`maxq = 2^bits - 1`, scale `s = (max - min) / maxq`, rounded
//! to its storage dtype first so the loop sees what the file holds) and the zero `z = -min / s`
//! (rounded to an integer at 4 bits, as `hqq` does), repeat up to `iters` times over the whole
//! tensor:
//!
//! ```text
//! Wq = clamp(round(W / s + z), 0, maxq)          the codes
//! Wr = (Wq - z) * s                              their values
//! We = shrink_p(W - Wr, beta)                    sparse error: sign(e) max(|e| - |e|^(p-1) / beta, 0)
//! z  = mean over the group of (Wq - (W - We) / s)
//! beta *= kappa
//! ```
//!
//! stopping when the mean |W - Wr| over the tensor stops falling. `hqq` returns the zeros of the
//! step after the last improvement; lowbit keeps the zeros that gave the least error (never worse).
//! The zeros are floats ([`ZeroPoints::Float`], in the scales' dtype), so the layers need the
//! f32-activation kernels (the int8-activation path needs integer zeros).

use crate::method::{
    int_scheme, CalibShape, Group, GroupSolution, MethodInfo, NoStatistics, QuantMethod, SolvedLayer, Statistics,
};
use crate::report::LayerReport;
use crate::rtn::squared_error;
use crate::{Result, SolverError};
use lowbit_core::clock::Instant;
use lowbit_core::pack::pack;
use lowbit_core::rtn::round_ties_even_small;
use lowbit_core::{
    check_finite, Bits, Granularity, IntScheme, QParams, QTensor, ScaleDtype, Scales, Scheme, ZeroPoints,
};
use rayon::prelude::*;
use serde_json::{Map, Value};

/// HQQ as a pipeline method; defaults are `hqq`'s (`lp_norm` 0.7, `beta` 10, `kappa` 1.01, 20
/// iterations, zeros only). The optional scale refit lowers the weights' squared error but is no
/// reliable gain: on SmolLM2 W4 it helps at g64 and hurts at g128 (benches/README.md).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HqqMethod {
    /// The p of the sparsity-promoting lp error, in (0, 1].
    pub lp_norm: f32,
    /// Initial half-quadratic penalty (> 0).
    pub beta: f32,
    /// Growth of `beta` per iteration (>= 1).
    pub kappa: f32,
    /// Most iterations (>= 1).
    pub iters: u32,
    /// Also refit each group's scale at every step (the least-squares line through the de-noised
    /// weights), not only its zero (`false`, the default, is the published method).
    pub optimize_scale: bool,
}

impl Default for HqqMethod {
    fn default() -> Self {
        HqqMethod { lp_norm: 0.7, beta: 10.0, kappa: 1.01, iters: 20, optimize_scale: false }
    }
}

impl HqqMethod {
    fn check(&self) -> Result<()> {
        let bad = |name: &'static str, value: f32, why: &'static str| Err(SolverError::param(name, value, why));
        if !(self.lp_norm > 0.0 && self.lp_norm <= 1.0) {
            return bad("lp_norm", self.lp_norm, "HQQ's lp norm must be in (0, 1] (0.7 by default)");
        }
        if !(self.beta > 0.0 && self.beta.is_finite()) {
            return bad("beta", self.beta, "must be a positive finite number (10 by default)");
        }
        if !(self.kappa >= 1.0 && self.kappa.is_finite()) {
            return bad("kappa", self.kappa, "must be a finite number >= 1 (1.01 by default)");
        }
        if self.iters == 0 {
            return Err(SolverError::param("iters", 0, "at least one iteration"));
        }
        Ok(())
    }
}

impl QuantMethod for HqqMethod {
    fn info(&self) -> MethodInfo {
        MethodInfo { name: "hqq", aliases: &[], calibrated: false }
    }
    fn validate(&self, scheme: &Scheme) -> Result<()> {
        self.check()?;
        let s = int_scheme(scheme, "hqq")?;
        if s.symmetric {
            return Err(SolverError::param(
                "sym",
                true,
                "HQQ optimizes the zero points: it needs asymmetric codes (sym=False, the default)",
            ));
        }
        if s.granularity == Granularity::PerTensor {
            return Err(SolverError::param("group_size", "per tensor", "HQQ works per group or per channel"));
        }
        Ok(())
    }
    fn params(&self, _calib: CalibShape) -> Map<String, Value> {
        Map::from_iter([
            ("lp_norm".to_string(), shortest(self.lp_norm)),
            ("beta".to_string(), shortest(self.beta)),
            ("kappa".to_string(), shortest(self.kappa)),
            ("iters".to_string(), Value::from(self.iters)),
            ("optimize_scale".to_string(), Value::from(self.optimize_scale)),
            ("zero_points".to_string(), "float (scale dtype)".into()),
        ])
    }
    fn statistics(&self, _cols: usize, _calib: CalibShape) -> Box<dyn Statistics> {
        Box::new(NoStatistics)
    }
    fn solve_group(&self, group: &Group, _stats: &dyn Statistics) -> Result<GroupSolution> {
        let scheme = int_scheme(&group.scheme, "hqq")?;
        let layers = group
            .layers
            .iter()
            .map(|l| {
                let start = Instant::now();
                let qtensor = hqq_quantize(l.w, l.rows, group.cols, scheme, self)?;
                let loss = squared_error(l.w, &qtensor.dequantize());
                let report = LayerReport {
                    method: "hqq",
                    loss,
                    damping: None,
                    dead_inputs: 0,
                    seconds: start.elapsed().as_secs_f64(),
                };
                Ok(SolvedLayer { qtensor, report, alpha: None })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(GroupSolution { layers, fold: None, int8_activations: false })
    }
}

/// `x` as the shortest decimal that reads back as the same f32 (1.01, not 1.0099999904632568).
fn shortest(x: f32) -> Value {
    Value::from(x.to_string().parse::<f64>().unwrap_or(f64::from(x)))
}

/// `sign(e) * max(|e| - |e|^(p-1) / beta, 0)`, the proximal operator of the lp penalty (`hqq`'s
/// `shrink_lp_op`, with its 1e-8 guard against 0^(p-1)).
#[inline]
fn shrink(e: f32, beta: f32, p: f32) -> f32 {
    let a = e.abs();
    let t = if p == 1.0 { 1.0 / beta } else { (a + 1e-8).powf(p - 1.0) / beta };
    (a - t).max(0.0).copysign(e)
}

/// One group's state: its elements `[start, end)` of the row-major weight, its fixed scale and
/// its current zero.
#[derive(Clone, Copy, Debug)]
struct GroupState {
    start: usize,
    end: usize,
    scale: f32,
    zero: f32,
}

/// `clamp(round(w / s + z), 0, maxq)`: the code the stored parameters give `w` (round half to
/// even, as lowbit's RTN and torch.round).
#[inline]
fn code(w: f32, scale: f32, zero: f32, maxq: f32) -> f32 {
    round_ties_even_small(w / scale + zero).clamp(0.0, maxq)
}

/// HQQ-quantizes `w` (row-major `[rows, cols]`, finite) under `scheme` (asymmetric, grouped or per
/// channel): min-max scales in the scheme's dtype, float zeros in the same dtype.
pub fn hqq_quantize(w: &[f32], rows: usize, cols: usize, scheme: IntScheme, m: &HqqMethod) -> Result<QTensor> {
    m.check()?;
    if w.len() != rows * cols {
        return Err(SolverError::shape("hqq weight", format!("{rows}x{cols} = {}", rows * cols), w.len()));
    }
    check_finite(w)?;
    let group = match scheme.granularity {
        Granularity::Group(g) if g > 0 => g,
        Granularity::PerChannel => cols.max(1),
        other => {
            return Err(SolverError::param("group_size", format!("{other:?}"), "HQQ works per group or per channel"))
        }
    };
    scheme.granularity.validate(cols, scheme.bits)?;
    let maxq = f32::from(scheme.bits.maxq());
    let mut groups: Vec<GroupState> = (0..rows)
        .flat_map(|r| {
            (0..cols.div_ceil(group)).map(move |j| (r * cols + j * group, r * cols + ((j + 1) * group).min(cols)))
        })
        .map(|(start, end)| init_group(&w[start..end], start, end, scheme, maxq))
        .collect();
    optimize(w, &mut groups, m, maxq, scheme.scale_dtype);
    let mut codes = vec![0u8; w.len()];
    for g in &groups {
        for (c, &x) in codes[g.start..g.end].iter_mut().zip(&w[g.start..g.end]) {
            *c = code(x, g.scale, g.zero, maxq) as u8;
        }
    }
    let scales = Scales::from_f32(groups.iter().map(|g| g.scale), scheme.scale_dtype);
    let zeros = ZeroPoints::Float(Scales::from_f32(groups.iter().map(|g| g.zero), scheme.scale_dtype));
    let scheme = IntScheme { symmetric: false, ..scheme };
    Ok(QTensor::from_parts(
        vec![rows, cols],
        Scheme::Int(scheme),
        pack(&codes, scheme.bits)?,
        QParams::Int { scales, zeros: Some(zeros) },
    )?)
}

/// `hqq`'s starting point: min-max scale (rounded to storage; `hqq` caps the inverse scale at
/// 2e4, so a constant group gets the step 5e-5) and `z = -min / s`, rounded at 4 bits.
fn init_group(w: &[f32], start: usize, end: usize, scheme: IntScheme, maxq: f32) -> GroupState {
    let (lo, hi) = w.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &x| (lo.min(x), hi.max(x)));
    let inv = (maxq / (hi - lo)).min(2e4);
    let scale = scheme.scale_dtype.round(1.0 / inv);
    let zero = -lo / scale;
    let zero = if scheme.bits == Bits::B4 { zero.round_ties_even() } else { zero };
    GroupState { start, end, scale, zero: scheme.scale_dtype.round(zero) }
}

/// The half-quadratic iterations over every group at once, keeping the parameters of the least
/// mean |W - Wr| (rounded to storage at every step, so the error is that of storable values).
fn optimize(w: &[f32], groups: &mut [GroupState], m: &HqqMethod, maxq: f32, dtype: ScaleDtype) {
    let mut best = (f64::INFINITY, params_of(groups));
    let mut beta = m.beta;
    for _ in 0..m.iters {
        let evaluated = params_of(groups);
        let update = Update { beta, p: m.lp_norm, dtype, scale: m.optimize_scale };
        let error = step(w, groups, maxq, Some(update));
        beta *= m.kappa;
        if error >= best.0 {
            return restore(groups, best.1);
        }
        best = (error, evaluated);
    }
    // All iterations improved: the last update has not been evaluated yet.
    if step(w, groups, maxq, None) >= best.0 {
        restore(groups, best.1);
    }
}

fn restore(groups: &mut [GroupState], params: Vec<(f32, f32)>) {
    groups.iter_mut().zip(params).for_each(|(g, (scale, zero))| (g.scale, g.zero) = (scale, zero));
}

fn params_of(groups: &[GroupState]) -> Vec<(f32, f32)> {
    groups.iter().map(|g| (g.scale, g.zero)).collect()
}

/// One half-quadratic update's settings.
#[derive(Clone, Copy, Debug)]
struct Update {
    beta: f32,
    p: f32,
    dtype: ScaleDtype,
    scale: bool,
}

/// Sum of |W - Wr| under the current parameters; with an `update`, also fits them to the
/// de-noised target `T = W - We`: the zero `mean(Wq - T / s)` (`hqq`'s closed form) and, with
/// `update.scale`, first the scale of the least-squares line `T ~ (Wq - z) s`.
fn step(w: &[f32], groups: &mut [GroupState], maxq: f32, update: Option<Update>) -> f64 {
    groups
        .par_iter_mut()
        .map(|g| {
            let x = &w[g.start..g.end];
            let n = x.len() as f64;
            let mut err = 0f64;
            // sums over the group of q - t / s (the published zero update) and, for the scale
            // fit, of q, t, q², q·t
            let (mut sz, mut sq, mut st, mut sqq, mut sqt) = (0f64, 0f64, 0f64, 0f64, 0f64);
            for &v in x {
                let q = code(v, g.scale, g.zero, maxq);
                let r = (q - g.zero) * g.scale;
                err += f64::from((v - r).abs());
                if let Some(u) = update {
                    let t = v - shrink(v - r, u.beta, u.p);
                    sz += f64::from(q - t / g.scale);
                    if u.scale {
                        let (q, t) = (f64::from(q), f64::from(t));
                        (sq, st, sqq, sqt) = (sq + q, st + t, sqq + q * q, sqt + q * t);
                    }
                }
            }
            if let Some(u) = update {
                let fitted = u.dtype.round(((n * sqt - sq * st) / (n * sqq - sq * sq)) as f32);
                // all codes equal, or a degenerate fit: keep the scale
                if u.scale && fitted.is_finite() && fitted > 0.0 {
                    g.scale = fitted;
                    sz = sq - st / f64::from(fitted);
                }
                g.zero = u.dtype.round((sz / n) as f32);
            }
            err
        })
        .collect::<Vec<f64>>()
        // summed in group order, so the early stop does not depend on the thread count
        .iter()
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use lowbit_core::pack::unpack;

    fn weights(n: usize, seed: u32) -> Vec<f32> {
        // deterministic, heavy-tailed: a few large values per group, as in LLM weights
        (0..n as u32)
            .map(|i| {
                let h = (i.wrapping_mul(2_654_435_761) ^ seed).wrapping_mul(40_503) >> 8;
                let u = h as f32 / (1u32 << 24) as f32 - 0.5;
                if h % 29 == 0 {
                    u * 8.0
                } else {
                    u
                }
            })
            .collect()
    }

    /// The published loop written plainly over whole-tensor arrays (one zero per group, f32
    /// storage, zero-only), with lowbit's keep-the-best rule.
    fn textbook(w: &[f32], rows: usize, cols: usize, g: usize, bits: Bits, m: &HqqMethod) -> (Vec<f32>, Vec<f32>) {
        let maxq = f32::from(bits.maxq());
        let ng = rows * cols / g;
        let mut scale = vec![0f32; ng];
        let mut zero = vec![0f32; ng];
        for j in 0..ng {
            let x = &w[j * g..(j + 1) * g];
            let (lo, hi) =
                (x.iter().cloned().fold(f32::INFINITY, f32::min), x.iter().cloned().fold(f32::NEG_INFINITY, f32::max));
            scale[j] = 1.0 / (maxq / (hi - lo)).min(2e4);
            zero[j] = -lo / scale[j];
            if bits == Bits::B4 {
                zero[j] = zero[j].round_ties_even();
            }
        }
        // per group, then over the groups in order
        let error = |zero: &[f32]| -> f64 {
            (0..ng)
                .map(|j| {
                    (j * g..(j + 1) * g)
                        .map(|i| {
                            let q = (w[i] / scale[j] + zero[j]).round_ties_even().clamp(0.0, maxq);
                            f64::from((w[i] - (q - zero[j]) * scale[j]).abs())
                        })
                        .sum::<f64>()
                })
                .sum()
        };
        let (mut best, mut best_zero, mut beta) = (f64::INFINITY, zero.clone(), m.beta);
        for _ in 0..m.iters {
            let err = error(&zero);
            if err >= best {
                break;
            }
            (best, best_zero) = (err, zero.clone());
            let mut next = vec![0f64; ng];
            for (i, &x) in w.iter().enumerate() {
                let j = i / g;
                let q = (x / scale[j] + zero[j]).round_ties_even().clamp(0.0, maxq);
                let e = x - (q - zero[j]) * scale[j];
                let a = e.abs();
                let we = e.signum() * (a - (a + 1e-8).powf(m.lp_norm - 1.0) / beta).max(0.0);
                next[j] += f64::from(q - (x - we) / scale[j]);
            }
            zero = next.iter().map(|s| (s / g as f64) as f32).collect();
            beta *= m.kappa;
        }
        if error(&zero) < best {
            best_zero = zero;
        }
        (scale, best_zero)
    }

    #[test]
    fn matches_the_textbook_iteration() {
        for (bits, g, seed) in [(Bits::B4, 8, 1), (Bits::B3, 16, 2), (Bits::B2, 32, 3), (Bits::B8, 16, 4)] {
            let (rows, cols) = (5, 64);
            let w = weights(rows * cols, seed);
            let m = HqqMethod { optimize_scale: false, ..HqqMethod::default() };
            let scheme = IntScheme { scale_dtype: ScaleDtype::F32, ..IntScheme::group(bits, g) };
            let q = hqq_quantize(&w, rows, cols, scheme, &m).unwrap();
            let (scale, zero) = textbook(&w, rows, cols, g, bits, &m);
            let QParams::Int { scales, zeros: Some(z) } = q.params() else { panic!("float zeros expected") };
            for j in 0..scale.len() {
                assert_eq!(scales.get(j), scale[j], "{bits:?} scale {j}");
                assert!(
                    (z.get(j) - zero[j]).abs() <= 1e-5 * zero[j].abs().max(1.0),
                    "{bits:?} zero {j}: {} vs {}",
                    z.get(j),
                    zero[j]
                );
            }
            let codes = unpack(q.codes(), bits, rows * cols).unwrap();
            let maxq = f32::from(bits.maxq());
            let mismatched = (0..w.len())
                .filter(|&i| codes[i] as f32 != (w[i] / scale[i / g] + zero[i / g]).round_ties_even().clamp(0.0, maxq))
                .count();
            // a zero that differs in its last bits may flip a code sitting on a rounding boundary
            assert!(mismatched <= 1, "{bits:?}: {mismatched} codes differ");
        }
    }

    #[test]
    fn never_worse_than_min_max_and_scale_fitting_helps() {
        let (rows, cols) = (16, 128);
        let mut w = weights(rows * cols, 9);
        w[5 * cols..5 * cols + 64].fill(0.25); // a constant group
        let abs_err =
            |q: &QTensor| -> f64 { w.iter().zip(q.dequantize()).map(|(a, b)| f64::from((a - b).abs())).sum() };
        let scheme = IntScheme::group(Bits::B4, 64);
        let start = HqqMethod { iters: 1, ..HqqMethod::default() };
        // one iteration evaluates the start and keeps it unless the update is better
        let minmax = abs_err(&hqq_quantize(&w, rows, cols, scheme, &HqqMethod { beta: 1e30, ..start }).unwrap());
        let zero_only = abs_err(&hqq_quantize(&w, rows, cols, scheme, &HqqMethod::default()).unwrap());
        let with_scale = abs_err(&hqq_quantize(&w, rows, cols, scheme, &HqqMethod::default()).unwrap());
        assert!(zero_only < minmax, "{zero_only} vs {minmax}");
        assert!(with_scale <= minmax, "{with_scale} vs {minmax}");
    }

    #[test]
    fn bad_settings_and_inputs_are_errors() {
        let w = weights(4 * 32, 1);
        let scheme = IntScheme::group(Bits::B4, 16);
        for m in [
            HqqMethod { lp_norm: f32::NAN, ..HqqMethod::default() },
            HqqMethod { lp_norm: 0.0, ..HqqMethod::default() },
            HqqMethod { lp_norm: 1.5, ..HqqMethod::default() },
            HqqMethod { beta: 0.0, ..HqqMethod::default() },
            HqqMethod { kappa: 0.5, ..HqqMethod::default() },
            HqqMethod { iters: 0, ..HqqMethod::default() },
        ] {
            assert!(hqq_quantize(&w, 4, 32, scheme, &m).is_err(), "{m:?}");
        }
        let m = HqqMethod::default();
        let mut bad = w.clone();
        bad[7] = f32::NAN;
        assert!(hqq_quantize(&bad, 4, 32, scheme, &m).unwrap_err().to_string().contains("7"));
        assert!(hqq_quantize(&w, 4, 31, scheme, &m).is_err());
        let sym = Scheme::Int(IntScheme { symmetric: true, ..scheme });
        assert!(m.validate(&sym).unwrap_err().to_string().contains("asymmetric"));
    }

    #[test]
    fn shrink_is_the_lp_proximal_operator() {
        assert_eq!(shrink(0.0, 10.0, 0.7), 0.0);
        // p = 1: soft thresholding at 1 / beta.
        assert!((shrink(0.5, 10.0, 1.0) - 0.4).abs() < 1e-7);
        assert!((shrink(-0.5, 10.0, 1.0) + 0.4).abs() < 1e-7);
        assert_eq!(shrink(0.05, 10.0, 1.0), 0.0);
        let (e, beta, p) = (0.3f32, 10.0f32, 0.7f32);
        assert!((shrink(e, beta, p) - (e - e.powf(p - 1.0) / beta)).abs() < 1e-6);
    }
}
