//! AVX2 + FMA + F16C kernels (8 f32 lanes, 16 registers).
//!
//! Integer codes: 8 code bytes are widened to 8 u32 lanes (`vpmovzxbd`); lane `j` shifted right
//! by `bits * t` and masked gives element `c * j + t` (the interleaved order of [`crate::isa`]).
//! The codes are converted to f32 and the zero point subtracted (exact for integer zeros), the
//! differences multiplied by x and summed; the group's scale multiplies the sum once. NF4/FP4 codes index a 16-entry table held in
//! two registers (`vpermps` on the low 3 bits, a blend on bit 3). 3-bit codes: 24 bytes hold 8
//! lanes of 8 codes; a dword permute and variable shifts put each lane's 24 bits in place and an
//! 8-entry `(i - zero) * scale` table decodes them (this part serves the AVX-512 level too).

use super::simd::{int_rows, row_blocks, simd_intrinsics, simd_isa, token_op, Simd};
use crate::isa::IntBlock;
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

/// The sum of the 8 lanes.
#[target_feature(enable = "avx2")]
#[inline]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Lanes `0..n` of `p` into a zeroed 8-lane buffer.
///
/// # Safety
/// `n <= 8` readable elements at `p`.
#[inline(always)]
unsafe fn partial<T: Copy + Default, const N: usize>(p: *const T, n: usize) -> [T; N] {
    let mut buf = [T::default(); N];
    // SAFETY: `n <= N` elements are readable at `p` (the caller's contract) and fit in `buf`.
    unsafe { std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), n.min(N)) };
    buf
}

// SAFETY: an `Avx2` exists only on CPUs with AVX2, FMA and F16C (`Avx2::new`), every feature the
// methods use.
unsafe impl Simd for Avx2 {
    const L: usize = L;
    type V = __m256;
    type I = __m256i;
    type H = __m128i;
    type Table = (__m256, __m256);

    simd_intrinsics!(
        zero: _mm256_setzero_ps, splat: _mm256_set1_ps, fma: _mm256_fmadd_ps, add: _mm256_add_ps,
        hsum: hsum, load: _mm256_loadu_ps, store: _mm256_storeu_ps,
        load_u16: _mm_loadu_si128, f16_to_f32: _mm256_cvtph_ps, load_codes: widen8,
        next_nibble: _mm256_srli_epi32
    );
    #[inline(always)]
    unsafe fn load_partial(self, p: *const f32, n: usize) -> __m256 {
        token_op!(_mm256_loadu_ps(partial::<f32, L>(p, n).as_ptr()))
    }
    #[inline(always)]
    unsafe fn load_u16_partial(self, p: *const u16, n: usize) -> __m128i {
        token_op!(self.load_u16(partial::<u16, L>(p, n).as_ptr()))
    }
    #[inline(always)]
    fn bf16_to_f32(self, h: __m128i) -> __m256 {
        token_op!(_mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h))))
    }
    #[inline(always)]
    unsafe fn store_partial(self, p: *mut f32, n: usize, v: __m256) {
        token_op!(store_partial(p, n, v))
    }
    #[inline(always)]
    fn table16(self, table: &[f32; 16], scale: f32) -> (__m256, __m256) {
        let s = self.splat(scale);
        token_op!((
            _mm256_mul_ps(_mm256_loadu_ps(table.as_ptr()), s),
            _mm256_mul_ps(_mm256_loadu_ps(table.as_ptr().add(8)), s)
        ))
    }
    /// Two `vpermps` on the low 3 bits, a blend on bit 3.
    #[inline(always)]
    fn lookup16(self, v: __m256i, (lo, hi): (__m256, __m256)) -> __m256 {
        token_op!({
            let a = _mm256_permutevar8x32_ps(lo, v);
            let b = _mm256_permutevar8x32_ps(hi, v);
            _mm256_blendv_ps(a, b, _mm256_castsi256_ps(_mm256_slli_epi32::<28>(v)))
        })
    }
}

