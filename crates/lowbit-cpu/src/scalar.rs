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
