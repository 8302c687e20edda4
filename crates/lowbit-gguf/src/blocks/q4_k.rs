//! Q4_K: 4-bit k-quant, 256 weights in 144 bytes.
//!
//! ```text
//! byte 0      2          4             16                                  144
//!      | d:f16 | dmin:f16 | scales[12]  | qs[128]                           |
//! 8 sub-blocks of 32, each a 6-bit scale sc_j and min m_j packed in `scales`:
//!   j < 4:  scales[j] = sc_j,  scales[j + 4] = m_j            (low 6 bits)
//!   j >= 4: scales[j + 4] = sc_j & 15 | (m_j & 15) << 4,
//!           top 2 bits of sc_j in scales[j - 4] >> 6, of m_j in scales[j] >> 6
//! qs[32c + l] = n[64c + l] | n[64c + 32 + l] << 4,   w = d * sc_j * n - dmin * m_j
//! ```
//! Reference quantizer: per sub-block `make_qkx2_quants(32, 15, weights = rms + |x|, -1, 0.1,
//! 20)`, then `d = max sc / 63`, `dmin = max m / 63`, 6-bit `nearest_int`, and the codes
//! recomputed against the rounded scales. Weighted: [`quantize_k4_k5_weighted`] with `nmax = 15`.

use super::kquants::{pair_scales, quantize_k4_k5, quantize_k4_k5_weighted, QK_K};
use super::{GgmlBlock, WeightedBlock};
use half::f16;

ggml_block! {
    /// One Q4_K super-block (`block_q4_K`).
    pub struct BlockQ4K: Q4K, QK_K, 144 bytes {
        /// Super-block scale for the sub-block scales.
        pub d: f16,
        /// Super-block scale for the sub-block mins.
        pub dmin: f16,
        /// Eight 6-bit scales and eight 6-bit mins, packed.
        pub scales: [u8; 12],
        /// Codes, two 32-weight sub-blocks per 32 bytes (low nibbles, then high).
        pub qs: [u8; QK_K / 2],
    }
}

impl GgmlBlock for BlockQ4K {
    fn dequantize(&self, y: &mut [f32]) {
        let (d, dmin) = (self.d.to_f32(), self.dmin.to_f32());
        for pair in 0..4 {
            let q = &self.qs[32 * pair..32 * pair + 32];
            let (d1, m1, d2, m2) = pair_scales(d, dmin, pair, &self.scales);
            for (l, &q) in q.iter().enumerate() {
                y[64 * pair + l] = d1 * (q & 0xF) as f32 - m1;
                y[64 * pair + 32 + l] = d2 * (q >> 4) as f32 - m2;
            }
        }
    }

    fn quantize(x: &[f32]) -> Self {
        let (d, dmin, scales, l) = quantize_k4_k5(&x[..QK_K], 15, -1.0, 20);
        BlockQ4K { d, dmin, scales, qs: pack_q4k(&l) }
    }
}

impl WeightedBlock for BlockQ4K {
    fn quantize_weighted(x: &[f32], qw: &[f32], _row_sigma2: f32) -> Self {
        let (d, dmin, scales, l) = quantize_k4_k5_weighted(x, qw, 15, false);
        BlockQ4K { d, dmin, scales, qs: pack_q4k(&l) }
    }
}

fn pack_q4k(l: &[u8; QK_K]) -> [u8; QK_K / 2] {
    let mut qs = [0u8; QK_K / 2];
    for c in 0..4 {
        for k in 0..32 {
            qs[32 * c + k] = l[64 * c + k] | (l[64 * c + 32 + k] << 4);
        }
    }
    qs
}

#[cfg(test)]
mod tests {
    use super::super::kquants::pack_scale_min_k4;
    use super::*;

    #[test]
    fn hand_block() {
        let sc: [u8; 8] = [1, 2, 3, 4, 40, 50, 60, 63];
        let mn: [u8; 8] = [0, 1, 2, 3, 33, 17, 5, 62];
        let b = BlockQ4K {
            d: f16::from_f32(0.5),
            dmin: f16::from_f32(0.25),
            scales: pack_scale_min_k4(&sc, &mn),
            qs: std::array::from_fn(|i| (i % 16) as u8 | (((i + 1) % 16) as u8) << 4),
        };
        let mut y = [0f32; 256];
        b.dequantize(&mut y);
        for pair in 0..4 {
            for l in 0..32 {
                let i = 32 * pair + l;
                let (s1, m1, s2, m2) = (sc[2 * pair], mn[2 * pair], sc[2 * pair + 1], mn[2 * pair + 1]);
                assert_eq!(y[64 * pair + l], 0.5 * s1 as f32 * (i % 16) as f32 - 0.25 * m1 as f32);
                assert_eq!(y[64 * pair + 32 + l], 0.5 * s2 as f32 * ((i + 1) % 16) as f32 - 0.25 * m2 as f32);
            }
        }
    }
}