/// Stores the first `n < 8` lanes of `v` at `p` (through a buffer: AVX2 has no masked f32
/// store short of `vmaskmovps`).
///
/// # Safety
/// AVX in the caller; `n` writable f32 at `p`.
#[inline(always)]
pub(super) unsafe fn store_partial(p: *mut f32, n: usize, v: __m256) {
    let mut buf = [0f32; L];
    // SAFETY: `buf` holds 8 f32; `n.min(8)` are writable at `p` (the caller's contract).
    unsafe {
        _mm256_storeu_ps(buf.as_mut_ptr(), v);
        std::ptr::copy_nonoverlapping(buf.as_ptr(), p, n.min(L));
    }
}

/// Widens 8 code bytes at `p` to 8 u32 lanes.
///
/// # Safety
/// 8 readable bytes at `p`.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn widen8(p: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 8 readable bytes at `p`.
    unsafe { _mm256_cvtepu8_epi32(_mm_loadl_epi64(p.cast())) }
}

/// `out[r] = x · row r` for 2-, 4- and 8-bit codes, R rows per pass.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemv_int_rows<const BITS: i32, const R: usize>(s: Avx2, b: &IntBlock, x: &[f32], r0: usize, out: &mut [f32]) {
    let per_byte = (8 / BITS) as usize;
    let chunk = L * per_byte;
    b.check_gemv(x, r0, R, out, chunk);
    let gpr = b.gpr();
    let mask = _mm256_set1_epi32((1 << BITS) - 1);
    let xp = x.as_ptr();
    int_rows(s, b, r0, out, |gi, ks| {
        let mut acc = [_mm256_setzero_ps(); R];
        let z: [__m256; R] = std::array::from_fn(|r| _mm256_set1_ps(b.zeros.get((r0 + r) * gpr + gi)));
        for k in ks.step_by(chunk) {
            // SAFETY: k + chunk <= cols: x and 8 code bytes per row at byte k / per_byte are in
            // bounds (asserted).
            unsafe {
                let mut v: [__m256i; R] =
                    std::array::from_fn(|r| widen8(b.codes.as_ptr().add((r0 + r) * b.row_bytes + k / per_byte)));
                for t in 0..per_byte {
                    let xv = _mm256_loadu_ps(xp.add(k + t * L));
                    for r in 0..R {
                        let q = if BITS == 8 { v[r] } else { _mm256_and_si256(v[r], mask) };
                        let wv = _mm256_sub_ps(_mm256_cvtepi32_ps(q), z[r]);
                        acc[r] = _mm256_fmadd_ps(wv, xv, acc[r]);
                        if BITS < 8 {
                            v[r] = _mm256_srli_epi32::<BITS>(v[r]);
                        }
                    }
                }
            }
        }
        acc
    });
}

/// The 16-entry row codebook of row `r` as two registers.
///
/// # Safety
/// 16 table values for row `r` (the kernels assert them).
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn row_table16(t: &[f32], r: usize) -> (__m256, __m256) {
    // SAFETY: the caller's contract.
    unsafe { (_mm256_loadu_ps(t.as_ptr().add(16 * r)), _mm256_loadu_ps(t.as_ptr().add(16 * r + 8))) }
}

