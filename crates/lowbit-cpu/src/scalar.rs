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
