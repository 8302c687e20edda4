//! Seeded test data shared by the integration tests (no RNG crate needed).
#![allow(dead_code)]

use lowbit_solvers::Hessian;
use rand_core::{RngCore, SeedableRng};
use rand_xoshiro::SplitMix64;

/// A seeded SplitMix64 stream (the seed is mixed first, so nearby seeds start far apart).
pub struct Rng(SplitMix64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(SplitMix64::seed_from_u64(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(0xD1B5_4A32_D192_ED03)))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }
    pub fn normals(&mut self, n: usize, std: f64) -> Vec<f32> {
        (0..n).map(|_| (self.normal() * std) as f32).collect()
    }
}

/// Realistic calibration activations `[tokens, cols]` (row-major): correlated channels (a random
/// mixing with a decaying spectrum), a few outlier channels with 10-20x magnitude, as in LLM
/// hidden states.
pub fn correlated_activations(rng: &mut Rng, tokens: usize, cols: usize) -> Vec<f32> {
    let rank = cols;
    let mix: Vec<f64> = (0..rank * cols).map(|i| rng.normal() / (1.0 + (i / cols) as f64 * 0.3)).collect();
    let chan_scale: Vec<f64> = (0..cols)
        .map(|_| if rng.uniform() < 0.05 { 10.0 + 10.0 * rng.uniform() } else { 0.5 + rng.uniform() })
        .collect();
    let mut x = vec![0.0f32; tokens * cols];
    let mut z = vec![0.0f64; rank];
    for t in 0..tokens {
        for v in z.iter_mut() {
            *v = rng.normal();
        }
        for c in 0..cols {
            let mut s = 0.0;
            for (k, zk) in z.iter().enumerate() {
                s += zk * mix[k * cols + c];
            }
            x[t * cols + c] = (s * chan_scale[c] / (rank as f64).sqrt()) as f32;
        }
    }
    x
}

pub fn hessian_of(x: &[f32], cols: usize) -> Hessian {
    let mut h = Hessian::new(cols);
    h.add_batch(x, x.len() / cols).unwrap();
    h
}

/// `||(W - Q) X^T||^2` directly from the activations (rows of `x` are tokens), in f64.
pub fn layer_error(w: &[f32], q: &[f32], rows: usize, cols: usize, x: &[f32]) -> f64 {
    let tokens = x.len() / cols;
    let mut total = 0.0;
    for r in 0..rows {
        for t in 0..tokens {
            let mut s = 0.0f64;
            for c in 0..cols {
                s += (f64::from(w[r * cols + c]) - f64::from(q[r * cols + c])) * f64::from(x[t * cols + c]);
            }
            total += s * s;
        }
    }
    total
}
