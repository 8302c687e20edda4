//! The HF GPTQ tensor layout (AutoGPTQ `qlinear_cuda.py` `pack`, GPTQModel alike), as pure
//! functions on lowbit's unpacked codes. `b` is 2, 4 or 8 bits, `p = 32 / b` codes per word, LSB
//! first; lowbit's codes are `[out, in]` row-major, GPTQ's are `[in, out]`:
//!
//! ```text
//! qweight  i32 [in/p, out]   qweight[r, n] = Σ_k q[n, r·p + k] << (b·k)    packed along inputs
//! qzeros   i32 [G, out/p]    qzeros[g, c]  = Σ_k z'[g, c·p + k] << (b·k)   packed along outputs
//! scales   f16 [G, out]      (lowbit: [out, G], the transpose)
//! g_idx    i32 [in]          group of each input channel, i / group_size for lowbit
//! ```
//!
//! The stored zero `z'` is `z - 1` in v1 (`checkpoint_format: "gptq"`) and `z` in `gptq_v2`.

use lowbit_core::Bits;

/// Codes per 32-bit word.
pub(crate) fn per_word(bits: Bits) -> usize {
    32 / bits.get() as usize
}

/// Packs lowbit's `[out, inn]` codes into GPTQ's `qweight` `[inn / p, out]` (`inn % p == 0`).
pub(crate) fn pack_qweight(codes: &[u8], out: usize, inn: usize, bits: Bits) -> Vec<i32> {
    let (p, b) = (per_word(bits), bits.get());
    let mut w = vec![0u32; inn / p * out];
    for n in 0..out {
        let row = &codes[n * inn..(n + 1) * inn];
        for (r, chunk) in row.chunks_exact(p).enumerate() {
            w[r * out + n] = chunk.iter().enumerate().fold(0u32, |acc, (k, &q)| acc | u32::from(q) << (b * k as u32));
        }
    }
    w.into_iter().map(|x| x as i32).collect()
}

/// Unpacks `qweight` `[inn / p, out]` into lowbit's `[out, inn]` codes.
pub(crate) fn unpack_qweight(words: &[i32], out: usize, inn: usize, bits: Bits) -> Vec<u8> {
    let (p, b, mask) = (per_word(bits), bits.get(), u32::from(bits.maxq()));
    let mut codes = vec![0u8; out * inn];
    for (r, row) in words.chunks_exact(out).enumerate() {
        for (n, &word) in row.iter().enumerate() {
            for k in 0..p {
                codes[n * inn + r * p + k] = ((word as u32 >> (b * k as u32)) & mask) as u8;
            }
        }
    }
    codes
}

/// Packs stored zeros `[groups, out]` into `qzeros` `[groups, out / p]` (`out % p == 0`).
/// Rows never share a word since `out % p == 0`.
pub(crate) fn pack_qzeros(zeros: &[u8], bits: Bits) -> Vec<i32> {
    let (p, b) = (per_word(bits), bits.get());
    zeros
        .chunks_exact(p)
        .map(|c| c.iter().enumerate().fold(0u32, |acc, (k, &z)| acc | u32::from(z) << (b * k as u32)) as i32)
        .collect()
}

/// Unpacks `qzeros` `[groups, out / p]` into stored zeros `[groups, out]`.
pub(crate) fn unpack_qzeros(words: &[i32], bits: Bits) -> Vec<u8> {
    let (p, b, mask) = (per_word(bits), bits.get(), u32::from(bits.maxq()));
    words.iter().flat_map(|&w| (0..p).map(move |k| ((w as u32 >> (b * k as u32)) & mask) as u8)).collect()
}

pub(crate) use crate::hf_quant::transpose;

/// `W[n, i] = scales[g_idx[i], n] * (q[n, i] - z[g_idx[i], n])` in f32, as lowbit dequantizes
/// (`(q - z) * s`): `codes` `[out, inn]`, `zeros` (true zero points) and `scales` `[groups, out]`.
pub(crate) fn dequantize(codes: &[u8], zeros: &[u8], scales: &[f32], g_idx: &[usize], out: usize) -> Vec<f32> {
    let inn = g_idx.len();
    let mut w = vec![0f32; out * inn];
    for n in 0..out {
        for (i, &g) in g_idx.iter().enumerate() {
            let (z, s) = (zeros[g * out + n], scales[g * out + n]);
            w[n * inn + i] = (f32::from(codes[n * inn + i]) - f32::from(z)) * s;
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bits_of(i: u8) -> Bits {
        [Bits::B2, Bits::B4, Bits::B8][usize::from(i % 3)]
    }

    #[test]
    fn four_bit_words_match_the_formula() {
        // q[n=0, i=0..8] = 1..=8 -> qweight[0, 0] = 0x87654321.
        let codes: Vec<u8> = (1..=8).collect();
        assert_eq!(pack_qweight(&codes, 1, 8, Bits::B4), vec![0x8765_4321u32 as i32]);
        // Symmetric v1 zeros (z - 1 = 7) are the 0x77777777 words readers look for.
        assert_eq!(pack_qzeros(&[7; 8], Bits::B4), vec![0x7777_7777]);
        assert_eq!(pack_qzeros(&[0x80; 4], Bits::B8), vec![0x8080_8080u32 as i32]);
    }

    #[test]
    fn qweight_is_packed_along_inputs() {
        // Two outputs, eight inputs: output n's codes land in column n.
        let codes: Vec<u8> = (0..16).map(|i| (i % 16) as u8).collect();
        let w = pack_qweight(&codes, 2, 8, Bits::B4);
        assert_eq!(w, vec![0x7654_3210, 0xfedc_ba98u32 as i32]);
    }

    proptest! {
        #[test]
        fn round_trips(b in 0u8..3, out_p in 1usize..5, in_p in 1usize..5, groups in 1usize..4, seed in any::<u64>()) {
            let bits = bits_of(b);
            let p = per_word(bits);
            let (out, inn) = (out_p * p, in_p * p);
            let mut s = seed;
            let mut next = || { s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); ((s >> 33) as u8) & bits.maxq() };
            let codes: Vec<u8> = (0..out * inn).map(|_| next()).collect();
            let w = pack_qweight(&codes, out, inn, bits);
            prop_assert_eq!(w.len(), inn / p * out);
            prop_assert_eq!(&unpack_qweight(&w, out, inn, bits), &codes);
            let zeros: Vec<u8> = (0..groups * out).map(|_| next()).collect();
            let qz = pack_qzeros(&zeros, bits);
            prop_assert_eq!(qz.len(), groups * out / p);
            prop_assert_eq!(&unpack_qzeros(&qz, bits), &zeros);
            let t = transpose(&codes, out, inn);
            prop_assert_eq!(transpose(&t, inn, out), codes);
        }
    }
}
