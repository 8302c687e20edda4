//! Shared by the integration tests: a deterministic RNG, test data and a temp dir.
#![allow(dead_code)]

use rand_core::{RngCore, SeedableRng};
use rand_xoshiro::SplitMix64;
use std::path::PathBuf;

/// A seeded SplitMix64 stream.
pub struct Rng(SplitMix64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(SplitMix64::seed_from_u64(seed))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Roughly normal (sum of four uniforms), mean 0, sd about `sd`.
    pub fn normal(&mut self, sd: f32) -> f32 {
        let s: f32 = (0..4).map(|_| self.uniform()).sum::<f32>() - 2.0;
        s * sd * 1.732
    }
}

/// Weights of `rows * cols` with the cases quantizers get wrong: normal rows, an outlier row,
/// an all-zero block, a constant block, all-positive and all-negative rows, ties on .5.
pub fn test_weights(rows: usize, cols: usize, rng: &mut Rng) -> Vec<f32> {
    let mut x: Vec<f32> = (0..rows * cols).map(|_| rng.normal(0.05)).collect();
    for (r, row) in x.chunks_exact_mut(cols).enumerate() {
        match r % 7 {
            1 => row.iter_mut().step_by(13).for_each(|v| *v *= 40.0),
            2 => row[..32.min(cols)].fill(0.0),
            3 => row[..32.min(cols)].fill(0.37),
            4 => row.iter_mut().for_each(|v| *v = v.abs() + 0.01),
            5 => row.iter_mut().for_each(|v| *v = -v.abs()),
            6 => row.iter_mut().enumerate().for_each(|(i, v)| *v = (i % 17) as f32 * 0.5 - 4.0),
            _ => {}
        }
    }
    x
}

/// A fresh directory under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("lowbit-gguf-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}