/// `out[r] = x · row r` for 4-bit codes indexing per-row codebooks (`vpermps` on the low 3 bits,
/// a blend on bit 3), R rows per pass.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemv_lut4_rows<const R: usize>(s: Avx2, b: &IntBlock, x: &[f32], r0: usize, out: &mut [f32]) {
    const CHUNK: usize = 2 * L;
    b.check_gemv(x, r0, R, out, CHUNK);
    let t = b.tables.expect("row codebooks");
    let xp = x.as_ptr();
    // SAFETY: 16 table values per row of the block (asserted).
    let lut: [(__m256, __m256); R] = std::array::from_fn(|r| unsafe { row_table16(t, r0 + r) });
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    for k in (0..b.cols).step_by(CHUNK) {
        // SAFETY: k + 16 <= cols: x[k..k + 16] and 8 code bytes per row at byte k / 2 are in
        // bounds (asserted).
        unsafe {
            let x0 = _mm256_loadu_ps(xp.add(k));
            let x1 = _mm256_loadu_ps(xp.add(k + L));
            for r in 0..R {
                let v = widen8(b.codes.as_ptr().add((r0 + r) * b.row_bytes + k / 2));
                acc[r][0] = _mm256_fmadd_ps(s.lookup16(v, lut[r]), x0, acc[r][0]);
                acc[r][1] = _mm256_fmadd_ps(s.lookup16(_mm256_srli_epi32::<4>(v), lut[r]), x1, acc[r][1]);
            }
        }
    }
    for (r, a) in acc.iter().enumerate() {
        out[r0 + r] = hsum(_mm256_add_ps(a[0], a[1]));
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemv_int(s: Avx2, b: &IntBlock, x: &[f32], out: &mut [f32]) {
    // SAFETY: each call covers rows r..r+R < rows of the block, which the kernels assert.
    unsafe {
        if b.tables.is_some() && b.bits == 4 {
            return row_blocks!(out.len(), 4, r => gemv_lut4_rows(s, b, x, r, out));
        }
        match b.bits {
            4 => row_blocks!(out.len(), 2, r => gemv_int_rows::<4>(s, b, x, r, out)),
            2 => row_blocks!(out.len(), 2, r => gemv_int_rows::<2>(s, b, x, r, out)),
            8 => row_blocks!(out.len(), 2, r => gemv_int_rows::<8>(s, b, x, r, out)),
            3 => row_blocks!(out.len(), 2, r => gemv_q3_rows(b, x, r, out)),
            _ => unreachable!("codes are 2, 3, 4 or 8 bits"),
        }
    }
}

/// Row `r`, elements `k0..k0 + dst.len()` (chunk aligned) of an integer block, interleaved.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dequant_int(s: Avx2, b: &IntBlock, r: usize, k0: usize, dst: &mut [f32]) {
    if b.bits == 3 {
        // SAFETY: same contract.
        return unsafe { dequant_q3(b, r, k0, dst) };
    }
    let bits = b.bits as usize;
    let per_byte = 8 / bits;
    let chunk = L * per_byte;
    b.check_dequant(r, k0, dst.len(), chunk);
    if let Some(t) = b.tables {
        // 4-bit codes into the row's codebook.
        let dp = dst.as_mut_ptr();
        // SAFETY: 16 table values for row r, 8 code bytes of row r at k / 2 and 16 f32 at
        // dst[c..] are in bounds (asserted).
        unsafe {
            let lut = row_table16(t, r);
            for c in (0..dst.len()).step_by(chunk) {
                let v = widen8(b.codes.as_ptr().add(r * b.row_bytes + (k0 + c) / 2));
                _mm256_storeu_ps(dp.add(c), s.lookup16(v, lut));
                _mm256_storeu_ps(dp.add(c + L), s.lookup16(_mm256_srli_epi32::<4>(v), lut));
            }
        }
        return;
    }
    let gpr = b.gpr();
    let mask = _mm256_set1_epi32(((1u32 << bits) - 1) as i32);
    let shift = _mm_cvtsi32_si128(bits as i32);
    let dp = dst.as_mut_ptr();
    for c in (0..dst.len()).step_by(chunk) {
        let k = k0 + c;
        let p = r * gpr + k / b.group;
        let z = _mm256_set1_ps(b.zeros.get(p));
        let sc = _mm256_set1_ps(b.scales[p]);
        // SAFETY: 8 code bytes of row r at k / per_byte and `chunk` f32 at dst[c..] are in bounds.
        unsafe {
            let mut v = widen8(b.codes.as_ptr().add(r * b.row_bytes + k / per_byte));
            for t in 0..per_byte {
                let q = _mm256_sub_ps(_mm256_cvtepi32_ps(_mm256_and_si256(v, mask)), z);
                _mm256_storeu_ps(dp.add(c + t * L), _mm256_mul_ps(q, sc));
                v = _mm256_srl_epi32(v, shift);
            }
        }
    }
}

