//! Blocks from codes and scales already chosen elsewhere (a lowbit quantized tensor): the
//! lossless direction of export, where no reference quantizer runs; and the inverse
//! (`unpack_*`), which import uses to keep a GGUF's blocks as codes and scales.
//!
//! Each function takes one code per weight, in ggml's convention for the type, and one scale
//! (and minimum) per 32-weight block, and lays them out as `ggml-common.h` does:
//!
//! ```text
//! Q4_0  | d:f16 | qs[16] |          w = (n - 8) * d,  qs[j] = n[j] | n[j+16] << 4
//! Q4_1  | d:f16 | m:f16 | qs[16] |  w = n * d + m,    qs[j] = n[j] | n[j+16] << 4
//! Q8_0  | d:f16 | qs: i8[32] |      w = qs[j] * d
//! ```

use crate::blocks::{BlockQ4_0, BlockQ4_1, BlockQ8_0, QK4_0};
use crate::{GgmlType, GgufError, Result};
use half::f16;

fn check(ty: GgmlType, codes: usize, scales: &[usize]) -> Result<()> {
    if codes % QK4_0 != 0 {
        return Err(GgufError::NotWholeBlocks { ty, n: codes, block_len: QK4_0 });
    }
    for &s in scales {
        if s != codes / QK4_0 {
            return Err(GgufError::Length { op: "repack", unit: "block scales", expected: codes / QK4_0, got: s });
        }
    }
    Ok(())
}

fn nibbles(ty: GgmlType, n: &[u8]) -> Result<[u8; 16]> {
    if let Some(&bad) = n.iter().find(|&&q| q > 15) {
        return Err(GgufError::CodeRange { ty, code: bad.into() });
    }
    Ok(std::array::from_fn(|j| n[j] | (n[j + 16] << 4)))
}

/// Q4_0 bytes from codes `n` in `0..=15` (the weight is `(n - 8) * d`) and one `d` per block.
pub fn pack_q4_0(n: &[u8], d: &[f16]) -> Result<Vec<u8>> {
    check(GgmlType::Q4_0, n.len(), &[d.len()])?;
    let mut out = Vec::with_capacity(d.len() * std::mem::size_of::<BlockQ4_0>());
    for (c, &d) in n.chunks_exact(QK4_0).zip(d) {
        out.extend_from_slice(bytemuck::bytes_of(&BlockQ4_0 { d, qs: nibbles(GgmlType::Q4_0, c)? }));
    }
    Ok(out)
}

/// Q4_1 bytes from codes `n` in `0..=15` (the weight is `n * d + m`) and one `d`, `m` per block.
pub fn pack_q4_1(n: &[u8], d: &[f16], m: &[f16]) -> Result<Vec<u8>> {
    check(GgmlType::Q4_1, n.len(), &[d.len(), m.len()])?;
    let mut out = Vec::with_capacity(d.len() * std::mem::size_of::<BlockQ4_1>());
    for ((c, &d), &m) in n.chunks_exact(QK4_0).zip(d).zip(m) {
        out.extend_from_slice(bytemuck::bytes_of(&BlockQ4_1 { d, m, qs: nibbles(GgmlType::Q4_1, c)? }));
    }
    Ok(out)
}

/// Q8_0 bytes from signed codes `n` (the weight is `n * d`) and one `d` per block.
pub fn pack_q8_0(n: &[i8], d: &[f16]) -> Result<Vec<u8>> {
    check(GgmlType::Q8_0, n.len(), &[d.len()])?;
    let mut out = Vec::with_capacity(d.len() * std::mem::size_of::<BlockQ8_0>());
    for (c, &d) in n.chunks_exact(QK4_0).zip(d) {
        out.extend_from_slice(bytemuck::bytes_of(&BlockQ8_0 { d, qs: std::array::from_fn(|j| c[j]) }));
    }
    Ok(out)
}

/// Reads whole blocks of type `B` (unaligned) from `bytes`.
fn blocks<B: bytemuck::Pod>(ty: GgmlType, bytes: &[u8]) -> Result<impl Iterator<Item = B> + '_> {
    let size = std::mem::size_of::<B>();
    if bytes.len() % size != 0 {
        let expected = bytes.len() / size * size;
        return Err(GgufError::Length { op: ty.name(), unit: "bytes (whole blocks)", expected, got: bytes.len() });
    }
    Ok(bytes.chunks_exact(size).map(bytemuck::pod_read_unaligned::<B>))
}

/// The codes `n` in `0..=15` and one `d` per block of Q4_0 bytes (the inverse of [`pack_q4_0`]).
pub fn unpack_q4_0(bytes: &[u8]) -> Result<(Vec<u8>, Vec<f16>)> {
    let (mut n, mut d) = (Vec::with_capacity(bytes.len() / 18 * QK4_0), Vec::with_capacity(bytes.len() / 18));
    for b in blocks::<BlockQ4_0>(GgmlType::Q4_0, bytes)? {
        n.extend(b.qs.iter().map(|q| q & 15));
        n.extend(b.qs.iter().map(|q| q >> 4));
        d.push(b.d);
    }
    Ok((n, d))
}

