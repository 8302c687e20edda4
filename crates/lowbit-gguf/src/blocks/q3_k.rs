//! Q3_K: 3-bit k-quant, 256 weights in 110 bytes.
//!
//! ```text
//! byte 0           32                 96           108     110
//!      | hmask[32]  | qs[64]           | scales[12]  | d:f16 |
//! 16 sub-blocks of 16, 6-bit scales stored + 32: low 4 bits of scale j in scales[j] (j < 8) or
//! scales[j - 8] >> 4, high 2 bits in scales[8 + j % 4] >> 2 (j / 4)
//! low 2 code bits packed as Q2_K; the 3rd bit of weight 32k + m is bit k of hmask[m], set
//! meaning "no offset": w = d * (scale_j - 32) * (low2 - (bit ? 0 : 4))
//! ```
//! Reference quantizer: per sub-block `make_q3_quants(16, 4, x, L, do_rmse)`, 6-bit scales
//! relative to the largest |scale|, codes recomputed against them. Weighted: per sub-block
//! `make_qx_quants(16, 4)` with weights `qw * sqrt(sigma2 + x^2)` (`sigma2` = 2 x the
//! super-block's mean x^2), the scales by `make_qx_quants(16, 32)` weighted by each sub-block's
//! total weight.

use super::kquants::{make_q3_quants, make_qx_quants, nearest_int, pack_2bit, QK_K};
use super::{GgmlBlock, WeightedBlock};
use half::f16;

ggml_block! {
    /// One Q3_K super-block (`block_q3_K`).
    pub struct BlockQ3K: Q3K, QK_K, 110 bytes {
        /// High code bits.
        pub hmask: [u8; QK_K / 8],
        /// Low two code bits.
        pub qs: [u8; QK_K / 4],
        /// Sixteen 6-bit scales, packed.
        pub scales: [u8; 12],
        /// Super-block scale.
        pub d: f16,
    }
}

/// Scale `j` (0..16) of the packed 12 bytes, still offset by 32.
fn scale(s: &[u8; 12], j: usize) -> i32 {
    let lo = if j < 8 { s[j] & 0xF } else { s[j - 8] >> 4 };
    (lo | (((s[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) as i32
}

impl GgmlBlock for BlockQ3K {
    fn dequantize(&self, y: &mut [f32]) {
        let d_all = self.d.to_f32();
        let (mut is, mut out, mut m) = (0, 0, 1u8);
        for half_ in 0..2 {
            let q = &self.qs[32 * half_..32 * half_ + 32];
            for shift in [0, 2, 4, 6] {
                for part in 0..2 {
                    let dl = d_all * (scale(&self.scales, is) - 32) as f32;
                    is += 1;
                    let range = 16 * part..16 * part + 16;
                    for (&qk, &hk) in q[range.clone()].iter().zip(&self.hmask[range]) {
                        let off = if hk & m != 0 { 0 } else { 4 };
                        y[out] = dl * (((qk >> shift) & 3) as i32 - off) as f32;
                        out += 1;
                    }
                }
                m <<= 1;
            }
        }
    }

    fn quantize(x: &[f32]) -> Self {
        let x = &x[..QK_K];
        let mut l = [0i8; QK_K];
        let mut scales = [0f32; 16];
        let (mut max_scale, mut amax) = (0f32, 0f32);
        for (j, s) in scales.iter_mut().enumerate() {
            *s = make_q3_quants(4, &x[16 * j..16 * j + 16], &mut l[16 * j..16 * j + 16]);
            if s.abs() > amax {
                amax = s.abs();
                max_scale = *s;
            }
        }
        let mut packed = [0u8; 12];
        let d = if max_scale != 0.0 {
            let iscale = -32.0 / max_scale;
            for (j, &s) in scales.iter().enumerate() {
                // C keeps nearest_int's result in an int8_t before clamping.
                let v = (nearest_int(iscale * s) as i8).clamp(-32, 31) as u8 + 32;
                if j < 8 {
                    packed[j] = v & 0xF;
                } else {
                    packed[j - 8] |= (v & 0xF) << 4;
                }
                packed[j % 4 + 8] |= (v >> 4) << (2 * (j / 4));
            }
            f16::from_f32(1.0 / iscale)
        } else {
            f16::ZERO
        };
        finish(x, l, packed, d)
    }
}

impl WeightedBlock for BlockQ3K {
    fn quantize_weighted(x: &[f32], qw: &[f32], _row_sigma2: f32) -> Self {
        let x = &x[..QK_K];
        let mut l = [0i8; QK_K];
        let (mut scales, mut sw) = ([0f32; 16], [0f32; 16]);
        let mut sum_x2 = 0f32;
        for &v in x {
            sum_x2 += v * v;
        }
        let sigma2 = 2.0 * sum_x2 / QK_K as f32;
        for j in 0..QK_K / 16 {
            let (xs, q) = (&x[16 * j..16 * j + 16], &qw[16 * j..16 * j + 16]);
            let weights: [f32; 16] = std::array::from_fn(|k| q[k] * (sigma2 + xs[k] * xs[k]).sqrt());
            let mut sumw = 0f32;
            for &w in &weights {
                sumw += w;
            }
            sw[j] = sumw;
            scales[j] = make_qx_quants(4, xs, &mut l[16 * j..16 * j + 16], 1, Some(&weights));
        }
        let mut ls = [0i8; 16];
        let d_block = make_qx_quants(32, &scales, &mut ls, 1, Some(&sw));
        let mut packed = [0u8; 12];
        for (j, &v) in ls.iter().enumerate() {
            let v = v as u8;
            if j < 8 {
                packed[j] = v & 0xF;
            } else {
                packed[j - 8] |= (v & 0xF) << 4;
            }
            packed[j % 4 + 8] |= (v >> 4) << (2 * (j / 4));
        }
        finish(x, l, packed, f16::from_f32(d_block))
    }
}

/// Codes (offset by 4) recomputed against the packed 6-bit scales, then split and packed.
fn finish(x: &[f32], mut l: [i8; QK_K], packed: [u8; 12], d: f16) -> BlockQ3K {
    for j in 0..16 {
        let dd = d.to_f32() * (scale(&packed, j) - 32) as f32;
        if dd == 0.0 {
            continue;
        }
        for ii in 0..16 {
            l[16 * j + ii] = (nearest_int(x[16 * j + ii] / dd).clamp(-4, 3) + 4) as i8;
        }
    }
    let mut hmask = [0u8; QK_K / 8];
    let mut low = [0u8; QK_K];
    for (j, (&v, lo)) in l.iter().zip(low.iter_mut()).enumerate() {
        let v = v as u8;
        *lo = if v > 3 {
            hmask[j % 32] |= 1 << (j / 32);
            v - 4
        } else {
            v
        };
    }
    BlockQ3K { hmask, qs: pack_2bit(&low), scales: packed, d }
}
