//! The f32 building blocks of a transformer's forward pass, everything but weight products
//! ([`crate::Linear`]) and attention ([`crate::attention`]): RMSNorm, SwiGLU, bias, RoPE, and the
//! negative log-likelihood of a row of logits.
//!
//! The loops are written over fixed-width lanes in portable Rust and compiled for every
//! [`KernelLevel`] ([`leveled!`]), so `LOWBIT_KERNELS` governs them. None of them fuses a
//! multiply-add and the lane order of every sum is fixed in the source, so every level returns
//! bit-identical results; [`crate::scalar`] holds the plain references (libm `exp`, f64 sums) the
//! tests hold them to within the named tolerances below.

use crate::dispatch::{leveled, Level};
use crate::{KernelLevel, Result};

/// `exp(x)` without a libm call, so loops over it vectorize: Cody-Waite reduction
/// `x = n ln2 + r` (`|r| <= ln2/2`), Cephes' degree-5 minimax polynomial for `exp(r)`, and
/// `2^n` built in the exponent bits. Relative error within [`EXP_APPROX_TOL`] of libm's over
/// the normal range; `0` below `ln(f32::MIN_POSITIVE)` (so `exp(-inf) = 0`), clamped to
/// `exp(88)` above.
#[inline(always)]
pub fn exp_approx(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // 1.5 * 2^23: adding it rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const LO: f32 = -87.336_54;
    const HI: f32 = 88.0;
    let xc = x.clamp(LO, HI);
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 1.666_666_5e-1)
        * r
        + 0.5;
    let e = p * (r * r) + r + 1.0;
    let ni = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let scale = f32::from_bits(((ni + 127) << 23) as u32);
    if x < LO {
        0.0
    } else {
        e * scale
    }
}

/// Worst relative error of [`exp_approx`] against libm.
pub const EXP_APPROX_TOL: f32 = 3e-7;
/// Largest `|fast - reference| / max(1, |reference|)` of [`rms_norm`] against
/// [`crate::scalar::rms_norm`] (f32 sums of squares in eight lanes against an f64 sum).
pub const RMS_NORM_TOL: f32 = 1e-5;
/// Largest `|fast - reference| / max(1, |reference|)` of [`swiglu`] against
/// [`crate::scalar::swiglu`]: [`exp_approx`]'s error plus a few roundings.
pub const SWIGLU_TOL: f32 = 2e-6;
/// Largest `|fast - reference| / max(1, |reference|)` of [`nll`] against [`crate::scalar::nll`].
pub const NLL_TOL: f64 = 2e-6;

/// `f` folded over a lane array pairwise (halving the width while it is even, the order a
/// vectorized reduction uses), then left to right from `init` over what is left.
#[inline(always)]
fn fold_lanes<const N: usize>(x: &[f32; N], init: f32, f: impl Fn(f32, f32) -> f32) -> f32 {
    let mut v = *x;
    let mut w = N;
    while w > 1 && w.is_multiple_of(2) {
        w /= 2;
        for i in 0..w {
            v[i] = f(v[i], v[i + w]);
        }
    }
    v[..w].iter().fold(init, |a, &b| f(a, b))
}

/// Largest element of a lane array (vectorizes; NaN-unaware, unlike `f32::max`).
#[inline(always)]
pub(crate) fn max_lanes<const N: usize>(x: &[f32; N]) -> f32 {
    fold_lanes(x, f32::NEG_INFINITY, |a, b| if b > a { b } else { a })
}

/// Sum of a lane array, pairwise.
#[inline(always)]
pub(crate) fn sum_lanes<const N: usize>(x: &[f32; N]) -> f32 {
    fold_lanes(x, 0.0, |a, b| a + b)
}

/// `Σ a[i] b[i]` with eight independent accumulators, so the compiler vectorizes it.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

leveled! {
    /// [`rms_norm`] at `level`.
    fn rms_norm_at(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
        let d = weight.len();
        for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
            let ms = dot(xr, xr) / d as f32;
            let inv = 1.0 / (ms + eps).sqrt();
            for ((o, &xi), &w) in or.iter_mut().zip(xr).zip(weight) {
                *o = w * (xi * inv);
            }
        }
    }
}

leveled! {
    /// [`rms_norm_inplace`] at `level`.
    fn rms_norm_inplace_at(x: &mut [f32], weight: &[f32], eps: f32) {
        let d = weight.len();
        for xr in x.chunks_exact_mut(d) {
            let ms = dot(xr, xr) / d as f32;
            let inv = 1.0 / (ms + eps).sqrt();
            for (xi, &w) in xr.iter_mut().zip(weight) {
                *xi = w * (*xi * inv);
            }
        }
    }
}

