//! compressed-tensors' `pack-quantized` layout (`compressors/quantized_compressors/pack_quantized.py`
//! `pack_to_int32` / `unpack_from_int32`, `quantization/lifecycle/initialize.py`), as pure
//! functions on lowbit's unpacked codes (`[out, in]` row-major), for b = 2, 4, 8: `p = 32 / b` codes
//! per int32, LSB first, rows zero-padded to whole words (compressed-tensors 0.20 packs any width
//! as a dense bit stream, the same words for these three; 3 bits differ between versions):
//!
//! ```text
//! weight_packed      i32 [out, ceil(in/p)]   word c of row n = Σ_k (q[n, c·p+k] + 2^(b-1)) << (b·k)
//! weight_scale       f16 [out, G]            the model dtype; lowbit's order (GPTQ's transpose)
//! weight_zero_point  i32 [ceil(out/p), G]    asymmetric only: zp + 2^(b-1), packed along dim 0
//! weight_shape       i64 [2]                 [out, in]
//! W[n, i] = (q[n, i] - zp[n, g]) * s[n, g]   g = i / group_size; q, zp signed in [-2^(b-1), 2^(b-1))
//! ```
//!
//! The offset makes the stored values lowbit's unsigned codes and zero points unchanged:
//! `q = u - 2^(b-1)`, `zp = z - 2^(b-1)`, so `q + 2^(b-1) = u`; a symmetric model (`z = 2^(b-1)`,
//! `zp = 0`) writes no zero point.

use lowbit_core::Bits;

/// Codes per int32 word.
pub(crate) fn per_word(bits: Bits) -> usize {
    32 / bits.get() as usize
}

/// Packs each of the `rows` rows of `cols` unsigned values into `ceil(cols / p)` words.
pub(crate) fn pack_rows(v: &[u8], cols: usize, bits: Bits) -> Vec<i32> {
    let (p, b) = (per_word(bits), bits.get());
    v.chunks_exact(cols.max(1))
        .flat_map(|row| {
            row.chunks(p).map(move |c| {
                c.iter().enumerate().fold(0u32, |acc, (k, &q)| acc | u32::from(q) << (b * k as u32)) as i32
            })
        })
        .collect()
}

/// Unpacks rows of `ceil(cols / p)` words into rows of `cols` values (the padding dropped).
pub(crate) fn unpack_rows(words: &[i32], cols: usize, bits: Bits) -> Vec<u8> {
    let (p, b, mask) = (per_word(bits), bits.get(), u32::from(bits.maxq()));
    let wpr = cols.div_ceil(p);
    let mut v = Vec::with_capacity(words.len() / wpr.max(1) * cols);
    for row in words.chunks_exact(wpr.max(1)) {
        v.extend((0..cols).map(|j| ((row[j / p] as u32 >> (b * (j % p) as u32)) & mask) as u8));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn words_match_pack_to_int32() {
        // Signed 4-bit codes -8..=7 in one row: offset to 0..=15, LSB first.
        let u: Vec<u8> = (0..8).collect();
        assert_eq!(pack_rows(&u, 8, Bits::B4), vec![0x7654_3210]);
        // A 2-bit row of 20 values: sixteen per word, the second word zero-padded.
        let u = vec![3u8; 20];
        assert_eq!(pack_rows(&u, 20, Bits::B2), vec![-1, 0xff]);
    }

    proptest! {
        #[test]
        fn round_trips(b in 0usize..3, rows in 1usize..5, cols in 1usize..40, seed: u64) {
            let bits = [Bits::B2, Bits::B4, Bits::B8][b];
            let mut s = seed;
            let v: Vec<u8> = (0..rows * cols)
                .map(|_| { s = s.wrapping_mul(6364136223846793005).wrapping_add(1); (s >> 56) as u8 & bits.maxq() })
                .collect();
            let w = pack_rows(&v, cols, bits);
            prop_assert_eq!(w.len(), rows * cols.div_ceil(per_word(bits)));
            prop_assert_eq!(unpack_rows(&w, cols, bits), v);
        }
    }
}
