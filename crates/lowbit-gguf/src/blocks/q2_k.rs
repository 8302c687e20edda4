//! Q2_K: 2-bit k-quant, 256 weights in 84 bytes.
//!
//! ```text
//! byte 0              16                    80      82         84
//!      | scales[16]    | qs[64]              | d:f16 | dmin:f16 |
//! 16 sub-blocks of 16: scales[j] = sc_j | m_j << 4 (4 bits each)
//! qs: per 128 weights, byte l of 32 holds weights l, l+32, l+64, l+96 in bits 0-1, 2-3, 4-5, 6-7
//! w = d * sc_j * n - dmin * m_j
//! ```
//! Reference quantizer: per sub-block `make_qkx2_quants(16, 3, weights = |x|, -0.5, 0.1, 15,
//! use_mad)`, 4-bit scales and mins relative to the largest, codes recomputed against them.

use super::kquants::{make_qkx2_quants, nearest_int, pack_2bit, QK_K};
use super::{positive_max, GgmlBlock};
use half::f16;

ggml_block! {
    /// One Q2_K super-block (`block_q2_K`).
    pub struct BlockQ2K: Q2K, QK_K, 84 bytes {
        /// Sub-block scale (low nibble) and min (high nibble).
        pub scales: [u8; QK_K / 16],
        /// 2-bit codes.
        pub qs: [u8; QK_K / 4],
        /// Super-block scale for the scales.
        pub d: f16,
        /// Super-block scale for the mins.
        pub dmin: f16,
    }
}

impl GgmlBlock for BlockQ2K {
    fn dequantize(&self, y: &mut [f32]) {
        let (d, min) = (self.d.to_f32(), self.dmin.to_f32());
        let mut is = 0;
        let mut out = 0;
        for half_ in 0..2 {
            let q = &self.qs[32 * half_..32 * half_ + 32];
            for shift in [0, 2, 4, 6] {
                for part in 0..2 {
                    let sc = self.scales[is];
                    is += 1;
                    let (dl, ml) = (d * (sc & 0xF) as f32, min * (sc >> 4) as f32);
                    for &b in &q[16 * part..16 * part + 16] {
                        y[out] = dl * ((b >> shift) & 3) as f32 - ml;
                        out += 1;
                    }
                }
            }
        }
    }

    fn quantize(x: &[f32]) -> Self {
        let x = &x[..QK_K];
        const Q4SCALE: f32 = 15.0;
        let mut l = [0u8; QK_K];
        let mut laux = [0u8; 16];
        let (mut scales, mut mins) = ([0f32; 16], [0f32; 16]);
        for j in 0..QK_K / 16 {
            let xs = &x[16 * j..16 * j + 16];
            let weights: [f32; 16] = std::array::from_fn(|k| xs[k].abs());
            let (s, m) = make_qkx2_quants(3, xs, &weights, &mut l[16 * j..16 * j + 16], &mut laux, -0.5, 0.1, 15, true);
            scales[j] = s;
            mins[j] = m;
        }
        let (max_scale, max_min) = (positive_max(&scales), positive_max(&mins));
        let mut sc = [0u8; 16];
        let d = if max_scale > 0.0 {
            let iscale = Q4SCALE / max_scale;
            for (s, &v) in sc.iter_mut().zip(&scales) {
                *s = nearest_int(iscale * v) as u8;
            }
            f16::from_f32(max_scale / Q4SCALE)
        } else {
            f16::ZERO
        };
        let dmin = if max_min > 0.0 {
            let iscale = Q4SCALE / max_min;
            for (s, &v) in sc.iter_mut().zip(&mins) {
                *s |= (nearest_int(iscale * v) << 4) as u8;
            }
            f16::from_f32(max_min / Q4SCALE)
        } else {
            f16::ZERO
        };
        for j in 0..QK_K / 16 {
            let dd = d.to_f32() * (sc[j] & 0xF) as f32;
            if dd == 0.0 {
                continue;
            }
            let dm = dmin.to_f32() * (sc[j] >> 4) as f32;
            for ii in 0..16 {
                l[16 * j + ii] = nearest_int((x[16 * j + ii] + dm) / dd).clamp(0, 3) as u8;
            }
        }
        BlockQ2K { scales: sc, qs: pack_2bit(&l), d, dmin }
    }
}
