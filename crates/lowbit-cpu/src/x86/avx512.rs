//! AVX-512 (F, BW, VL) kernels, with FMA and F16C.
//!
//! 4-bit and 2-bit codes are decoded with a 16-entry f32 lookup table in one register
//! (`vpermps` reads the low 4 bits of each lane, so no mask is needed): the matrix-vector kernel's
//! table holds `i - zero` (built per group, so float zero points cost nothing extra) and the group's scale multiplies
//! the group's partial sum once; the panel dequantizer's holds `(i - zero) * scale`, the same f32
//! the scalar reference computes; NF4/FP4 tables hold `table[i] * absmax` per block. 16 code bytes
//! are widened to 16 lanes with `vpmovzxbd`; lane `j` shifted right by `bits * t` decodes element
//! `c * j + t` (the interleaved order of [`crate::isa`]). (A mask/shift/integer-subtract decode
//! measured 20% slower than the table.) 8-bit codes are widened, converted, have the zero
//! subtracted and are scaled once per group. 3-bit codes: 48 bytes (two 64-code chunks
//! of the AVX2 layout) are gathered into 16 lanes of 8 codes with dword permutes and variable
//! shifts, then decoded with the same table (entries repeat every 8).

use super::simd::{int_rows, row_blocks, simd_intrinsics, simd_isa, token_op, Simd};
use crate::isa::IntBlock;
use std::arch::x86_64::*;

const FEATURES_OK: fn() -> bool = || {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c")
};

/// The AVX-512 level; a value exists only on CPUs that run it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx512(());

impl Avx512 {
    /// The level, if this CPU supports it.
    pub(crate) fn new() -> Option<Self> {
        FEATURES_OK().then_some(Avx512(()))
    }
}

/// Lanes per vector.
const L: usize = 16;

/// The mask of lanes `0..min(n, 16)`.
#[inline(always)]
pub(super) fn tail_mask(n: usize) -> __mmask16 {
    if n >= 16 {
        0xffff
    } else {
        ((1u32 << n) - 1) as __mmask16
    }
}

// SAFETY: an `Avx512` exists only on CPUs with AVX-512 F/BW/VL, AVX2, FMA and F16C
// (`Avx512::new`), every feature the methods use.
unsafe impl Simd for Avx512 {
    const L: usize = L;
    type V = __m512;
    type I = __m512i;
    type H = __m256i;
    type Table = __m512;

    simd_intrinsics!(
        zero: _mm512_setzero_ps, splat: _mm512_set1_ps, fma: _mm512_fmadd_ps, add: _mm512_add_ps,
        hsum: _mm512_reduce_add_ps, load: _mm512_loadu_ps, store: _mm512_storeu_ps,
        load_u16: _mm256_loadu_si256, f16_to_f32: _mm512_cvtph_ps, load_codes: widen16,
        next_nibble: _mm512_srli_epi32
    );
    /// A masked load (masked-off lanes do not fault).
    #[inline(always)]
    unsafe fn load_partial(self, p: *const f32, n: usize) -> __m512 {
        token_op!(_mm512_maskz_loadu_ps(tail_mask(n), p))
    }
    #[inline(always)]
    unsafe fn load_u16_partial(self, p: *const u16, n: usize) -> __m256i {
        token_op!(_mm256_maskz_loadu_epi16(tail_mask(n), p.cast()))
    }
    #[inline(always)]
    fn bf16_to_f32(self, h: __m256i) -> __m512 {
        token_op!(_mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h))))
    }
    #[inline(always)]
    unsafe fn store_partial(self, p: *mut f32, n: usize, v: __m512) {
        token_op!(_mm512_mask_storeu_ps(p, tail_mask(n), v))
    }
    #[inline(always)]
    fn table16(self, table: &[f32; 16], scale: f32) -> __m512 {
        token_op!(_mm512_mul_ps(_mm512_loadu_ps(table.as_ptr()), _mm512_set1_ps(scale)))
    }
    /// `vpermps` reads the low 4 bits of each lane.
    #[inline(always)]
    fn lookup16(self, v: __m512i, table: __m512) -> __m512 {
        token_op!(_mm512_permutexvar_ps(v, table))
    }
}

