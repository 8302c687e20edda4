//! AVX2 + FMA + F16C kernels (8 f32 lanes, 16 registers).
//!
//! Integer codes: 8 code bytes are widened to 8 u32 lanes (`vpmovzxbd`); lane `j` shifted right
//! by `bits * t` and masked gives element `c * j + t` (the interleaved order of [`crate::isa`]).
//! The zero point is subtracted as an integer, the difference converted to f32, multiplied by x and
//! summed; the group's scale multiplies the sum once. NF4/FP4 codes index a 16-entry table held in
//! two registers (`vpermps` on the low 3 bits, a blend on bit 3). 3-bit codes: 24 bytes hold 8
//! lanes of 8 codes; a dword permute and variable shifts put each lane's 24 bits in place and an
//! 8-entry `(i - zero) * scale` table decodes them (this part serves the AVX-512 level too).

use crate::isa::{CbBlock, IntBlock, Isa};
use half::{bf16, f16};
use std::arch::x86_64::*;

/// The AVX2 level; a value exists only on CPUs that run it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2(());

impl Avx2 {
    /// The level, if this CPU supports it.
    pub(crate) fn new() -> Option<Self> {
        (is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c"))
            .then_some(Avx2(()))
    }
}

/// Lanes per vector.
const L: usize = 8;

#[inline(always)]
fn hsum(v: __m256) -> f32 {
    // SAFETY: only called from functions compiled with AVX2 enabled (inlined into them).
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }
}

#[inline(always)]
unsafe fn load_f32(p: *const f32) -> __m256 {
    // SAFETY: the caller guarantees 8 readable f32 at `p`.
    unsafe { _mm256_loadu_ps(p) }
}
#[inline(always)]
unsafe fn load_f16(p: *const f16) -> __m256 {
    // SAFETY: the caller guarantees 8 readable f16 at `p`.
    unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
}
#[inline(always)]
unsafe fn load_bf16(p: *const bf16) -> __m256 {
    // SAFETY: the caller guarantees 8 readable bf16 at `p`; bf16 is the top half of an f32.
    unsafe { _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast())))) }
}

macro_rules! dense_kernels {
    ($gemv:ident, $dot1:ident, $t:ty, $load:ident, $conv:expr) => {
        /// `out[r] = x · w[r]` for dense rows, four rows per pass sharing the x loads.
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $gemv(x: &[f32], w: &[$t], out: &mut [f32]) {
            let cols = x.len();
            assert!(w.len() >= out.len() * cols);
            let xp = x.as_ptr();
            let full = cols / L * L;
            let mut r = 0;
            while r + 4 <= out.len() {
                let mut acc = [_mm256_setzero_ps(); 4];
                // SAFETY: rows r..r+4 lie in `w` (asserted); vector loads stop at `full`.
                unsafe {
                    let wp = w.as_ptr().add(r * cols);
                    let mut k = 0;
                    while k < full {
                        let xv = _mm256_loadu_ps(xp.add(k));
                        for (j, a) in acc.iter_mut().enumerate() {
                            *a = _mm256_fmadd_ps(xv, $load(wp.add(j * cols + k)), *a);
                        }
                        k += L;
                    }
                }
                for (j, a) in acc.iter().enumerate() {
                    let row = &w[(r + j) * cols..(r + j + 1) * cols];
                    let tail: f32 = x[full..].iter().zip(&row[full..]).map(|(a, &b)| a * $conv(b)).sum();
                    out[r + j] = hsum(*a) + tail;
                }
                r += 4;
            }
            while r < out.len() {
                // SAFETY: row r lies in `w`.
                out[r] = unsafe { $dot1(x, &w[r * cols..(r + 1) * cols]) };
                r += 1;
            }
        }

        /// `x · w` for one dense row.
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn $dot1(x: &[f32], w: &[$t]) -> f32 {
            let n = x.len().min(w.len());
            let (xp, wp) = (x.as_ptr(), w.as_ptr());
            let mut acc = [_mm256_setzero_ps(); 4];
            let mut k = 0;
            // SAFETY: every vector load reads elements below `n`.
            unsafe {
                while k + 4 * L <= n {
                    for (u, a) in acc.iter_mut().enumerate() {
                        let o = k + u * L;
                        *a = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(o)), $load(wp.add(o)), *a);
                    }
                    k += 4 * L;
                }
                while k + L <= n {
                    acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(k)), $load(wp.add(k)), acc[0]);
                    k += L;
                }
            }
            let tail: f32 = x[k..n].iter().zip(&w[k..n]).map(|(a, &b)| a * $conv(b)).sum();
            hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]))) + tail
        }
    };
}