leveled! {
    /// [`swiglu`] at `level`.
    fn swiglu_at(g: &mut [f32], u: &[f32]) {
        for (gi, &ui) in g.iter_mut().zip(u) {
            *gi = *gi / (1.0 + exp_approx(-*gi)) * ui;
        }
    }
}

leveled! {
    /// [`add_bias`] at `level`.
    fn add_bias_at(x: &mut [f32], bias: &[f32]) {
        for r in x.chunks_exact_mut(bias.len()) {
            for (a, b) in r.iter_mut().zip(bias) {
                *a += b;
            }
        }
    }
}

leveled! {
    /// [`rope_head`] at `level`.
    fn rope_head_at(x: &mut [f32], cos: &[f32], sin: &[f32]) {
        let half = x.len() / 2;
        let (a, b) = x.split_at_mut(half);
        for (((a, b), &c), &s) in a.iter_mut().zip(b.iter_mut()).zip(&cos[..half]).zip(&sin[..half]) {
            let (x1, x2) = (*a, *b);
            *a = x1 * c - x2 * s;
            *b = x2 * c + x1 * s;
        }
    }
}

/// Lanes of the [`nll`] reductions.
const NLL_LANES: usize = 16;
/// Elements summed in f32 lanes before the partial sums move to f64.
const NLL_CHUNK: usize = 1024;

/// `log Σ exp(x)` over a row: the max and the exponentials in f32 lanes ([`exp_approx`]),
/// partial sums of [`NLL_CHUNK`] elements carried in f64.
#[inline(always)]
fn log_sum_exp(logits: &[f32]) -> f64 {
    let mut mx = [f32::NEG_INFINITY; NLL_LANES];
    let chunks = logits.chunks_exact(NLL_LANES);
    let tail = chunks.remainder();
    for c in chunks {
        for (m, &v) in mx.iter_mut().zip(c) {
            *m = m.max(v);
        }
    }
    let max = tail.iter().fold(mx.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)), |a, &b| a.max(b));
    let mut total = 0f64;
    for block in logits.chunks(NLL_CHUNK) {
        let mut acc = [0f32; NLL_LANES];
        let chunks = block.chunks_exact(NLL_LANES);
        let tail = chunks.remainder();
        for c in chunks {
            for (a, &v) in acc.iter_mut().zip(c) {
                *a += exp_approx(v - max);
            }
        }
        let t: f32 = tail.iter().map(|&v| exp_approx(v - max)).sum();
        total += (sum_lanes(&acc) + t) as f64;
    }
    max as f64 + total.ln()
}

leveled! {
    /// [`nll`] at `level`.
    fn nll_at(logits: &[f32], target: usize) -> f64 {
        log_sum_exp(logits) - logits[target] as f64
    }
}

leveled! {
    /// [`log_softmax`] at `level`.
    fn log_softmax_at(row: &mut [f32]) {
        let lse = log_sum_exp(row) as f32;
        for v in row.iter_mut() {
            *v -= lse;
        }
    }
}

leveled! {
    /// [`exp_inplace`] at `level`.
    fn exp_inplace_at(x: &mut [f32]) {
        for v in x.iter_mut() {
            *v = exp_approx(*v);
        }
    }
}

/// RMSNorm of each `weight.len()`-wide row of `x` into `out`: `w * x / sqrt(mean(x²) + eps)`.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    rms_norm_at(Level::current(), x, weight, eps, out)
}
/// [`rms_norm`] with the kernels of `level` (for tests and benchmarks); a level this CPU lacks
/// is an error.
pub fn rms_norm_with(level: KernelLevel, x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) -> Result<()> {
    rms_norm_at(Level::new(level)?, x, weight, eps, out);
    Ok(())
}

/// RMSNorm in place.
pub fn rms_norm_inplace(x: &mut [f32], weight: &[f32], eps: f32) {
    rms_norm_inplace_at(Level::current(), x, weight, eps)
}
/// [`rms_norm_inplace`] at `level` (see [`rms_norm_with`]).
pub fn rms_norm_inplace_with(level: KernelLevel, x: &mut [f32], weight: &[f32], eps: f32) -> Result<()> {
    rms_norm_inplace_at(Level::new(level)?, x, weight, eps);
    Ok(())
}