/// The codes `n` in `0..=15`, one `d` and one `m` per block of Q4_1 bytes (the inverse of
/// [`pack_q4_1`]).
pub fn unpack_q4_1(bytes: &[u8]) -> Result<(Vec<u8>, Vec<f16>, Vec<f16>)> {
    let nb = bytes.len() / 20;
    let (mut n, mut d, mut m) = (Vec::with_capacity(nb * QK4_0), Vec::with_capacity(nb), Vec::with_capacity(nb));
    for b in blocks::<BlockQ4_1>(GgmlType::Q4_1, bytes)? {
        n.extend(b.qs.iter().map(|q| q & 15));
        n.extend(b.qs.iter().map(|q| q >> 4));
        d.push(b.d);
        m.push(b.m);
    }
    Ok((n, d, m))
}

/// The signed codes and one `d` per block of Q8_0 bytes (the inverse of [`pack_q8_0`]).
pub fn unpack_q8_0(bytes: &[u8]) -> Result<(Vec<i8>, Vec<f16>)> {
    let (mut n, mut d) = (Vec::with_capacity(bytes.len() / 34 * QK4_0), Vec::with_capacity(bytes.len() / 34));
    for b in blocks::<BlockQ8_0>(GgmlType::Q8_0, bytes)? {
        n.extend_from_slice(&b.qs);
        d.push(b.d);
    }
    Ok((n, d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dequantize_to_vec;

    fn codes(n: usize, modulo: u8) -> Vec<u8> {
        (0..n).map(|i| ((i * 7 + 3) % modulo as usize) as u8).collect()
    }

    #[test]
    fn q4_0_values_are_n_minus_8_times_d() {
        let n = codes(64, 16);
        let d = [f16::from_f32(0.125), f16::from_f32(-3.5)];
        let y = dequantize_to_vec(GgmlType::Q4_0, &pack_q4_0(&n, &d).unwrap(), 64).unwrap();
        for (i, (&q, y)) in n.iter().zip(y).enumerate() {
            assert_eq!(y, (q as f32 - 8.0) * d[i / 32].to_f32(), "weight {i}");
        }
    }

    #[test]
    fn q4_1_values_are_n_times_d_plus_m() {
        let n = codes(32, 16);
        let (d, m) = ([f16::from_f32(0.25)], [f16::from_f32(-1.75)]);
        let y = dequantize_to_vec(GgmlType::Q4_1, &pack_q4_1(&n, &d, &m).unwrap(), 32).unwrap();
        for (&q, y) in n.iter().zip(y) {
            assert_eq!(y, q as f32 * 0.25 - 1.75);
        }
    }

    #[test]
    fn q8_0_values_are_n_times_d() {
        let n: Vec<i8> = (0..96).map(|i| (i * 37 % 255) as u8 as i8).collect();
        let d = [f16::from_f32(0.5), f16::from_f32(2.0), f16::from_f32(-1.0)];
        let y = dequantize_to_vec(GgmlType::Q8_0, &pack_q8_0(&n, &d).unwrap(), 96).unwrap();
        for (i, (&q, y)) in n.iter().zip(y).enumerate() {
            assert_eq!(y, q as f32 * d[i / 32].to_f32());
        }
    }

    #[test]
    fn unpack_inverts_pack() {
        let n = codes(96, 16);
        let d: Vec<f16> = [0.125, -3.5, 7.0].map(f16::from_f32).to_vec();
        let m: Vec<f16> = [1.0, -0.5, 0.0].map(f16::from_f32).to_vec();
        assert_eq!(unpack_q4_0(&pack_q4_0(&n, &d).unwrap()).unwrap(), (n.clone(), d.clone()));
        assert_eq!(unpack_q4_1(&pack_q4_1(&n, &d, &m).unwrap()).unwrap(), (n, d.clone(), m));
        let s: Vec<i8> = (0..96).map(|i| (i * 37 % 255) as u8 as i8).collect();
        assert_eq!(unpack_q8_0(&pack_q8_0(&s, &d).unwrap()).unwrap(), (s, d));
        assert!(matches!(unpack_q4_0(&[0; 19]), Err(GgufError::Length { .. })));
    }

    #[test]
    fn refuses_bad_lengths_and_codes() {
        assert!(matches!(pack_q4_0(&[0; 33], &[f16::ONE]), Err(GgufError::NotWholeBlocks { .. })));
        assert!(matches!(pack_q4_0(&[0; 64], &[f16::ONE]), Err(GgufError::Length { .. })));
        assert!(matches!(pack_q4_1(&[0; 32], &[f16::ONE], &[]), Err(GgufError::Length { .. })));
        assert!(matches!(pack_q4_0(&[16; 32], &[f16::ONE]), Err(GgufError::CodeRange { code: 16, .. })));
    }
}