/// Lane `i` holds `i mod 2^bits` as f32: the codes a 16-entry table is indexed by.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn code_values<const BITS: u32>() -> __m512 {
    let mask = _mm512_set1_epi32((1 << BITS) - 1);
    _mm512_cvtepi32_ps(_mm512_and_si512(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), mask))
}

/// 16-entry lookup table `(i mod 2^bits - zero) * scale` for integer codes (exact for integer
/// zeros: small integers convert and subtract exactly).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn int_lut<const BITS: u32>(zero: f32, scale: f32) -> __m512 {
    _mm512_mul_ps(_mm512_sub_ps(code_values::<BITS>(), _mm512_set1_ps(zero)), _mm512_set1_ps(scale))
}

/// The table of row `r` of the block: its row codebook, else `i - zero` of group `p` (the
/// matrix-vector form: the scale multiplies the group's sum).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
#[inline]
fn row_or_group_lut(b: &IntBlock, codes: __m512, r: usize, p: usize) -> __m512 {
    match b.tables {
        // SAFETY: the kernels assert 16 table values per row of the block.
        Some(t) => unsafe { _mm512_loadu_ps(t[16 * r..16 * r + 16].as_ptr()) },
        None => _mm512_sub_ps(codes, _mm512_set1_ps(b.zeros.get(p))),
    }
}

/// Widens 16 code bytes at `p` to 16 u32 lanes.
///
/// # Safety
/// 16 readable bytes at `p`.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn widen16(p: *const u8) -> __m512i {
    // SAFETY: the caller guarantees 16 readable bytes at `p`.
    unsafe { _mm512_cvtepu8_epi32(_mm_loadu_si128(p.cast())) }
}

/// `out[r] = x · row r` for 2- and 4-bit integer codes (table decode), R rows per pass.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn gemv_lut_rows<const BITS: u32, const R: usize>(
    s: Avx512,
    b: &IntBlock,
    x: &[f32],
    r0: usize,
    out: &mut [f32],
) {
    let codes = code_values::<BITS>();
    let per_byte = (8 / BITS) as usize;
    let chunk = L * per_byte;
    b.check_gemv(x, r0, R, out, chunk);
    let gpr = b.gpr();
    let xp = x.as_ptr();
    int_rows(s, b, r0, out, |gi, ks| {
        // The table gives `i - zero` (or the row's codebook); the group's scale multiplies its
        // partial sum once.
        let lut: [__m512; R] = std::array::from_fn(|r| row_or_group_lut(b, codes, r0 + r, (r0 + r) * gpr + gi));
        let mut acc = [_mm512_setzero_ps(); R];
        for k in ks.step_by(chunk) {
            // SAFETY: k + chunk <= cols, so the x loads and the 16 code bytes of each row at
            // byte k / per_byte lie inside the asserted bounds.
            unsafe {
                let mut v: [__m512i; R] =
                    std::array::from_fn(|r| widen16(b.codes.as_ptr().add((r0 + r) * b.row_bytes + k / per_byte)));
                for t in 0..per_byte {
                    let xv = _mm512_loadu_ps(xp.add(k + t * L));
                    for r in 0..R {
                        let wv = _mm512_permutexvar_ps(v[r], lut[r]);
                        acc[r] = _mm512_fmadd_ps(wv, xv, acc[r]);
                        v[r] = _mm512_srli_epi32::<BITS>(v[r]);
                    }
                }
            }
        }
        acc
    });
}