dense_kernels!(gemv_f32, dot_f32, f32, load_f32, |v: f32| v);
dense_kernels!(gemv_f16, dot_f16, f16, load_f16, f16::to_f32);
dense_kernels!(gemv_bf16, dot_bf16, bf16, load_bf16, bf16::to_f32);

/// The micro-kernel: `MR` rows of x times a 16-wide transposed panel, `2 * MR` accumulators.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_m<const MR: usize>(
    x: &[f32],
    xs: usize,
    p: &[f32],
    kc: usize,
    out: &mut [f32],
    os: usize,
    nr: usize,
    accumulate: bool,
) {
    assert!(MR >= 1 && nr <= 2 * L);
    assert!(x.len() >= (MR - 1) * xs + kc && p.len() >= kc * 2 * L && out.len() >= (MR - 1) * os + nr);
    let (xp, pp) = (x.as_ptr(), p.as_ptr());
    let mut c = [[_mm256_setzero_ps(); 2]; MR];
    // SAFETY: k < kc, so panel row k (16 f32) and x[i*xs + k] for i < MR are in bounds (asserted).
    unsafe {
        for k in 0..kc {
            let b0 = _mm256_loadu_ps(pp.add(k * 2 * L));
            let b1 = _mm256_loadu_ps(pp.add(k * 2 * L + L));
            for (i, ci) in c.iter_mut().enumerate() {
                let a = _mm256_set1_ps(*xp.add(i * xs + k));
                ci[0] = _mm256_fmadd_ps(a, b0, ci[0]);
                ci[1] = _mm256_fmadd_ps(a, b1, ci[1]);
            }
        }
    }
    let mut tmp = [0f32; 2 * L];
    for (i, ci) in c.iter().enumerate() {
        // SAFETY: tmp holds 16 f32.
        unsafe {
            _mm256_storeu_ps(tmp.as_mut_ptr(), ci[0]);
            _mm256_storeu_ps(tmp.as_mut_ptr().add(L), ci[1]);
        }
        let o = &mut out[i * os..i * os + nr];
        if accumulate {
            o.iter_mut().zip(&tmp).for_each(|(o, t)| *o += t);
        } else {
            o.copy_from_slice(&tmp[..nr]);
        }
    }
}

/// Widens 8 code bytes at `p` to 8 u32 lanes.
#[inline(always)]
unsafe fn widen8(p: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 8 readable bytes at `p`.
    unsafe { _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.cast())) }
}