/// `silu(g) * u`, into `g`.
pub fn swiglu(g: &mut [f32], u: &[f32]) {
    swiglu_at(Level::current(), g, u)
}
/// [`swiglu`] at `level` (see [`rms_norm_with`]).
pub fn swiglu_with(level: KernelLevel, g: &mut [f32], u: &[f32]) -> Result<()> {
    swiglu_at(Level::new(level)?, g, u);
    Ok(())
}

/// Adds `bias` to each row of `x`.
pub fn add_bias(x: &mut [f32], bias: &[f32]) {
    add_bias_at(Level::current(), x, bias)
}
/// [`add_bias`] at `level` (see [`rms_norm_with`]).
pub fn add_bias_with(level: KernelLevel, x: &mut [f32], bias: &[f32]) -> Result<()> {
    add_bias_at(Level::new(level)?, x, bias);
    Ok(())
}

/// Hugging Face's rotate-half RoPE on one head: pairs `(i, i + d/2)` turn by `cos/sin[i]`.
pub fn rope_head(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    rope_head_at(Level::current(), x, cos, sin)
}
/// [`rope_head`] at `level` (see [`rms_norm_with`]).
pub fn rope_head_with(level: KernelLevel, x: &mut [f32], cos: &[f32], sin: &[f32]) -> Result<()> {
    rope_head_at(Level::new(level)?, x, cos, sin);
    Ok(())
}

/// `log Σ exp(x) - x[target]` (the negative log-likelihood of `target`), vectorized: the max and
/// the exponentials in f32 lanes ([`exp_approx`]), partial sums of 1024 elements carried in f64.
/// Within [`NLL_TOL`] of [`crate::scalar::nll`].
pub fn nll(logits: &[f32], target: usize) -> f64 {
    nll_at(Level::current(), logits, target)
}
/// [`nll`] at `level` (see [`rms_norm_with`]).
pub fn nll_with(level: KernelLevel, logits: &[f32], target: usize) -> Result<f64> {
    Ok(nll_at(Level::new(level)?, logits, target))
}

/// `x - log Σ exp(x)` of a row, in place: [`nll`]'s reduction, so within [`NLL_TOL`] of an f64
/// log-softmax.
pub fn log_softmax(row: &mut [f32]) {
    log_softmax_at(Level::current(), row)
}
/// [`log_softmax`] at `level` (see [`rms_norm_with`]).
pub fn log_softmax_with(level: KernelLevel, row: &mut [f32]) -> Result<()> {
    log_softmax_at(Level::new(level)?, row);
    Ok(())
}

/// `exp` of every element, in place ([`exp_approx`] in the level's lanes: within
/// [`EXP_APPROX_TOL`] of libm, the same bits at every level).
pub fn exp_inplace(x: &mut [f32]) {
    exp_inplace_at(Level::current(), x)
}
/// [`exp_inplace`] at `level` (see [`rms_norm_with`]).
pub fn exp_inplace_with(level: KernelLevel, x: &mut [f32]) -> Result<()> {
    exp_inplace_at(Level::new(level)?, x);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_approx_matches_libm() {
        let mut worst = 0f32;
        let mut x = -87.3f32;
        while x < 88.0 {
            let (a, b) = (exp_approx(x), x.exp());
            worst = worst.max((a - b).abs() / b);
            x += 0.0137;
        }
        assert!(worst <= EXP_APPROX_TOL, "worst relative error {worst:e}");
        assert_eq!(exp_approx(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_approx(-100.0), 0.0);
        assert_eq!(exp_approx(0.0), 1.0);
        assert!(exp_approx(1000.0).is_finite());
    }

    #[test]
    fn lane_reductions() {
        let x: [f32; 16] = std::array::from_fn(|i| i as f32);
        assert_eq!(sum_lanes(&x), 120.0);
        assert_eq!(sum_lanes(&[1.0, 2.0, 3.0]), 6.0);
        assert_eq!(max_lanes(&x), 15.0);
        assert_eq!(max_lanes(&[f32::NEG_INFINITY; 32]), f32::NEG_INFINITY);
        assert_eq!(max_lanes(&[1.0, 7.0, 3.0]), 7.0);
    }

    #[test]
    fn dot_handles_tails() {
        for n in [0, 1, 3, 8, 17, 33] {
            let a: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
            let b: Vec<f32> = (0..n).map(|i| 1.0 - i as f32).collect();
            let want: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert!((dot(&a, &b) - want).abs() <= 1e-4 * want.abs().max(1.0));
        }
    }
}