/// Gathers two 24-byte chunks of 3-bit codes (48 bytes at `p`) into 16 u32 lanes: lanes 0..8
/// hold the 8-code triples of the first chunk, lanes 8..16 those of the second (the layout of
/// `avx2::gather3`, twice).
///
/// # Safety
/// As below; AVX-512 F.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn gather3x2(p: *const u8, end: *const u8) -> __m512i {
    // SAFETY: the caller guarantees 48 readable bytes at `p` and that `end` ends the buffer: a
    // 64-byte load is used only when it stays inside, else a 48-byte copy.
    unsafe {
        let d = if end.offset_from(p) >= 64 {
            _mm512_loadu_si512(p.cast())
        } else {
            let mut tail = [0u8; 64];
            std::ptr::copy_nonoverlapping(p, tail.as_mut_ptr(), 48);
            _mm512_loadu_si512(tail.as_ptr().cast())
        };
        let idx = _mm512_setr_epi32(0, 0, 1, 2, 3, 3, 4, 5, 6, 6, 7, 8, 9, 9, 10, 11);
        let off = _mm512_setr_epi32(0, 24, 16, 8, 0, 24, 16, 8, 0, 24, 16, 8, 0, 24, 16, 8);
        let lo = _mm512_permutexvar_epi32(idx, d);
        let hi = _mm512_permutexvar_epi32(_mm512_add_epi32(idx, _mm512_set1_epi32(1)), d);
        // A variable shift by 32 gives 0: lanes starting on a dword boundary take no high part.
        _mm512_or_si512(_mm512_srlv_epi32(lo, off), _mm512_sllv_epi32(hi, _mm512_sub_epi32(_mm512_set1_epi32(32), off)))
    }
}

/// `out[r] = x · row r` for 3-bit codes: 128 codes (two 64-code chunks) per step on 16 lanes; a
/// group ending on an odd 64-chunk finishes with one step on the low 8 lanes (the high lanes decode
/// zero bytes and meet zeroed x).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn gemv_q3_rows<const R: usize>(s: Avx512, b: &IntBlock, x: &[f32], r0: usize, out: &mut [f32]) {
    const CHUNK: usize = 64;
    let codes = code_values::<3>();
    b.check_gemv(x, r0, R, out, CHUNK);
    let gpr = b.gpr();
    let xp = x.as_ptr();
    let end_ptr = b.codes.as_ptr_range().end;
    int_rows(s, b, r0, out, |gi, ks| {
        let lut: [__m512; R] = std::array::from_fn(|r| row_or_group_lut(b, codes, r0 + r, (r0 + r) * gpr + gi));
        let mut acc = [_mm512_setzero_ps(); R];
        let (mut k, end) = (ks.start, ks.end);
        while k + 2 * CHUNK <= end {
            // SAFETY: k + 128 <= end <= cols, so x[k..k + 128] and the 48 code bytes of each row
            // at k * 3 / 8 are in bounds (asserted).
            unsafe {
                let mut v: [__m512i; R] = std::array::from_fn(|r| {
                    gather3x2(b.codes.as_ptr().add((r0 + r) * b.row_bytes + k * 3 / 8), end_ptr)
                });
                for t in 0..8 {
                    let xa = _mm256_loadu_ps(xp.add(k + t * 8));
                    let xb = _mm256_loadu_ps(xp.add(k + CHUNK + t * 8));
                    // (insertf64x4 is AVX-512F; the f32x8 form would need DQ)
                    let xv = _mm512_castpd_ps(_mm512_insertf64x4::<1>(
                        _mm512_castps_pd(_mm512_castps256_ps512(xa)),
                        _mm256_castps_pd(xb),
                    ));
                    for r in 0..R {
                        acc[r] = _mm512_fmadd_ps(_mm512_permutexvar_ps(v[r], lut[r]), xv, acc[r]);
                        v[r] = _mm512_srli_epi32::<3>(v[r]);
                    }
                }
            }
            k += 2 * CHUNK;
        }
        if k < end {
            // SAFETY: k + 64 <= end <= cols, so x[k..k + 64] and the 24 code bytes of each row at
            // k * 3 / 8 are in bounds (asserted).
            unsafe {
                let mut v: [__m512i; R] = std::array::from_fn(|r| {
                    _mm512_zextsi256_si512(super::avx2::gather3(
                        b.codes.as_ptr().add((r0 + r) * b.row_bytes + k * 3 / 8),
                        end_ptr,
                    ))
                });
                for t in 0..8 {
                    let xv = _mm512_castps256_ps512(_mm256_loadu_ps(xp.add(k + t * 8)));
                    let xv = _mm512_maskz_mov_ps(0x00FF, xv);
                    for r in 0..R {
                        acc[r] = _mm512_fmadd_ps(_mm512_permutexvar_ps(v[r], lut[r]), xv, acc[r]);
                        v[r] = _mm512_srli_epi32::<3>(v[r]);
                    }
                }
            }
        }
        acc
    });
}

