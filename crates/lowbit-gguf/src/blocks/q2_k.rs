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
//! Weighted: per sub-block `make_qkx3_quants(16, 3)` with weights `qw * sqrt(sigma2 + x^2)`
//! (`sigma2` the super-block's mean x^2), 4-bit scales and mins by `make_qp_quants(15)`
//! weighted by each sub-block's total weight.

use super::kquants::{make_qkx2_quants, make_qkx3_quants, make_qp_quants, nearest_int, pack_2bit, QK_K};
use super::{positive_max, GgmlBlock, WeightedBlock};
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

/// Quantizes the 16 sub-block values `v` to 4 bits against their positive maximum, OR-ing the
/// codes into `sc` at bit `shift`; returns the super-block scale (zero, and no codes, when no
/// value is positive).
fn quantize_4bit(v: &[f32; 16], sc: &mut [u8; 16], shift: u32) -> f16 {
    const Q4SCALE: f32 = 15.0;
    let max = positive_max(v);
    if max > 0.0 {
        let iscale = Q4SCALE / max;
        for (s, &v) in sc.iter_mut().zip(v) {
            *s |= (nearest_int(iscale * v) << shift) as u8;
        }
        f16::from_f32(max / Q4SCALE)
    } else {
        f16::ZERO
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
        // 4-bit scales in the low nibbles, 4-bit mins in the high ones.
        let mut sc = [0u8; 16];
        let d = quantize_4bit(&scales, &mut sc, 0);
        let dmin = quantize_4bit(&mins, &mut sc, 4);
        finish(x, l, sc, d, dmin)
    }
}

impl WeightedBlock for BlockQ2K {
    fn quantize_weighted(x: &[f32], qw: &[f32], _row_sigma2: f32) -> Self {
        let x = &x[..QK_K];
        let mut l = [0u8; QK_K];
        let mut laux = [0u8; 16];
        let (mut scales, mut mins, mut sw) = ([0f32; 16], [0f32; 16], [0f32; 16]);
        let mut sum_x2 = 0f32;
        for &v in x {
            sum_x2 += v * v;
        }
        let sigma2 = sum_x2 / QK_K as f32;
        for j in 0..QK_K / 16 {
            let (xs, q) = (&x[16 * j..16 * j + 16], &qw[16 * j..16 * j + 16]);
            let weights: [f32; 16] = std::array::from_fn(|k| q[k] * (sigma2 + xs[k] * xs[k]).sqrt());
            for &w in &weights {
                sw[j] += w;
            }
            let (s, m) = make_qkx3_quants(3, xs, &weights, &mut l[16 * j..16 * j + 16], &mut laux, -0.9, 0.05, 36);
            scales[j] = s;
            mins[j] = m;
        }
        let (mut ls, mut lm) = ([0u8; 16], [0u8; 16]);
        let d = f16::from_f32(make_qp_quants(15, &scales, &mut ls, &sw));
        let dmin = f16::from_f32(make_qp_quants(15, &mins, &mut lm, &sw));
        finish(x, l, std::array::from_fn(|j| ls[j] | (lm[j] << 4)), d, dmin)
    }
}

/// Codes recomputed against the rounded scales and mins `sc`, then packed.
fn finish(x: &[f32], mut l: [u8; QK_K], sc: [u8; 16], d: f16, dmin: f16) -> BlockQ2K {
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
