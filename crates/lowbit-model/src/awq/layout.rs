//! AutoAWQ's GEMM layout (`awq/modules/linear/gemm.py`, `awq/utils/packing_utils.py`), 4 bits
//! only, as pure functions on lowbit's unpacked codes (`[out, in]` row-major). Packed along the
//! **outputs**, eight codes per int32, interleaved:
//!
//! ```text
//! qweight  i32 [in, out/8]   qweight[i, c] = Σ_k q[8c + ORDER[k], i] << 4k     ORDER = [0,2,4,6,1,3,5,7]
//! qzeros   i32 [G, out/8]    qzeros[g, c]  = Σ_k z[8c + ORDER[k], g] << 4k     (zeros unchanged, no -1)
//! scales   f16 [G, out]      (lowbit: [out, G], the transpose)                 G = in / group_size
//! W[n, i] = (q[n, i] - z[n, i / gs]) * s[n, i / gs]
//! ```
//!
//! Readers undo the interleave with `REVERSE = [0,4,1,5,2,6,3,7]`: nibble `REVERSE[j]` of a word
//! holds column `8c + j`.

/// The order in which a word's nibbles take the eight output columns it packs.
pub(crate) const ORDER: [usize; 8] = [0, 2, 4, 6, 1, 3, 5, 7];

/// Packs row-major 4-bit values whose rows are a multiple of 8 long (`[rows, cols]` ->
/// `[rows, cols / 8]` words) with the AWQ interleave.
pub(crate) fn pack(v: &[u8]) -> Vec<i32> {
    v.chunks_exact(8)
        .map(|c| ORDER.iter().enumerate().fold(0u32, |acc, (k, &j)| acc | u32::from(c[j] & 15) << (4 * k)) as i32)
        .collect()
}

/// Unpacks `[rows, cols / 8]` words into the row-major `[rows, cols]` values.
pub(crate) fn unpack(words: &[i32]) -> Vec<u8> {
    let mut v = vec![0u8; words.len() * 8];
    for (c, &w) in words.iter().enumerate() {
        for (k, &j) in ORDER.iter().enumerate() {
            v[8 * c + j] = ((w as u32 >> (4 * k)) & 15) as u8;
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn interleave_matches_autoawq() {
        // Columns 0..8 holding 0..8: nibble k holds column ORDER[k], so the word reads
        // (from the low nibble) 0,2,4,6,1,3,5,7 -> 0x75316420.
        let v: Vec<u8> = (0..8).collect();
        assert_eq!(pack(&v), vec![0x7531_6420]);
        // AutoAWQ's reader: shift out nibble k, then index with REVERSE = [0,4,1,5,2,6,3,7].
        let w = 0x7531_6420u32;
        let nibbles: Vec<u8> = (0..8).map(|k| ((w >> (4 * k)) & 15) as u8).collect();
        let reverse = [0usize, 4, 1, 5, 2, 6, 3, 7];
        assert_eq!(reverse.iter().map(|&r| nibbles[r]).collect::<Vec<_>>(), v);
    }

    proptest! {
        #[test]
        fn round_trips(rows in 1usize..5, cols_8 in 1usize..5, seed: u64) {
            let mut s = seed;
            let v: Vec<u8> = (0..rows * cols_8 * 8)
                .map(|_| { s = s.wrapping_mul(6364136223846793005).wrapping_add(1); (s >> 60) as u8 })
                .collect();
            let w = pack(&v);
            prop_assert_eq!(w.len(), rows * cols_8);
            prop_assert_eq!(unpack(&w), v);
        }
    }
}
