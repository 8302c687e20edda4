//! Q4_0: 4-bit symmetric, 32 weights in 18 bytes.
//!
//! ```text
//! byte 0      2                  18
//!      | d:f16 | qs[16]           |
//! qs[j] = n[j] | n[j + 16] << 4,   w = (n - 8) * d
//! ```
//! Reference quantizer: `max` is the element of largest |x| (the first such), `d = max / -8`,
//! `n = min(15, (i8)(x / d + 8.5))`, so the extreme element maps to code 0 exactly.
//! Weighted: `make_qx_quants(32, 8, x, L, 1, qw * sqrt(sigma2 + x^2))`.

use super::kquants::make_qx_quants;
use super::{block_weights, signed_absmax, GgmlBlock, WeightedBlock};
use half::f16;

/// Weights per Q4_0 block.
pub const QK4_0: usize = 32;

ggml_block! {
    /// One Q4_0 block (`block_q4_0`).
    pub struct BlockQ4_0: Q4_0, QK4_0, 18 bytes {
        /// Scale.
        pub d: f16,
        /// Codes, low nibble for weights 0..16, high nibble for 16..32.
        pub qs: [u8; QK4_0 / 2],
    }
}

impl GgmlBlock for BlockQ4_0 {
    fn dequantize(&self, y: &mut [f32]) {
        let d = self.d.to_f32();
        for (j, &q) in self.qs.iter().enumerate() {
            y[j] = ((q & 0xF) as i32 - 8) as f32 * d;
            y[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
        }
    }

    fn quantize(x: &[f32]) -> Self {
        let max = signed_absmax(&x[..QK4_0]);
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let code = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
        let mut qs = [0u8; QK4_0 / 2];
        for (j, q) in qs.iter_mut().enumerate() {
            *q = code(x[j]) | (code(x[j + 16]) << 4);
        }
        BlockQ4_0 { d: f16::from_f32(d), qs }
    }
}

impl WeightedBlock for BlockQ4_0 {
    fn quantize_weighted(x: &[f32], qw: &[f32], row_sigma2: f32) -> Self {
        let mut l = [0i8; QK4_0];
        let d = make_qx_quants(8, &x[..QK4_0], &mut l, 1, Some(&block_weights(x, qw, row_sigma2)));
        BlockQ4_0 { d: f16::from_f32(d), qs: std::array::from_fn(|j| l[j] as u8 | ((l[j + 16] as u8) << 4)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_block() {
        let b = BlockQ4_0 { d: f16::from_f32(0.5), qs: std::array::from_fn(|j| j as u8 | ((15 - j as u8) << 4)) };
        let mut y = [0f32; 32];
        b.dequantize(&mut y);
        for j in 0..16 {
            assert_eq!(y[j], (j as f32 - 8.0) * 0.5);
            assert_eq!(y[j + 16], ((15 - j) as f32 - 8.0) * 0.5);
        }
    }

    #[test]
    fn extreme_element_is_exact() {
        let mut x = [0.1f32; 32];
        x[5] = -4.0;
        let b = BlockQ4_0::quantize(&x);
        let mut y = [0f32; 32];
        b.dequantize(&mut y);
        assert_eq!(y[5], -4.0);
    }
}