/// `out[r] = x · row r` for 8-bit codes: zero subtraction, one scale per group.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn gemv_q8_rows<const R: usize>(s: Avx512, b: &IntBlock, x: &[f32], r0: usize, out: &mut [f32]) {
    b.check_gemv(x, r0, R, out, L);
    let gpr = b.gpr();
    let xp = x.as_ptr();
    int_rows(s, b, r0, out, |gi, ks| {
        let mut acc = [_mm512_setzero_ps(); R];
        let z: [__m512; R] = std::array::from_fn(|r| _mm512_set1_ps(b.zeros.get((r0 + r) * gpr + gi)));
        for k in ks.step_by(L) {
            // SAFETY: k + 16 <= cols; x and 16 code bytes per row are in bounds (asserted).
            unsafe {
                let xv = _mm512_loadu_ps(xp.add(k));
                for r in 0..R {
                    let q = widen16(b.codes.as_ptr().add((r0 + r) * b.row_bytes + k));
                    let wv = _mm512_sub_ps(_mm512_cvtepi32_ps(q), z[r]);
                    acc[r] = _mm512_fmadd_ps(wv, xv, acc[r]);
                }
            }
        }
        acc
    });
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn gemv_int(s: Avx512, b: &IntBlock, x: &[f32], out: &mut [f32]) {
    // SAFETY: each call covers rows r..r+R < rows of the block, which the kernels assert.
    unsafe {
        match b.bits {
            4 => row_blocks!(out.len(), 4, r => gemv_lut_rows::<4>(s, b, x, r, out)),
            2 => row_blocks!(out.len(), 4, r => gemv_lut_rows::<2>(s, b, x, r, out)),
            8 => row_blocks!(out.len(), 4, r => gemv_q8_rows(s, b, x, r, out)),
            3 => row_blocks!(out.len(), 4, r => gemv_q3_rows(s, b, x, r, out)),
            _ => unreachable!("codes are 2, 3, 4 or 8 bits"),
        }
    }
}

/// Row `r`, elements `k0..k0 + dst.len()` (chunk aligned) of an integer block, interleaved.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn dequant_int(_: Avx512, b: &IntBlock, r: usize, k0: usize, dst: &mut [f32]) {
    if b.bits == 3 {
        // SAFETY: same contract; AVX-512 implies the AVX2 the 3-bit kernels use.
        return unsafe { super::avx2::dequant_q3(b, r, k0, dst) };
    }
    // SAFETY: same contract.
    unsafe {
        match b.bits {
            8 => dequant_rows::<8>(b, r, k0, dst),
            4 => dequant_rows::<4>(b, r, k0, dst),
            2 => dequant_rows::<2>(b, r, k0, dst),
            _ => unreachable!("codes are 2, 3, 4 or 8 bits"),
        }
    }
}

/// [`dequant_int`] for 2, 4 and 8 bits: one table (or zero and scale) per group, not per chunk.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn dequant_rows<const BITS: u32>(b: &IntBlock, r: usize, k0: usize, dst: &mut [f32]) {
    let per_byte = (8 / BITS) as usize;
    let chunk = L * per_byte;
    b.check_dequant(r, k0, dst.len(), chunk);
    let gpr = b.gpr();
    let row = b.codes.as_ptr();
    let dp = dst.as_mut_ptr();
    let mut c = 0;
    while c < dst.len() {
        let gi = (k0 + c) / b.group;
        let gend = ((gi + 1) * b.group).min(k0 + dst.len()) - k0;
        let p = r * gpr + gi;
        let (zero, scale) = (b.zeros.get(p), b.scales[p]);
        let lut = match b.tables {
            // SAFETY: 16 table values for row r (asserted).
            Some(t) => unsafe { _mm512_loadu_ps(t[16 * r..16 * r + 16].as_ptr()) },
            None => int_lut::<BITS>(zero, scale),
        };
        let (zv, sv) = (_mm512_set1_ps(zero), _mm512_set1_ps(scale));
        while c < gend {
            let k = k0 + c;
            // SAFETY: 16 code bytes at byte k / per_byte of row r and `chunk` f32 at dst[c..] are
            // in bounds (asserted: k + chunk <= cols, c + chunk <= dst.len()).
            unsafe {
                let mut v = widen16(row.add(r * b.row_bytes + k / per_byte));
                if BITS == 8 {
                    let q = _mm512_sub_ps(_mm512_cvtepi32_ps(v), zv);
                    _mm512_storeu_ps(dp.add(c), _mm512_mul_ps(q, sv));
                } else {
                    for t in 0..per_byte {
                        _mm512_storeu_ps(dp.add(c + t * L), _mm512_permutexvar_ps(v, lut));
                        v = _mm512_srli_epi32::<BITS>(v);
                    }
                }
            }
            c += chunk;
        }
    }
}

