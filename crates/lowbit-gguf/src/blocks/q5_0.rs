//! Q5_0: 5-bit symmetric, 32 weights in 22 bytes.
//!
//! ```text
//! byte 0      2          6                  22
//!      | d:f16 | qh[4]    | qs[16]           |
//! low 4 bits: qs[j] = n[j] & 15 | (n[j + 16] & 15) << 4
//! 5th bit of n[i] is bit i of qh (a little-endian u32),   w = (n - 16) * d
//! ```
//! Reference quantizer: as Q4_0 with `d = max / -16` and `n = min(31, (i8)(x / d + 16.5))`.
//! Weighted: `make_qx_quants(32, 16, x, L, 1, qw * sqrt(sigma2 + x^2))`.

use super::kquants::make_qx_quants;
use super::{block_weights, signed_absmax, GgmlBlock, WeightedBlock};
use half::f16;

/// Weights per Q5_0 block.
pub const QK5_0: usize = 32;

ggml_block! {
    /// One Q5_0 block (`block_q5_0`).
    pub struct BlockQ5_0: Q5_0, QK5_0, 22 bytes {
        /// Scale.
        pub d: f16,
        /// Fifth bits, bit `i` for weight `i` (bytes of a little-endian u32).
        pub qh: [u8; 4],
        /// Low four bits, weights 0..16 in the low nibbles, 16..32 in the high ones.
        pub qs: [u8; QK5_0 / 2],
    }
}

/// The 5-bit codes of a Q5_0/Q5_1 block.
pub(crate) fn unpack5(qh: [u8; 4], qs: &[u8; 16]) -> [u8; 32] {
    let qh = u32::from_le_bytes(qh);
    let mut n = [0u8; 32];
    for (j, &q) in qs.iter().enumerate() {
        n[j] = (q & 0xF) | ((((qh >> j) & 1) as u8) << 4);
        n[j + 16] = (q >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
    }
    n
}

/// Packs 5-bit codes as Q5_0/Q5_1 store them.
pub(crate) fn pack5(n: &[u8; 32]) -> ([u8; 4], [u8; 16]) {
    let mut qh = 0u32;
    let mut qs = [0u8; 16];
    for j in 0..16 {
        qs[j] = (n[j] & 0xF) | ((n[j + 16] & 0xF) << 4);
        qh |= (((n[j] & 0x10) >> 4) as u32) << j;
        qh |= (((n[j + 16] & 0x10) >> 4) as u32) << (j + 16);
    }
    (qh.to_le_bytes(), qs)
}

impl GgmlBlock for BlockQ5_0 {
    fn dequantize(&self, y: &mut [f32]) {
        let d = self.d.to_f32();
        for (y, n) in y.iter_mut().zip(unpack5(self.qh, &self.qs)) {
            *y = (n as i32 - 16) as f32 * d;
        }
    }

    fn quantize(x: &[f32]) -> Self {
        let max = signed_absmax(&x[..QK5_0]);
        let d = max / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let n: [u8; 32] = std::array::from_fn(|i| ((x[i] * id + 16.5) as i8).min(31) as u8);
        let (qh, qs) = pack5(&n);
        BlockQ5_0 { d: f16::from_f32(d), qh, qs }
    }
}

impl WeightedBlock for BlockQ5_0 {
    fn quantize_weighted(x: &[f32], qw: &[f32], row_sigma2: f32) -> Self {
        let mut l = [0i8; QK5_0];
        let d = make_qx_quants(16, &x[..QK5_0], &mut l, 1, Some(&block_weights(x, qw, row_sigma2)));
        let (qh, qs) = pack5(&l.map(|v| v as u8));
        BlockQ5_0 { d: f16::from_f32(d), qh, qs }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifth_bit_comes_from_qh() {
        let qh: u32 = (1 << 1) | (1 << 18);
        let b = BlockQ5_0 { d: f16::from_f32(1.0), qh: qh.to_le_bytes(), qs: [0x33; 16] };
        let mut y = [0f32; 32];
        b.dequantize(&mut y);
        assert_eq!((y[0], y[1], y[17], y[18]), (3.0 - 16.0, 19.0 - 16.0, 3.0 - 16.0, 19.0 - 16.0));
        let n: [u8; 32] = std::array::from_fn(|i| (i * 7 % 32) as u8);
        let (qh, qs) = pack5(&n);
        assert_eq!(unpack5(qh, &qs), n);
    }
}