/// `out[r] = x · row r` for 2-, 4- and 8-bit codes, R rows per pass.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemv_int_rows<const BITS: i32, const R: usize>(b: &IntBlock, x: &[f32], r0: usize, out: &mut [f32]) {
    let per_byte = (8 / BITS) as usize;
    let chunk = L * per_byte;
    let gpr = b.cols.div_ceil(b.group);
    assert!(x.len() >= b.cols && b.codes.len() >= (r0 + R) * b.row_bytes && b.scales.len() >= (r0 + R) * gpr);
    assert!(b.group.is_multiple_of(chunk) && b.cols.is_multiple_of(chunk) && out.len() >= r0 + R);
    let mask = _mm256_set1_epi32((1 << BITS) - 1);
    let xp = x.as_ptr();
    let mut tot = [_mm256_setzero_ps(); R];
    for gi in 0..gpr {
        let mut acc = [_mm256_setzero_ps(); R];
        let mut z = [_mm256_setzero_si256(); R];
        for (r, z) in z.iter_mut().enumerate() {
            *z = _mm256_set1_epi32(i32::from(b.zeros.get((r0 + r) * gpr + gi)));
        }
        let mut k = gi * b.group;
        let end = (k + b.group).min(b.cols);
        while k < end {
            // SAFETY: k + chunk <= cols: x and 8 code bytes per row at byte k / per_byte are in
            // bounds (asserted).
            unsafe {
                let mut v = [_mm256_setzero_si256(); R];
                for (r, v) in v.iter_mut().enumerate() {
                    *v = widen8(b.codes.as_ptr().add((r0 + r) * b.row_bytes + k / per_byte));
                }
                for t in 0..per_byte {
                    let xv = _mm256_loadu_ps(xp.add(k + t * L));
                    for r in 0..R {
                        let q = if BITS == 8 { v[r] } else { _mm256_and_si256(v[r], mask) };
                        let wv = _mm256_cvtepi32_ps(_mm256_sub_epi32(q, z[r]));
                        acc[r] = _mm256_fmadd_ps(wv, xv, acc[r]);
                        if BITS < 8 {
                            v[r] = _mm256_srli_epi32::<BITS>(v[r]);
                        }
                    }
                }
            }
            k += chunk;
        }
        for r in 0..R {
            tot[r] = _mm256_fmadd_ps(acc[r], _mm256_set1_ps(b.scales[(r0 + r) * gpr + gi]), tot[r]);
        }
    }
    for (r, t) in tot.iter().enumerate() {
        out[r0 + r] = hsum(*t);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemv_int(b: &IntBlock, x: &[f32], out: &mut [f32]) {
    let rows = out.len();
    let mut r = 0;
    // SAFETY: each call covers rows r..r+R < rows of the block, which the kernels assert.
    unsafe {
        macro_rules! run {
            ($bits:literal) => {{
                while r + 2 <= rows {
                    gemv_int_rows::<$bits, 2>(b, x, r, out);
                    r += 2;
                }
                while r < rows {
                    gemv_int_rows::<$bits, 1>(b, x, r, out);
                    r += 1;
                }
            }};
        }
        match b.bits {
            4 => run!(4),
            2 => run!(2),
            8 => run!(8),
            3 => gemv_q3(b, x, out),
            _ => unreachable!("codes are 2, 3, 4 or 8 bits"),
        }
    }
}

/// Row `r`, elements `k0..k0 + dst.len()` (chunk aligned) of an integer block, interleaved.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dequant_int(b: &IntBlock, r: usize, k0: usize, dst: &mut [f32]) {
    if b.bits == 3 {
        // SAFETY: same contract.
        return unsafe { dequant_q3(b, r, k0, dst) };
    }
    let bits = b.bits as usize;
    let per_byte = 8 / bits;
    let chunk = L * per_byte;
    let gpr = b.cols.div_ceil(b.group);
    assert!(k0.is_multiple_of(chunk) && dst.len().is_multiple_of(chunk) && k0 + dst.len() <= b.cols);
    assert!(b.codes.len() >= (r + 1) * b.row_bytes && b.scales.len() >= (r + 1) * gpr);
    let mask = _mm256_set1_epi32(((1u32 << bits) - 1) as i32);
    let shift = _mm_cvtsi32_si128(bits as i32);
    let dp = dst.as_mut_ptr();
    for c in (0..dst.len()).step_by(chunk) {
        let k = k0 + c;
        let p = r * gpr + k / b.group;
        let z = _mm256_set1_epi32(i32::from(b.zeros.get(p)));
        let s = _mm256_set1_ps(b.scales[p]);
        // SAFETY: 8 code bytes of row r at k / per_byte and `chunk` f32 at dst[c..] are in bounds.
        unsafe {
            let mut v = widen8(b.codes.as_ptr().add(r * b.row_bytes + k / per_byte));
            for t in 0..per_byte {
                let q = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_and_si256(v, mask), z));
                _mm256_storeu_ps(dp.add(c + t * L), _mm256_mul_ps(q, s));
                v = _mm256_srl_epi32(v, shift);
            }
        }
    }
}

/// Gathers 8 triples of 3-bit codes (24 bytes at `p`) into 8 u32 lanes: lane `j` holds bits
/// `24j..24j + 24` of the chunk, i.e. codes `8j..8j + 8` (higher bits of a lane are garbage, and
/// the 8-entry table lookup reads only the low 3 bits).
#[inline(always)]
pub(super) unsafe fn gather3(p: *const u8, end: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 24 readable bytes at `p` and that `end` is the end of the
    // buffer: a full 32-byte load is used only when it stays inside, else a 24-byte copy.
    unsafe {
        let d = if end.offset_from(p) >= 32 {
            _mm256_loadu_si256(p.cast())
        } else {
            let mut tail = [0u8; 32];
            std::ptr::copy_nonoverlapping(p, tail.as_mut_ptr(), 24);
            _mm256_loadu_si256(tail.as_ptr().cast())
        };
        let idx = _mm256_setr_epi32(0, 0, 1, 2, 3, 3, 4, 5);
        let off = _mm256_setr_epi32(0, 24, 16, 8, 0, 24, 16, 8);
        let lo = _mm256_permutevar8x32_epi32(d, idx);
        let hi = _mm256_permutevar8x32_epi32(d, _mm256_add_epi32(idx, _mm256_set1_epi32(1)));
        // A variable shift by 32 gives 0, so lanes that start on a dword boundary take no high part.
        _mm256_or_si256(_mm256_srlv_epi32(lo, off), _mm256_sllv_epi32(hi, _mm256_sub_epi32(_mm256_set1_epi32(32), off)))
    }
}

