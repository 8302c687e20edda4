//! ggml block formats, dequantized to f32.
//!
//! Layouts follow ggml's `ggml-common.h` / `ggml-quants.c` (`dequantize_row_*`) exactly; every
//! scale `d`, `m`, `dmin` is an IEEE f16, little-endian. `QK` is the number of weights per block.
//!
//! ```text
//! Q4_0  (32 w, 18 B): d | qs[16]           w[j] = (lo(qs[j]) - 8) d,  w[j+16] = (hi(qs[j]) - 8) d
//! Q4_1  (32 w, 20 B): d | m | qs[16]       w[j] = lo(qs[j]) d + m,    w[j+16] = hi(qs[j]) d + m
//! Q5_0  (32 w, 22 B): d | qh:u32 | qs[16]  5th bit of w[j] is bit j of qh, of w[j+16] bit j+16; -16
//! Q5_1  (32 w, 24 B): d | m | qh | qs[16]  as Q5_0 without the -16, plus m
//! Q8_0  (32 w, 34 B): d | qs: i8[32]       w[j] = qs[j] d
//! Q4_K (256 w, 144 B): d | dmin | scales[12] | qs[128]
//!     8 sub-blocks of 32, 6-bit scale sc and min mn each (packed in `scales`, see `scale_min_k4`);
//!     each 64 weights use 32 bytes of qs: low nibbles then high nibbles; w = d sc q - dmin mn
//! Q5_K (256 w, 176 B): d | dmin | scales[12] | qh[32] | qs[128]
//!     as Q4_K, with the 5th bit of weight l of sub-block pair p in bit 2p (first half) or 2p+1 of qh[l]
//! Q6_K (256 w, 210 B): ql[128] | qh[64] | scales: i8[16] | d
//!     per 128 weights: 64 bytes of ql, 32 of qh, 8 scales (one per 16 weights);
//!     q = (4 low bits from ql) | (2 high bits from qh) << 4, w = d scale (q - 32)
//! ```

use half::{bf16, f16};

/// A ggml tensor type lowbit can read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgmlType {
    /// f32.
    F32,
    /// f16.
    F16,
    /// bf16.
    Bf16,
    /// 4-bit symmetric, blocks of 32.
    Q4_0,
    /// 4-bit with minimum, blocks of 32.
    Q4_1,
    /// 5-bit symmetric, blocks of 32.
    Q5_0,
    /// 5-bit with minimum, blocks of 32.
    Q5_1,
    /// 8-bit symmetric, blocks of 32.
    Q8_0,
    /// 4-bit k-quant, super-blocks of 256.
    Q4K,
    /// 5-bit k-quant, super-blocks of 256.
    Q5K,
    /// 6-bit k-quant, super-blocks of 256.
    Q6K,
}

impl GgmlType {
    /// The type for ggml's numeric id, if lowbit reads it.
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            12 => GgmlType::Q4K,
            13 => GgmlType::Q5K,
            14 => GgmlType::Q6K,
            30 => GgmlType::Bf16,
            _ => return None,
        })
    }
    /// ggml's numeric id.
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q4K => 12,
            GgmlType::Q5K => 13,
            GgmlType::Q6K => 14,
            GgmlType::Bf16 => 30,
        }
    }
    /// Weights per block.
    pub fn block_len(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 => 32,
            GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => 256,
        }
    }
    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::Bf16 => 2,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q5_0 => 22,
            GgmlType::Q5_1 => 24,
            GgmlType::Q8_0 => 34,
            GgmlType::Q4K => 144,
            GgmlType::Q5K => 176,
            GgmlType::Q6K => 210,
        }
    }
    /// Bytes holding `n` weights, or `None` when `n` is not a whole number of blocks.
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        (n % self.block_len() == 0).then(|| n / self.block_len()).and_then(|b| b.checked_mul(self.block_bytes()))
    }
}