/// Transposes 16 rows of 16 f32 (`r[i]` = row i) into 16 columns.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn transpose16(r: [__m512; 16]) -> [__m512; 16] {
    // 1: pairs of rows interleaved within 128-bit lanes
    let t: [__m512; 16] = std::array::from_fn(|i| {
        let (a, b) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
        if i % 2 == 0 {
            _mm512_unpacklo_ps(a, b)
        } else {
            _mm512_unpackhi_ps(a, b)
        }
    });
    // 2: u[4g + c] holds, in lane L, column 4L + c of rows 4g..4g + 4
    let u: [__m512; 16] = std::array::from_fn(|i| {
        let (g, c) = (i / 4, i % 4);
        let (a, b) = (t[4 * g + c / 2], t[4 * g + c / 2 + 2]);
        if c % 2 == 0 {
            _mm512_shuffle_ps::<0x44>(a, b)
        } else {
            _mm512_shuffle_ps::<0xEE>(a, b)
        }
    });
    // 3: gather lane L of the four row groups for columns 4L + c
    let mut out = [_mm512_setzero_ps(); 16];
    for c in 0..4 {
        let x0 = _mm512_shuffle_f32x4::<0x44>(u[c], u[4 + c]);
        let x1 = _mm512_shuffle_f32x4::<0xEE>(u[c], u[4 + c]);
        let y0 = _mm512_shuffle_f32x4::<0x44>(u[8 + c], u[12 + c]);
        let y1 = _mm512_shuffle_f32x4::<0xEE>(u[8 + c], u[12 + c]);
        out[c] = _mm512_shuffle_f32x4::<0x88>(x0, y0);
        out[4 + c] = _mm512_shuffle_f32x4::<0xDD>(x0, y0);
        out[8 + c] = _mm512_shuffle_f32x4::<0x88>(x1, y1);
        out[12 + c] = _mm512_shuffle_f32x4::<0xDD>(x1, y1);
    }
    out
}

/// `pt[k * 32 + j] = p[j * ps + k]`: 16 x 16 blocks through registers, edges element by element.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn transpose_panel(p: &[f32], ps: usize, nb: usize, kc: usize, pt: &mut [f32]) {
    const NP: usize = 2 * L;
    assert!(nb <= NP && pt.len() >= kc * NP && (nb == 0 || p.len() >= (nb - 1) * ps + kc));
    let full_k = kc / L * L;
    for j0 in (0..nb).step_by(L) {
        if j0 + L > nb {
            // a partial block of rows
            for k in 0..kc {
                for j in j0..nb {
                    pt[k * NP + j] = p[j * ps + k];
                }
            }
            continue;
        }
        for k0 in (0..full_k).step_by(L) {
            // SAFETY: rows j0..j0+16 < nb hold columns k0..k0+16 <= kc (asserted); the stores
            // write pt[(k0 + n) * 32 + j0..+16] with k0 + n < kc.
            unsafe {
                let rows: [__m512; 16] = std::array::from_fn(|i| _mm512_loadu_ps(p.as_ptr().add((j0 + i) * ps + k0)));
                for (n, col) in transpose16(rows).iter().enumerate() {
                    _mm512_storeu_ps(pt.as_mut_ptr().add((k0 + n) * NP + j0), *col);
                }
            }
        }
        for k in full_k..kc {
            for j in j0..j0 + L {
                pt[k * NP + j] = p[j * ps + k];
            }
        }
    }
}

simd_isa!(
    Avx512,
    "avx512f,avx512bw,avx512vl,avx2,fma,f16c",
    mr = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
    transpose_panel
);