/// 8-entry table `(i - zero) * scale` for 3-bit codes.
#[inline(always)]
fn q3_lut(zero: u8, scale: f32) -> __m256 {
    // SAFETY: only called from functions compiled with AVX2 enabled (inlined into them).
    unsafe {
        let q = _mm256_sub_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(i32::from(zero)));
        _mm256_mul_ps(_mm256_cvtepi32_ps(q), _mm256_set1_ps(scale))
    }
}

/// `out[r] = x · row r` for 3-bit codes in chunks of 64 (24 bytes): gather, then 8 table lookups
/// (`vpermps` on the low 3 bits) per lane. Used by the AVX2 and AVX-512 levels alike.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemv_q3_rows<const R: usize>(b: &IntBlock, x: &[f32], r0: usize, out: &mut [f32]) {
    const CHUNK: usize = 64;
    let gpr = b.cols.div_ceil(b.group);
    assert!(x.len() >= b.cols && b.codes.len() >= (r0 + R) * b.row_bytes && b.scales.len() >= (r0 + R) * gpr);
    assert!(b.group.is_multiple_of(CHUNK) && b.cols.is_multiple_of(CHUNK) && out.len() >= r0 + R);
    let xp = x.as_ptr();
    let end_ptr = b.codes.as_ptr_range().end;
    let mut tot = [_mm256_setzero_ps(); R];
    for gi in 0..gpr {
        let mut lut = [_mm256_setzero_ps(); R];
        for (r, l) in lut.iter_mut().enumerate() {
            let p = (r0 + r) * gpr + gi;
            *l = q3_lut(b.zeros.get(p), b.scales[p]);
        }
        let mut k = gi * b.group;
        let end = (k + b.group).min(b.cols);
        while k < end {
            // SAFETY: k + 64 <= cols: x[k..k + 64] and the 24 code bytes at k * 3 / 8 of each row
            // are in bounds (asserted).
            unsafe {
                let mut v = [_mm256_setzero_si256(); R];
                for (r, v) in v.iter_mut().enumerate() {
                    *v = gather3(b.codes.as_ptr().add((r0 + r) * b.row_bytes + k * 3 / 8), end_ptr);
                }
                for t in 0..8 {
                    let xv = _mm256_loadu_ps(xp.add(k + t * L));
                    for r in 0..R {
                        tot[r] = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(lut[r], v[r]), xv, tot[r]);
                        v[r] = _mm256_srli_epi32::<3>(v[r]);
                    }
                }
            }
            k += CHUNK;
        }
    }
    for (r, t) in tot.iter().enumerate() {
        out[r0 + r] = hsum(*t);
    }
}

/// 3-bit matrix-vector product over all rows of the block (see [`gemv_q3_rows`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn gemv_q3(b: &IntBlock, x: &[f32], out: &mut [f32]) {
    let rows = out.len();
    let mut r = 0;
    // SAFETY: each call covers rows r..r+R < rows of the block, which the kernel asserts.
    unsafe {
        while r + 2 <= rows {
            gemv_q3_rows::<2>(b, x, r, out);
            r += 2;
        }
        while r < rows {
            gemv_q3_rows::<1>(b, x, r, out);
            r += 1;
        }
    }
}

