//! Q4_1: 4-bit with a minimum, 32 weights in 20 bytes.
//!
//! ```text
//! byte 0      2       4                  20
//!      | d:f16 | m:f16 | qs[16]           |
//! qs[j] = n[j] | n[j + 16] << 4,   w = n * d + m
//! ```
//! Reference quantizer: `d = (max - min) / 15`, `m = min`, `n = min(15, (i8)((x - min) / d + 0.5))`.
//! Weighted: `make_qkx3_quants(32, 15, x, qw * sqrt(sigma2 + x^2), ..., -0.9, 0.05, 36)`.

use super::kquants::make_qkx3_quants;
use super::{block_weights, min_max, GgmlBlock, WeightedBlock};
use half::f16;

/// Weights per Q4_1 block.
pub const QK4_1: usize = 32;

ggml_block! {
    /// One Q4_1 block (`block_q4_1`).
    pub struct BlockQ4_1: Q4_1, QK4_1, 20 bytes {
        /// Scale.
        pub d: f16,
        /// Minimum (added).
        pub m: f16,
        /// Codes, low nibble for weights 0..16, high nibble for 16..32.
        pub qs: [u8; QK4_1 / 2],
    }
}

impl GgmlBlock for BlockQ4_1 {
    fn dequantize(&self, y: &mut [f32]) {
        let (d, m) = (self.d.to_f32(), self.m.to_f32());
        for (j, &q) in self.qs.iter().enumerate() {
            y[j] = (q & 0xF) as f32 * d + m;
            y[j + 16] = (q >> 4) as f32 * d + m;
        }
    }

    fn quantize(x: &[f32]) -> Self {
        let (min, max) = min_max(&x[..QK4_1]);
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let code = |v: f32| (((v - min) * id + 0.5) as i8).min(15) as u8;
        let mut qs = [0u8; QK4_1 / 2];
        for (j, q) in qs.iter_mut().enumerate() {
            *q = code(x[j]) | (code(x[j + 16]) << 4);
        }
        BlockQ4_1 { d: f16::from_f32(d), m: f16::from_f32(min), qs }
    }
}

impl WeightedBlock for BlockQ4_1 {
    fn quantize_weighted(x: &[f32], qw: &[f32], row_sigma2: f32) -> Self {
        let (mut l, mut laux) = ([0u8; QK4_1], [0u8; QK4_1]);
        let w = block_weights(x, qw, row_sigma2);
        let (d, min) = make_qkx3_quants(15, &x[..QK4_1], &w, &mut l, &mut laux, -0.9, 0.05, 36);
        let qs = std::array::from_fn(|j| l[j] | (l[j + 16] << 4));
        BlockQ4_1 { d: f16::from_f32(d), m: f16::from_f32(-min), qs }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_block() {
        let b = BlockQ4_1 {
            d: f16::from_f32(0.25),
            m: f16::from_f32(-1.0),
            qs: std::array::from_fn(|j| j as u8 | ((j as u8) << 4)),
        };
        let mut y = [0f32; 32];
        b.dequantize(&mut y);
        assert_eq!(y[3], 3.0 * 0.25 - 1.0);
        assert_eq!(y[16 + 15], 15.0 * 0.25 - 1.0);
    }
}