fn h(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Sub-block `j`'s 6-bit (scale, min) in the 12 packed bytes of Q4_K/Q5_K: sub-blocks 0..4 keep
/// theirs in the low 6 bits of bytes `j` and `j + 4`; 4..8 take 4 low bits from byte `j + 4`
/// and their top 2 bits from the spare high bits of bytes `j - 4` and `j`.
fn scale_min_k4(j: usize, s: &[u8]) -> (f32, f32) {
    let (sc, m) = if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        ((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
    };
    (sc as f32, m as f32)
}

/// Dequantizes `out.len()` weights of type `ty` from `src`, which must hold exactly
/// `ty.bytes_for(out.len())` bytes (the caller checks; this function asserts).
pub fn dequantize(ty: GgmlType, src: &[u8], out: &mut [f32]) {
    assert_eq!(Some(src.len()), ty.bytes_for(out.len()), "dequantize: byte count does not match");
    let bl = ty.block_len();
    let blocks = src.chunks_exact(ty.block_bytes()).zip(out.chunks_exact_mut(bl));
    match ty {
        GgmlType::F32 => blocks.for_each(|(b, y)| y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        GgmlType::F16 => blocks.for_each(|(b, y)| y[0] = h(b, 0)),
        GgmlType::Bf16 => blocks.for_each(|(b, y)| y[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        GgmlType::Q4_0 => blocks.for_each(|(b, y)| {
            let d = h(b, 0);
            for j in 0..16 {
                let q = b[2 + j];
                y[j] = ((q & 0xF) as i32 - 8) as f32 * d;
                y[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
            }
        }),
        GgmlType::Q4_1 => blocks.for_each(|(b, y)| {
            let (d, m) = (h(b, 0), h(b, 2));
            for j in 0..16 {
                let q = b[4 + j];
                y[j] = (q & 0xF) as f32 * d + m;
                y[j + 16] = (q >> 4) as f32 * d + m;
            }
        }),
        GgmlType::Q5_0 | GgmlType::Q5_1 => blocks.for_each(|(b, y)| {
            let with_min = ty == GgmlType::Q5_1;
            let d = h(b, 0);
            let (m, at) = if with_min { (h(b, 2), 4) } else { (0.0, 2) };
            let qh = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
            let offset = if with_min { 0 } else { 16 };
            for j in 0..16 {
                let q = b[at + 4 + j];
                let lo = (q & 0xF) as i32 | ((((qh >> j) & 1) as i32) << 4);
                let hi = (q >> 4) as i32 | ((((qh >> (j + 16)) & 1) as i32) << 4);
                y[j] = (lo - offset) as f32 * d + m;
                y[j + 16] = (hi - offset) as f32 * d + m;
            }
        }),
        GgmlType::Q8_0 => blocks.for_each(|(b, y)| {
            let d = h(b, 0);
            for j in 0..32 {
                y[j] = (b[2 + j] as i8) as f32 * d;
            }
        }),
        GgmlType::Q4K | GgmlType::Q5K => blocks.for_each(|(b, y)| {
            let five = ty == GgmlType::Q5K;
            let (d, dmin) = (h(b, 0), h(b, 2));
            let scales = &b[4..16];
            let (qh, qs) = if five { (&b[16..48], &b[48..176]) } else { (&b[0..0], &b[16..144]) };
            for pair in 0..4 {
                let q = &qs[32 * pair..32 * pair + 32];
                let (sc1, m1) = scale_min_k4(2 * pair, scales);
                let (sc2, m2) = scale_min_k4(2 * pair + 1, scales);
                let (d1, m1, d2, m2) = (d * sc1, dmin * m1, d * sc2, dmin * m2);
                for l in 0..32 {
                    let (mut lo, mut hi) = ((q[l] & 0xF) as u32, (q[l] >> 4) as u32);
                    if five {
                        lo |= ((qh[l] >> (2 * pair)) as u32 & 1) << 4;
                        hi |= ((qh[l] >> (2 * pair + 1)) as u32 & 1) << 4;
                    }
                    y[64 * pair + l] = d1 * lo as f32 - m1;
                    y[64 * pair + 32 + l] = d2 * hi as f32 - m2;
                }
            }
        }),
        GgmlType::Q6K => blocks.for_each(|(b, y)| {
            let d = h(b, 208);
            for half_ in 0..2 {
                let ql = &b[64 * half_..64 * half_ + 64];
                let qh = &b[128 + 32 * half_..128 + 32 * half_ + 32];
                let sc = &b[192 + 8 * half_..192 + 8 * half_ + 8];
                let y = &mut y[128 * half_..128 * half_ + 128];
                for l in 0..32 {
                    let is = l / 16;
                    let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
                    let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
                    let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
                    let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
                    y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
                    y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
                    y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
                    y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
                }
            }
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16b(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_le_bytes()
    }

    #[test]
    fn q4_0_hand_block() {
        let mut b = vec![];
        b.extend(f16b(0.5));
        b.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut y = [0f32; 32];
        dequantize(GgmlType::Q4_0, &b, &mut y);
        for j in 0..16 {
            assert_eq!(y[j], (j as f32 - 8.0) * 0.5);
            assert_eq!(y[j + 16], ((15 - j) as f32 - 8.0) * 0.5);
        }
    }

    #[test]
    fn q4_1_and_q8_0_hand_blocks() {
        let mut b = vec![];
        b.extend(f16b(0.25));
        b.extend(f16b(-1.0));
        b.extend((0..16u8).map(|j| j | (j << 4)));
        let mut y = [0f32; 32];
        dequantize(GgmlType::Q4_1, &b, &mut y);
        assert_eq!(y[3], 3.0 * 0.25 - 1.0);
        assert_eq!(y[16 + 15], 15.0 * 0.25 - 1.0);

        let mut b = vec![];
        b.extend(f16b(2.0));
        b.extend((0..32).map(|j| (j as i8 - 16) as u8));
        dequantize(GgmlType::Q8_0, &b, &mut y);
        assert_eq!(y[0], -32.0);
        assert_eq!(y[31], 30.0);
    }

    #[test]
    fn q5_hand_blocks_take_the_fifth_bit_from_qh() {
        // qh bit j set for j = 1 and bit 16 + 2 set: y[1] and y[18] get +16.
        let qh: u32 = (1 << 1) | (1 << 18);
        let mut b = vec![];
        b.extend(f16b(1.0));
        b.extend(qh.to_le_bytes());
        b.extend([0x33u8; 16]);
        let mut y = [0f32; 32];
        dequantize(GgmlType::Q5_0, &b, &mut y);
        assert_eq!(y[0], 3.0 - 16.0);
        assert_eq!(y[1], 19.0 - 16.0);
        assert_eq!(y[18], 19.0 - 16.0);
        assert_eq!(y[17], 3.0 - 16.0);

        let mut b = vec![];
        b.extend(f16b(1.0));
        b.extend(f16b(0.5));
        b.extend(qh.to_le_bytes());
        b.extend([0x33u8; 16]);
        dequantize(GgmlType::Q5_1, &b, &mut y);
        assert_eq!(y[1], 19.5);
        assert_eq!(y[2], 3.5);
    }

    #[test]
    fn q4_k_hand_block() {
        // Sub-block scales 1..=8 and mins 0..8 (both < 64), packed as ggml packs them.
        let sc: [u8; 8] = [1, 2, 3, 4, 40, 50, 60, 63];
        let mn: [u8; 8] = [0, 1, 2, 3, 33, 17, 5, 62];
        let mut s = [0u8; 12];
        for j in 0..4 {
            s[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
            s[j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6);
            s[j + 8] = (sc[j + 4] & 0xF) | ((mn[j + 4] & 0xF) << 4);
        }
        for j in 0..8 {
            assert_eq!(scale_min_k4(j, &s), (sc[j] as f32, mn[j] as f32));
        }
        let mut b = vec![];
        b.extend(f16b(0.5));
        b.extend(f16b(0.25));
        b.extend(s);
        b.extend((0..128).map(|i| (i % 16) as u8 | (((i + 1) % 16) as u8) << 4));
        let mut y = [0f32; 256];
        dequantize(GgmlType::Q4K, &b, &mut y);
        for pair in 0..4 {
            for l in 0..32 {
                let i = 32 * pair + l;
                let (s1, m1, s2, m2) = (sc[2 * pair], mn[2 * pair], sc[2 * pair + 1], mn[2 * pair + 1]);
                assert_eq!(y[64 * pair + l], 0.5 * s1 as f32 * (i % 16) as f32 - 0.25 * m1 as f32);
                assert_eq!(y[64 * pair + 32 + l], 0.5 * s2 as f32 * ((i + 1) % 16) as f32 - 0.25 * m2 as f32);
            }
        }
    }

    #[test]
    fn q6_k_hand_block() {
        // All codes 32 + 5 = 37 (ql low nibble 5, high nibble 5, qh bits 2 = 0b10 per field).
        let mut b = vec![0x55u8; 128];
        b.extend([0xAAu8; 64]);
        b.extend((0..16).map(|i| (i as i8 - 8) as u8));
        b.extend(f16b(0.5));
        let mut y = [0f32; 256];
        dequantize(GgmlType::Q6K, &b, &mut y);
        for (i, v) in y.iter().enumerate() {
            let scale = (i / 16) as f32 - 8.0;
            assert_eq!(*v, 0.5 * scale * 5.0, "weight {i}");
        }
    }
}