/// Row `r`, elements `k0..k0 + dst.len()` (64-aligned) of a 3-bit block, interleaved.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dequant_q3(b: &IntBlock, r: usize, k0: usize, dst: &mut [f32]) {
    const CHUNK: usize = 64;
    let gpr = b.cols.div_ceil(b.group);
    assert!(k0.is_multiple_of(CHUNK) && dst.len().is_multiple_of(CHUNK) && k0 + dst.len() <= b.cols);
    assert!(b.codes.len() >= (r + 1) * b.row_bytes && b.scales.len() >= (r + 1) * gpr);
    let dp = dst.as_mut_ptr();
    let end_ptr = b.codes.as_ptr_range().end;
    for c in (0..dst.len()).step_by(CHUNK) {
        let k = k0 + c;
        let p = r * gpr + k / b.group;
        let lut = q3_lut(b.zeros.get(p), b.scales[p]);
        // SAFETY: 24 code bytes of row r at k * 3 / 8 and 64 f32 at dst[c..] are in bounds.
        unsafe {
            let mut v = gather3(b.codes.as_ptr().add(r * b.row_bytes + k * 3 / 8), end_ptr);
            for t in 0..8 {
                _mm256_storeu_ps(dp.add(c + t * L), _mm256_permutevar8x32_ps(lut, v));
                v = _mm256_srli_epi32::<3>(v);
            }
        }
    }
}

/// Looks up 8 4-bit codes (low 4 bits of each lane) in the table `(lo, hi)`.
#[inline(always)]
fn lookup16(v: __m256i, lo: __m256, hi: __m256) -> __m256 {
    // SAFETY: only called from functions compiled with AVX2 enabled (inlined into them).
    unsafe {
        let a = _mm256_permutevar8x32_ps(lo, v);
        let b = _mm256_permutevar8x32_ps(hi, v);
        _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32::<28>(v)))
    }
}

/// `out[r] = x · row r` for NF4/FP4 codes: one table per absmax block.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemv_cb(b: &CbBlock, x: &[f32], out: &mut [f32]) {
    let chunk = 2 * L;
    assert!(x.len() >= b.cols && b.codes.len() >= out.len() * b.cols / 2 && b.cols.is_multiple_of(chunk));
    assert!(b.block.is_multiple_of(chunk) && b.absmax.len() >= (b.first + out.len() * b.cols).div_ceil(b.block));
    // SAFETY: the table holds 16 f32.
    let (tlo, thi) = unsafe { (_mm256_loadu_ps(b.table.as_ptr()), _mm256_loadu_ps(b.table.as_ptr().add(8))) };
    let xp = x.as_ptr();
    for (r, o) in out.iter_mut().enumerate() {
        let flat = b.first + r * b.cols;
        let mut tot = [_mm256_setzero_ps(); 2];
        let mut k = 0;
        while k < b.cols {
            let blk = (flat + k) / b.block;
            let end = ((blk + 1) * b.block - flat).min(b.cols);
            let s = _mm256_set1_ps(b.absmax[blk]);
            let (lo, hi) = (_mm256_mul_ps(tlo, s), _mm256_mul_ps(thi, s));
            while k < end {
                // SAFETY: k + 16 <= cols: 8 code bytes of row r and 16 x values are in bounds.
                unsafe {
                    let v = widen8(b.codes.as_ptr().add(r * b.cols / 2 + k / 2));
                    tot[0] = _mm256_fmadd_ps(lookup16(v, lo, hi), _mm256_loadu_ps(xp.add(k)), tot[0]);
                    let h = _mm256_srli_epi32::<4>(v);
                    tot[1] = _mm256_fmadd_ps(lookup16(h, lo, hi), _mm256_loadu_ps(xp.add(k + L)), tot[1]);
                }
                k += chunk;
            }
        }
        *o = hsum(_mm256_add_ps(tot[0], tot[1]));
    }
}

/// Row `r`, elements `k0..k0 + dst.len()` of a codebook block, interleaved.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dequant_cb(b: &CbBlock, r: usize, k0: usize, dst: &mut [f32]) {
    let chunk = 2 * L;
    assert!(k0.is_multiple_of(chunk) && dst.len().is_multiple_of(chunk) && k0 + dst.len() <= b.cols);
    assert!(b.codes.len() >= (r + 1) * b.cols / 2 && b.block.is_multiple_of(chunk));
    // SAFETY: the table holds 16 f32.
    let (tlo, thi) = unsafe { (_mm256_loadu_ps(b.table.as_ptr()), _mm256_loadu_ps(b.table.as_ptr().add(8))) };
    let flat = b.first + r * b.cols;
    let dp = dst.as_mut_ptr();
    for c in (0..dst.len()).step_by(chunk) {
        let k = k0 + c;
        let s = _mm256_set1_ps(b.absmax[(flat + k) / b.block]);
        let (lo, hi) = (_mm256_mul_ps(tlo, s), _mm256_mul_ps(thi, s));
        // SAFETY: 8 code bytes of row r at k / 2 and 16 f32 at dst[c..] are in bounds.
        unsafe {
            let v = widen8(b.codes.as_ptr().add(r * b.cols / 2 + k / 2));
            _mm256_storeu_ps(dp.add(c), lookup16(v, lo, hi));
            _mm256_storeu_ps(dp.add(c + L), lookup16(_mm256_srli_epi32::<4>(v), lo, hi));
        }
    }
}

