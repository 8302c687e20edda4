//! Shared by the kernel test files.
#![allow(dead_code)] // each test crate uses its own subset

use lowbit_cpu::KernelLevel;

/// Every kernel level this CPU runs.
pub fn levels() -> Vec<KernelLevel> {
    [KernelLevel::Scalar, KernelLevel::Avx2, KernelLevel::Avx512]
        .into_iter()
        .filter(|&l| l <= KernelLevel::detect())
        .collect()
}

/// SplitMix64: a seeded generator with no dependencies.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn f(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f()).collect()
    }
    /// Uniform int8 codes over the whole range.
    pub fn codes(&mut self, n: usize) -> Vec<i8> {
        (0..n).map(|_| self.next() as u8 as i8).collect()
    }
}
