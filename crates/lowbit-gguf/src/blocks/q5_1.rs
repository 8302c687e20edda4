//! Q5_1: 5-bit with a minimum, 32 weights in 24 bytes.
//!
//! ```text
//! byte 0      2       4          8                  24
//!      | d:f16 | m:f16 | qh[4]    | qs[16]           |
//! codes packed as Q5_0,   w = n * d + m
//! ```
//! Reference quantizer: as Q4_1 with `d = (max - min) / 31` and `n = (u8)((x - min) / d + 0.5)`.
//! Weighted: as Q4_1's with `nmax = 31`.

use super::kquants::make_qkx3_quants;
use super::q5_0::{pack5, unpack5};
use super::{block_weights, min_max, GgmlBlock, WeightedBlock};
use half::f16;

/// Weights per Q5_1 block.
pub const QK5_1: usize = 32;

ggml_block! {
    /// One Q5_1 block (`block_q5_1`).
    pub struct BlockQ5_1: Q5_1, QK5_1, 24 bytes {
        /// Scale.
        pub d: f16,
        /// Minimum (added).
        pub m: f16,
        /// Fifth bits, bit `i` for weight `i` (bytes of a little-endian u32).
        pub qh: [u8; 4],
        /// Low four bits, weights 0..16 in the low nibbles, 16..32 in the high ones.
        pub qs: [u8; QK5_1 / 2],
    }
}

impl GgmlBlock for BlockQ5_1 {
    fn dequantize(&self, y: &mut [f32]) {
        let (d, m) = (self.d.to_f32(), self.m.to_f32());
        for (y, n) in y.iter_mut().zip(unpack5(self.qh, &self.qs)) {
            *y = n as f32 * d + m;
        }
    }

    fn quantize(x: &[f32]) -> Self {
        let (min, max) = min_max(&x[..QK5_1]);
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let n: [u8; 32] = std::array::from_fn(|i| ((x[i] - min) * id + 0.5) as u8);
        let (qh, qs) = pack5(&n);
        BlockQ5_1 { d: f16::from_f32(d), m: f16::from_f32(min), qh, qs }
    }
}

impl WeightedBlock for BlockQ5_1 {
    fn quantize_weighted(x: &[f32], qw: &[f32], row_sigma2: f32) -> Self {
        let (mut l, mut laux) = ([0u8; QK5_1], [0u8; QK5_1]);
        let w = block_weights(x, qw, row_sigma2);
        let (d, min) = make_qkx3_quants(31, &x[..QK5_1], &w, &mut l, &mut laux, -0.9, 0.05, 36);
        let (qh, qs) = pack5(&l);
        BlockQ5_1 { d: f16::from_f32(d), m: f16::from_f32(-min), qh, qs }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_block() {
        let qh: u32 = (1 << 1) | (1 << 18);
        let b = BlockQ5_1 { d: f16::from_f32(1.0), m: f16::from_f32(0.5), qh: qh.to_le_bytes(), qs: [0x33; 16] };
        let mut y = [0f32; 32];
        b.dequantize(&mut y);
        assert_eq!((y[1], y[2]), (19.5, 3.5));
    }
}