/// Gathers 8 triples of 3-bit codes (24 bytes at `p`) into 8 u32 lanes: lane `j` holds bits
/// `24j..24j + 24` of the chunk, i.e. codes `8j..8j + 8` (higher bits of a lane are garbage, and
/// the 8-entry table lookup reads only the low 3 bits).
///
/// # Safety
/// As below; AVX2.
#[target_feature(enable = "avx2")]
#[inline]
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
#[target_feature(enable = "avx2")]
#[inline]
fn q3_lut(zero: f32, scale: f32) -> __m256 {
    let q = _mm256_sub_ps(_mm256_setr_ps(0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0), _mm256_set1_ps(zero));
    _mm256_mul_ps(q, _mm256_set1_ps(scale))
}

/// The 3-bit table of row `r`: the first 8 entries of its row codebook, else `(i - zero) * scale`
/// of group `p`.
#[target_feature(enable = "avx2")]
#[inline]
fn row_or_q3_lut(b: &IntBlock, r: usize, p: usize) -> __m256 {
    match b.tables {
        // SAFETY: the kernels assert 16 table values per row of the block.
        Some(t) => unsafe { _mm256_loadu_ps(t[16 * r..16 * r + 8].as_ptr()) },
        None => q3_lut(b.zeros.get(p), b.scales[p]),
    }
}

/// `out[r] = x · row r` for 3-bit codes in chunks of 64 (24 bytes): gather, then 8 table lookups
/// (`vpermps` on the low 3 bits) per lane. Used by the AVX2 and AVX-512 levels alike.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn gemv_q3_rows<const R: usize>(b: &IntBlock, x: &[f32], r0: usize, out: &mut [f32]) {
    const CHUNK: usize = 64;
    b.check_gemv(x, r0, R, out, CHUNK);
    let gpr = b.gpr();
    let xp = x.as_ptr();
    let end_ptr = b.codes.as_ptr_range().end;
    let mut tot = [_mm256_setzero_ps(); R];
    for gi in 0..gpr {
        let lut: [__m256; R] = std::array::from_fn(|r| {
            let p = (r0 + r) * gpr + gi;
            row_or_q3_lut(b, r0 + r, p)
        });
        let mut k = gi * b.group;
        let end = (k + b.group).min(b.cols);
        while k < end {
            // SAFETY: k + 64 <= cols: x[k..k + 64] and the 24 code bytes at k * 3 / 8 of each row
            // are in bounds (asserted).
            unsafe {
                let mut v: [__m256i; R] =
                    std::array::from_fn(|r| gather3(b.codes.as_ptr().add((r0 + r) * b.row_bytes + k * 3 / 8), end_ptr));
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

/// Row `r`, elements `k0..k0 + dst.len()` (64-aligned) of a 3-bit block, interleaved.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dequant_q3(b: &IntBlock, r: usize, k0: usize, dst: &mut [f32]) {
    const CHUNK: usize = 64;
    b.check_dequant(r, k0, dst.len(), CHUNK);
    let gpr = b.gpr();
    let dp = dst.as_mut_ptr();
    let end_ptr = b.codes.as_ptr_range().end;
    for c in (0..dst.len()).step_by(CHUNK) {
        let k = k0 + c;
        let p = r * gpr + k / b.group;
        let lut = row_or_q3_lut(b, r, p);
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

simd_isa!(Avx2, "avx2,fma,f16c", mr = [1, 2, 3, 4, 5, 6]);
