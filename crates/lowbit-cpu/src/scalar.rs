//! Scalar reference kernels: the definition every fast path must reproduce.

use half::{bf16, f16};

/// `Σ x[i] * w[i]` in f32, left to right.
pub fn dot_f32(x: &[f32], w: &[f32]) -> f32 {
    x.iter().zip(w).map(|(a, b)| a * b).sum()
}

/// Dot product with f16 weights.
pub fn dot_f16(x: &[f32], w: &[f16]) -> f32 {
    x.iter().zip(w).map(|(a, b)| a * b.to_f32()).sum()
}

/// Dot product with bf16 weights.
pub fn dot_bf16(x: &[f32], w: &[bf16]) -> f32 {
    x.iter().zip(w).map(|(a, b)| a * b.to_f32()).sum()
}

/// Largest magnitude of `row` as f32 bits (`to_bits() & 0x7fff_ffff`): ordered like the
/// magnitudes, and at least `0x7f80_0000` exactly when an element is NaN or infinite. An integer
/// max has no NaN special cases, so every level computes the same value.
#[inline(always)]
pub(crate) fn absmax_bits(row: &[f32]) -> u32 {
    row.iter().fold(0, |m, v| m.max(v.to_bits() & 0x7fff_ffff))
}

/// The activation scale of a row with the given [`absmax_bits`]: `absmax / 127`, `1` for a row
/// of zeros (and for rows so small that `absmax / 127` underflows to 0, which then quantize to
/// zeros); `None` when the row holds a NaN or an infinity.
#[inline]
pub(crate) fn scale_from_absmax_bits(bits: u32) -> Option<f32> {
    if bits >= 0x7f80_0000 {
        return None;
    }
    let scale = f32::from_bits(bits) / 127.0;
    Some(if scale == 0.0 { 1.0 } else { scale })
}

/// The per-token dynamic int8 scale of SmoothQuant's activations (W8A8): `max|row| / 127`, 1 for
/// a row of zeros; `None` when the row holds a NaN or an infinity.
pub fn act_scale_i8(row: &[f32]) -> Option<f32> {
    scale_from_absmax_bits(absmax_bits(row))
}

/// The int8 code of activation `v` at `scale`: `round_ties_even(v / scale)` clamped to
/// `[-127, 127]` (a true division, as in `lowbit_solvers::smoothquant`, so the codes agree with
/// the solvers' reference bit for bit).
#[inline]
pub fn quantize_i8(v: f32, scale: f32) -> i8 {
    (v / scale).round_ties_even().clamp(-127.0, 127.0) as i8
}

/// `Σ a[i] * b[i]` in i32 (exact while `a.len() * 127 * 128 < 2^31`).
pub fn dot_i8(a: &[i8], b: &[i8]) -> i32 {
    a.iter().zip(b).map(|(&x, &y)| i32::from(x) * i32::from(y)).sum()
}

/// RMSNorm of each `weight.len()`-wide row of `x` into `out`: `w * x / sqrt(mean(x²) + eps)`,
/// the mean of squares summed in f64.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let d = weight.len();
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let ms = xr.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / d as f64;
        let inv = 1.0 / (ms + f64::from(eps)).sqrt();
        for ((o, &xi), &w) in or.iter_mut().zip(xr).zip(weight) {
            *o = (f64::from(w) * f64::from(xi) * inv) as f32;
        }
    }
}

/// `silu(g) * u = g / (1 + exp(-g)) * u`, into `g`, with libm `exp` in f64.
pub fn swiglu(g: &mut [f32], u: &[f32]) {
    for (gi, &ui) in g.iter_mut().zip(u) {
        let x = f64::from(*gi);
        *gi = (x / (1.0 + (-x).exp()) * f64::from(ui)) as f32;
    }
}

/// Adds `bias` to each row of `x`.
pub fn add_bias(x: &mut [f32], bias: &[f32]) {
    for r in x.chunks_exact_mut(bias.len()) {
        for (a, b) in r.iter_mut().zip(bias) {
            *a += b;
        }
    }
}

/// Rotate-half RoPE on one head (Hugging Face's `rotate_half`): pairs `(i, i + d/2)` turn by
/// `cos[i]`, `sin[i]`.
pub fn rope_head(x: &mut [f32], cos: &[f32], sin: &[f32]) {
    let half = x.len() / 2;
    for i in 0..half {
        let (x1, x2) = (x[i], x[i + half]);
        x[i] = x1 * cos[i] - x2 * sin[i];
        x[i + half] = x2 * cos[i] + x1 * sin[i];
    }
}

/// `log Σ exp(x) - x[target]` (the negative log-likelihood of `target`), in f64 with libm `exp`.
pub fn nll(logits: &[f32], target: usize) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let sum: f64 = logits.iter().map(|&v| ((v as f64) - max).exp()).sum();
    max + sum.ln() - logits[target] as f64
}

/// Causal attention, the definition [`crate::attention::attention`] is held to: per (token, head),
/// every score `q·k / sqrt(head_dim)` over the keys the query sees, a max-subtracted softmax with
/// libm `exp`, then the weighted sum of values. Same arguments as [`crate::attention::attention`].
pub fn attention(shape: &crate::attention::AttnShape, q: &[f32], kc: &[f32], vc: &[f32], past: usize, out: &mut [f32]) {
    let (nh, hd, kvd) = (shape.heads, shape.head_dim, shape.kv_dim());
    let group = nh / shape.kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    for (idx, o) in out.chunks_exact_mut(hd).enumerate() {
        let (t, head) = (idx / nh, idx % nh);
        let pos = past + t;
        let kvh = head / group;
        let qh = &q[t * nh * hd + head * hd..][..hd];
        let keys = shape.first_key(pos)..=pos;
        let mut scores: Vec<f32> = keys.clone().map(|j| dot_f32(qh, &kc[j * kvd + kvh * hd..][..hd]) * scale).collect();
        let max = scores.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        let mut sum = 0f32;
        for s in scores.iter_mut() {
            *s = (*s - max).exp();
            sum += *s;
        }
        o.fill(0.0);
        for (j, &p) in keys.zip(&scores) {
            for (oi, &vi) in o.iter_mut().zip(&vc[j * kvd + kvh * hd..][..hd]) {
                *oi += p / sum * vi;
            }
        }
    }
}