/// Widens 8 halves per step (F16C).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn widen_f16(src: &[f16], dst: &mut [f32]) {
    let n = src.len().min(dst.len());
    let mut k = 0;
    // SAFETY: vector loads and stores stay below n.
    unsafe {
        while k + L <= n {
            _mm256_storeu_ps(dst.as_mut_ptr().add(k), load_f16(src.as_ptr().add(k)));
            k += L;
        }
    }
    for (d, s) in dst[k..n].iter_mut().zip(&src[k..n]) {
        *d = s.to_f32();
    }
}

/// Widens bf16 (a shift into the top half of an f32).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn widen_bf16(src: &[bf16], dst: &mut [f32]) {
    let n = src.len().min(dst.len());
    let mut k = 0;
    // SAFETY: vector loads and stores stay below n.
    unsafe {
        while k + L <= n {
            _mm256_storeu_ps(dst.as_mut_ptr().add(k), load_bf16(src.as_ptr().add(k)));
            k += L;
        }
    }
    for (d, s) in dst[k..n].iter_mut().zip(&src[k..n]) {
        *d = s.to_f32();
    }
}

impl Isa for Avx2 {
    const LANES: usize = L;

    // SAFETY (every method below): `self` proves the CPU has AVX2, FMA and F16C; the kernels
    // check their slice bounds themselves.
    fn dot(self, x: &[f32], w: &[f32]) -> f32 {
        // SAFETY: see above.
        unsafe { dot_f32(x, w) }
    }
    fn gemv_f32(self, x: &[f32], w: &[f32], out: &mut [f32]) {
        // SAFETY: see above.
        unsafe { gemv_f32(x, w, out) }
    }
    fn gemv_f16(self, x: &[f32], w: &[f16], out: &mut [f32]) {
        // SAFETY: see above.
        unsafe { gemv_f16(x, w, out) }
    }
    fn gemv_bf16(self, x: &[f32], w: &[bf16], out: &mut [f32]) {
        // SAFETY: see above.
        unsafe { gemv_bf16(x, w, out) }
    }
    fn widen_f16(self, src: &[f16], dst: &mut [f32]) {
        // SAFETY: see above.
        unsafe { widen_f16(src, dst) }
    }
    fn widen_bf16(self, src: &[bf16], dst: &mut [f32]) {
        // SAFETY: see above.
        unsafe { widen_bf16(src, dst) }
    }
    const PANEL: usize = 2 * L;
    const MR: usize = 6;
    fn kernel(
        self,
        x: &[f32],
        xs: usize,
        mr: usize,
        p: &[f32],
        kc: usize,
        out: &mut [f32],
        os: usize,
        nr: usize,
        accumulate: bool,
    ) {
        macro_rules! go {
            ($($m:literal),*) => {
                match mr {
                    // SAFETY: see above.
                    $($m => unsafe { kernel_m::<$m>(x, xs, p, kc, out, os, nr, accumulate) },)*
                    _ => unreachable!("at most MR rows"),
                }
            };
        }
        go!(1, 2, 3, 4, 5, 6)
    }
    fn gemv_int(self, b: &IntBlock, x: &[f32], out: &mut [f32]) {
        // SAFETY: see above.
        unsafe { gemv_int(b, x, out) }
    }
    fn dequant_int(self, b: &IntBlock, r: usize, k0: usize, dst: &mut [f32]) {
        // SAFETY: see above.
        unsafe { dequant_int(b, r, k0, dst) }
    }
    fn gemv_cb(self, b: &CbBlock, x: &[f32], out: &mut [f32]) {
        // SAFETY: see above.
        unsafe { gemv_cb(b, x, out) }
    }
    fn dequant_cb(self, b: &CbBlock, r: usize, k0: usize, dst: &mut [f32]) {
        // SAFETY: see above.
        unsafe { dequant_cb(b, r, k0, dst) }
    }
}
