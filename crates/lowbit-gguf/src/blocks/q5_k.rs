//! Q5_K: 5-bit k-quant, 256 weights in 176 bytes.
//!
//! ```text
//! byte 0      2          4             16        48                        176
//!      | d:f16 | dmin:f16 | scales[12]  | qh[32]  | qs[128]                 |
//! scales and low 4 bits as Q4_K; the 5th bit of weight 64c + l is bit 2c of qh[l], of weight
//! 64c + 32 + l bit 2c + 1,   w = d * sc_j * n - dmin * m_j
//! ```
//! Reference quantizer: as Q4_K with `make_qkx2_quants(32, 31, ..., -0.5, 0.1, 15)`.
//! Weighted: as Q4_K's with `nmax = 31` (and 6-bit values clamped to 63).

use super::kquants::{pair_scales, quantize_k4_k5, quantize_k4_k5_weighted, QK_K};
use super::{GgmlBlock, WeightedBlock};
use half::f16;

ggml_block! {
    /// One Q5_K super-block (`block_q5_K`).
    pub struct BlockQ5K: Q5K, QK_K, 176 bytes {
        /// Super-block scale for the sub-block scales.
        pub d: f16,
        /// Super-block scale for the sub-block mins.
        pub dmin: f16,
        /// Eight 6-bit scales and eight 6-bit mins, packed as in Q4_K.
        pub scales: [u8; 12],
        /// Fifth bits.
        pub qh: [u8; QK_K / 8],
        /// Low four bits, as Q4_K's codes.
        pub qs: [u8; QK_K / 2],
    }
}

impl GgmlBlock for BlockQ5K {
    fn dequantize(&self, y: &mut [f32]) {
        let (d, dmin) = (self.d.to_f32(), self.dmin.to_f32());
        for pair in 0..4 {
            let q = &self.qs[32 * pair..32 * pair + 32];
            let (d1, m1, d2, m2) = pair_scales(d, dmin, pair, &self.scales);
            for (l, (&q, &h)) in q.iter().zip(&self.qh).enumerate() {
                let lo = (q & 0xF) | (((h >> (2 * pair)) & 1) << 4);
                let hi = (q >> 4) | (((h >> (2 * pair + 1)) & 1) << 4);
                y[64 * pair + l] = d1 * lo as f32 - m1;
                y[64 * pair + 32 + l] = d2 * hi as f32 - m2;
            }
        }
    }

    fn quantize(x: &[f32]) -> Self {
        let (d, dmin, scales, l) = quantize_k4_k5(&x[..QK_K], 31, -0.5, 15);
        let (qh, qs) = pack_q5k(&l);
        BlockQ5K { d, dmin, scales, qh, qs }
    }
}

impl WeightedBlock for BlockQ5K {
    fn quantize_weighted(x: &[f32], qw: &[f32], _row_sigma2: f32) -> Self {
        let (d, dmin, scales, l) = quantize_k4_k5_weighted(x, qw, 31, true);
        let (qh, qs) = pack_q5k(&l);
        BlockQ5K { d, dmin, scales, qh, qs }
    }
}

fn pack_q5k(l: &[u8; QK_K]) -> ([u8; QK_K / 8], [u8; QK_K / 2]) {
    let (mut qh, mut qs) = ([0u8; QK_K / 8], [0u8; QK_K / 2]);
    for c in 0..4 {
        for k in 0..32 {
            let (l1, l2) = (l[64 * c + k], l[64 * c + 32 + k]);
            qh[k] |= ((l1 >> 4) << (2 * c)) | ((l2 >> 4) << (2 * c + 1));
            qs[32 * c + k] = (l1 & 0xF) | ((l2 & 0xF) << 4);
        }
    }
    (qh, qs)
}
