//! Bit packing of codes: one little-endian bitstream in row-major order (see `docs/format.md`).

use crate::{Bits, CoreError, Result};

/// Bytes needed for `n` codes of `bits` bits: `ceil(n * bits / 8)`.
pub const fn packed_len(n: usize, bits: Bits) -> usize {
    (n * bits.get() as usize).div_ceil(8)
}

/// Packs `codes` (each `< 2^bits`) into a new buffer.
pub fn pack(codes: &[u8], bits: Bits) -> Result<Vec<u8>> {
    if let Some(i) = codes.iter().position(|&c| c > bits.maxq()) {
        return Err(CoreError::shape(
            "pack",
            format!("codes < {}", 1u32 << bits.get()),
            format!("{} at {i}", codes[i]),
        ));
    }
    let mut out = vec![0u8; packed_len(codes.len(), bits)];
    pack_into(codes, bits, &mut out);
    Ok(out)
}

/// Packs `codes` into `out` starting at bit 0 of `out`, which must hold `packed_len` bytes.
/// Codes must already be in range; bits above the last code are left as they are.
pub fn pack_into(codes: &[u8], bits: Bits, out: &mut [u8]) {
    match bits {
        Bits::B8 => out[..codes.len()].copy_from_slice(codes),
        Bits::B4 => {
            let pairs = codes.chunks_exact(2);
            if let [last] = pairs.remainder() {
                out[codes.len() / 2] = *last;
            }
            for (o, pair) in out.iter_mut().zip(pairs) {
                *o = pair[0] | (pair[1] << 4);
            }
        }
        Bits::B2 => {
            for (o, quad) in out.iter_mut().zip(codes.chunks(4)) {
                *o = quad.iter().enumerate().fold(0u8, |acc, (t, &c)| acc | (c << (2 * t)));
            }
        }
        Bits::B3 => {
            for (o, oct) in out.chunks_mut(3).zip(codes.chunks(8)) {
                let word = oct.iter().enumerate().fold(0u32, |acc, (t, &c)| acc | (u32::from(c) << (3 * t)));
                let bytes = word.to_le_bytes();
                o.copy_from_slice(&bytes[..o.len()]);
            }
        }
    }
}

/// Unpacks `n` codes from `packed`.
pub fn unpack(packed: &[u8], bits: Bits, n: usize) -> Result<Vec<u8>> {
    let need = packed_len(n, bits);
    if packed.len() != need {
        return Err(CoreError::shape(
            "unpack",
            format!("{need} bytes for {n} codes of {} bits", bits.get()),
            packed.len(),
        ));
    }
    let mut out = vec![0u8; n];
    unpack_into(packed, bits, &mut out);
    Ok(out)
}

/// Unpacks `out.len()` codes starting at bit 0 of `packed`.
pub fn unpack_into(packed: &[u8], bits: Bits, out: &mut [u8]) {
    match bits {
        Bits::B8 => out.copy_from_slice(&packed[..out.len()]),
        Bits::B4 => {
            let n = out.len();
            let mut pairs = out.chunks_exact_mut(2);
            for (pair, &b) in (&mut pairs).zip(packed) {
                pair[0] = b & 0xF;
                pair[1] = b >> 4;
            }
            if let [last] = pairs.into_remainder() {
                *last = packed[n / 2] & 0xF;
            }
        }
        Bits::B2 => {
            for (quad, &b) in out.chunks_mut(4).zip(packed) {
                for (t, c) in quad.iter_mut().enumerate() {
                    *c = (b >> (2 * t)) & 3;
                }
            }
        }
        Bits::B3 => {
            for (oct, src) in out.chunks_mut(8).zip(packed.chunks(3)) {
                let mut bytes = [0u8; 4];
                bytes[..src.len()].copy_from_slice(src);
                let word = u32::from_le_bytes(bytes);
                for (t, c) in oct.iter_mut().enumerate() {
                    *c = ((word >> (3 * t)) & 7) as u8;
                }
            }
        }
    }
}

/// The code at flat index `i` (the definition every kernel must agree with).
pub fn code_at(packed: &[u8], bits: Bits, i: usize) -> u8 {
    let b = bits.get() as usize;
    let bit = i * b;
    let (byte, shift) = (bit / 8, bit % 8);
    let lo = u16::from(packed[byte]);
    let hi = packed.get(byte + 1).map_or(0, |&x| u16::from(x));
    (((lo | (hi << 8)) >> shift) as u8) & bits.maxq()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn any_bits() -> impl Strategy<Value = Bits> {
        prop_oneof![Just(Bits::B2), Just(Bits::B3), Just(Bits::B4), Just(Bits::B8)]
    }

    proptest! {
        #[test]
        fn pack_unpack_round_trip(bits in any_bits(), raw in proptest::collection::vec(any::<u8>(), 0..300)) {
            let codes: Vec<u8> = raw.iter().map(|c| c & bits.maxq()).collect();
            let packed = pack(&codes, bits).unwrap();
            prop_assert_eq!(packed.len(), (codes.len() * bits.get() as usize).div_ceil(8));
            prop_assert_eq!(unpack(&packed, bits, codes.len()).unwrap(), codes.clone());
            for (i, &c) in codes.iter().enumerate() {
                prop_assert_eq!(code_at(&packed, bits, i), c);
            }
            // unpack then pack is the identity on buffers whose padding bits are zero
            prop_assert_eq!(pack(&unpack(&packed, bits, codes.len()).unwrap(), bits).unwrap(), packed);
        }
    }

    #[test]
    fn three_bit_layout_matches_spec() {
        let codes = [1u8, 2, 3, 4, 5, 6, 7, 0];
        let p = pack(&codes, Bits::B3).unwrap();
        let c = codes;
        assert_eq!(p[0], c[0] | c[1] << 3 | (c[2] & 3) << 6);
        assert_eq!(p[1], c[2] >> 2 | c[3] << 1 | c[4] << 4 | (c[5] & 1) << 7);
        assert_eq!(p[2], c[5] >> 1 | c[6] << 2 | c[7] << 5);
    }

    #[test]
    fn rejects_out_of_range_codes_and_bad_lengths() {
        assert!(pack(&[16], Bits::B4).is_err());
        assert!(unpack(&[0, 0], Bits::B4, 5).is_err());
    }
}
