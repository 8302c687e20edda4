//! Q6_K: 6-bit k-quant, 256 weights in 210 bytes; `d` comes last.
//!
//! ```text
//! byte 0                 128         192              208     210
//!      | ql[128]          | qh[64]    | scales: i8[16]  | d:f16 |
//! 16 sub-blocks of 16 weights, one signed 8-bit scale each. Per 128-weight half h
//! (ql += 64h, qh += 32h), for l < 32:
//!   ql[l]      = n[l] & 15      | (n[l + 64] & 15) << 4
//!   ql[l + 32] = n[l + 32] & 15 | (n[l + 96] & 15) << 4
//!   qh[l]      = n[l] >> 4 | (n[l + 32] >> 4) << 2 | (n[l + 64] >> 4) << 4 | (n[l + 96] >> 4) << 6
//! w = d * scale_j * (n - 32)
//! ```
//! Reference quantizer: per sub-block `make_qx_quants(16, 32, x, L, rmse_type = 1)`, then
//! `d = max_scale / -128` and 8-bit scales `min(127, nearest_int(-128 * s / max_scale))`, codes
//! recomputed against them. Weighted: the same with the importances as `make_qx_quants`'s
//! weights (llama.cpp leaves its `sqrt(sigma2 + x^2)` factor commented out for Q6_K).

use super::kquants::{make_qx_quants, nearest_int, QK_K};
use super::{GgmlBlock, WeightedBlock};
use half::f16;

ggml_block! {
    /// One Q6_K super-block (`block_q6_K`).
    pub struct BlockQ6K: Q6K, QK_K, 210 bytes {
        /// Low four bits of the codes.
        pub ql: [u8; QK_K / 2],
        /// High two bits of the codes.
        pub qh: [u8; QK_K / 4],
        /// Sub-block scales.
        pub scales: [i8; QK_K / 16],
        /// Super-block scale.
        pub d: f16,
    }
}

impl GgmlBlock for BlockQ6K {
    fn dequantize(&self, y: &mut [f32]) {
        let d = self.d.to_f32();
        for h in 0..2 {
            let ql = &self.ql[64 * h..64 * h + 64];
            let qh = &self.qh[32 * h..32 * h + 32];
            let sc = &self.scales[8 * h..8 * h + 8];
            let y = &mut y[128 * h..128 * h + 128];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                y[l] = d * sc[is] as f32 * q1 as f32;
                y[l + 32] = d * sc[is + 2] as f32 * q2 as f32;
                y[l + 64] = d * sc[is + 4] as f32 * q3 as f32;
                y[l + 96] = d * sc[is + 6] as f32 * q4 as f32;
            }
        }
    }

    fn quantize(x: &[f32]) -> Self {
        quantize_q6k(x, None)
    }
}

impl WeightedBlock for BlockQ6K {
    fn quantize_weighted(x: &[f32], qw: &[f32], _row_sigma2: f32) -> Self {
        quantize_q6k(x, Some(qw))
    }
}

/// `quantize_row_q6_K_ref` (`qw = None`) or `quantize_row_q6_K_impl` with importances.
fn quantize_q6k(x: &[f32], qw: Option<&[f32]>) -> BlockQ6K {
    let x = &x[..QK_K];
    let mut l = [0i8; QK_K];
    let mut scales = [0f32; QK_K / 16];
    let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
    for (ib, s) in scales.iter_mut().enumerate() {
        let w = qw.map(|qw| &qw[16 * ib..16 * ib + 16]);
        *s = make_qx_quants(32, &x[16 * ib..16 * ib + 16], &mut l[16 * ib..16 * ib + 16], 1, w);
        if s.abs() > max_abs_scale {
            max_abs_scale = s.abs();
            max_scale = *s;
        }
    }
    if max_abs_scale < 1e-15 {
        return bytemuck::Zeroable::zeroed();
    }
    let iscale = -128.0 / max_scale;
    let d = f16::from_f32(1.0 / iscale);
    let sc: [i8; 16] = std::array::from_fn(|ib| nearest_int(iscale * scales[ib]).min(127) as i8);
    for j in 0..QK_K / 16 {
        let dd = d.to_f32() * sc[j] as f32;
        if dd == 0.0 {
            continue;
        }
        for ii in 0..16 {
            l[16 * j + ii] = (nearest_int(x[16 * j + ii] / dd).clamp(-32, 31) + 32) as i8;
        }
    }
    let n = |i: usize| l[i] as u8;
    let (mut ql, mut qh) = ([0u8; QK_K / 2], [0u8; QK_K / 4]);
    for h in 0..2 {
        let (j, ql, qh) = (128 * h, &mut ql[64 * h..64 * h + 64], &mut qh[32 * h..32 * h + 32]);
        for k in 0..32 {
            ql[k] = (n(j + k) & 0xF) | ((n(j + k + 64) & 0xF) << 4);
            ql[k + 32] = (n(j + k + 32) & 0xF) | ((n(j + k + 96) & 0xF) << 4);
            qh[k] = (n(j + k) >> 4)
                | ((n(j + k + 32) >> 4) << 2)
                | ((n(j + k + 64) >> 4) << 4)
                | ((n(j + k + 96) >> 4) << 6);
        }
    }
    BlockQ6K { ql, qh, scales: sc, d }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_block() {
        // All codes 32 + 5 = 37 (ql nibbles 5, qh fields 0b10).
        let b = BlockQ6K {
            ql: [0x55; 128],
            qh: [0xAA; 64],
            scales: std::array::from_fn(|i| i as i8 - 8),
            d: f16::from_f32(0.5),
        };
        let mut y = [0f32; 256];
        b.dequantize(&mut y);
        for (i, v) in y.iter().enumerate() {
            assert_eq!(*v, 0.5 * ((i / 16) as f32 - 8.0) * 5.0, "weight {i}");
        }
    }
}
