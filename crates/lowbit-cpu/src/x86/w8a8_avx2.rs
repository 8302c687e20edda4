//! W8A8 kernels with AVX2 (no VNNI): exact 16-bit multiplies.
//!
//! `vpmaddubsw` (u8 x s8) would add two products into a saturating i16, and with the unsigned
//! weight codes (`u = w + 128` up to 255) and activations up to 127 a pair reaches 64770, past
//! i16. Instead each 16-byte quarter of a panel line (4 rows x 4 columns) is zero-extended to
//! 16 i16 (`vpmovzxbw`) and multiplied by the token's four activation codes, stored as i16 and
//! broadcast (`vpbroadcastq`), with `vpmaddwd`: the i16 x i16 products (at most 255 * 127) are
//! summed in pairs into exact i32 lanes (row `i`, columns 0-1 and 2-3), added to i32
//! accumulators and reduced pairwise once per tile (`vphaddd`). The `+128` comes back out as
//! `128 * Σ x` per token (module docs of [`crate::w8a8`]). This level also serves AVX-512 CPUs
//! without VNNI.
//!
//! Tiles: one panel (4 accumulators per token, 4 widened weight registers) x 2 tokens.

use super::W8a8Tile as Tile;
use crate::scalar::{absmax_bits, scale_from_absmax_bits};
use crate::w8a8::{Acts, Panels, LINE, QUAD};
use std::arch::x86_64::*;

/// The AVX2 W8A8 level; a value exists only on CPUs that run it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2I8(());

impl Avx2I8 {
    /// The level, if this CPU supports it.
    pub(crate) fn new() -> Option<Self> {
        is_x86_feature_detected!("avx2").then_some(Avx2I8(()))
    }
}

/// f32 lanes per vector.
const L: usize = 8;

super::w8a8_isa!(Avx2I8, i16);

/// Quantizes 8 values (the arithmetic of [`crate::scalar::quantize_i8`]: a true division, then
/// round-to-nearest-even, then the clamp) to i32 lanes.
#[inline(always)]
fn quantize8(v: __m256, sv: __m256) -> __m256i {
    // SAFETY: only inlined into functions compiled with AVX2.
    unsafe {
        let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_div_ps(v, sv));
        let q = _mm256_cvttps_epi32(r);
        _mm256_max_epi32(_mm256_min_epi32(q, _mm256_set1_epi32(127)), _mm256_set1_epi32(-127))
    }
}

#[inline(always)]
fn hsum_epi32(v: __m256i) -> i32 {
    // SAFETY: only inlined into functions compiled with AVX2.
    unsafe {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
        _mm_cvtsi128_si32(s)
    }
}

#[target_feature(enable = "avx2")]
unsafe fn quantize_row(x: &[f32], codes: &mut [i16]) -> Option<(f32, i32)> {
    let scale = scale_from_absmax_bits(absmax_bits(x))?;
    let n = x.len();
    let sv = _mm256_set1_ps(scale);
    let mut sum = _mm256_setzero_si256();
    let mut k = 0;
    while k + L <= n {
        // SAFETY: elements k..k+8 lie in `x` and in `codes` (n <= codes.len(), asserted by the
        // caller).
        unsafe {
            let q = quantize8(_mm256_loadu_ps(x.as_ptr().add(k)), sv);
            sum = _mm256_add_epi32(sum, q);
            let q16 = _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256::<1>(q));
            _mm_storeu_si128(codes.as_mut_ptr().add(k).cast(), q16);
        }
        k += L;
    }
    if k < n {
        let mut buf = [0f32; L];
        buf[..n - k].copy_from_slice(&x[k..]);
        // SAFETY: `buf` holds 8 f32 and `tmp` 8 i16.
        unsafe {
            let q = quantize8(_mm256_loadu_ps(buf.as_ptr()), sv);
            sum = _mm256_add_epi32(sum, q);
            let mut tmp = [0i16; L];
            _mm_storeu_si128(
                tmp.as_mut_ptr().cast(),
                _mm_packs_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256::<1>(q)),
            );
            codes[k..n].copy_from_slice(&tmp[..n - k]);
        }
    }
    codes[n..].fill(0);
    Some((scale, hsum_epi32(sum)))
}

/// One panel x `MT` tokens, all columns, then the pairwise reduction, the offset correction and
/// the two scales.
///
/// # Safety
/// AVX2; the tile's panel, tokens, scales and outputs lie in their buffers.
#[target_feature(enable = "avx2")]
unsafe fn tile<const MT: usize>(t: &Tile<i16>) {
    let mut acc = [[_mm256_setzero_si256(); 4]; MT];
    // SAFETY: the caller guarantees every pointer below addresses its buffer: `kq` lines of the
    // panel, `kp >= 4 * kq` codes of each of the `MT` tokens, 16 scales (padded), and outputs
    // `i * os + j` for `j < valid`.
    unsafe {
        for q in 0..t.kq {
            let line = t.w.add(q * LINE);
            let wv: [__m256i; 4] =
                std::array::from_fn(|j| _mm256_cvtepu8_epi16(_mm_loadu_si128(line.add(16 * j).cast())));
            for (i, acc) in acc.iter_mut().enumerate() {
                let xb = _mm256_set1_epi64x(t.a.add(i * t.kp + q * QUAD).cast::<i64>().read_unaligned());
                for (a, &v) in acc.iter_mut().zip(&wv) {
                    *a = _mm256_add_epi32(*a, _mm256_madd_epi16(v, xb));
                }
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            let corr = _mm256_set1_epi32(t.sums.add(i).read().wrapping_mul(128));
            let sx = _mm256_set1_ps(t.sx.add(i).read());
            for half in 0..2 {
                let n = t.valid.saturating_sub(half * L).min(L);
                if n == 0 {
                    break;
                }
                // lanes of acc[j]: row 4j + l/2, columns 0-1 (l even) or 2-3 (l odd); hadd gives
                // rows [0, 1, 4, 5 | 2, 3, 6, 7] of the half, the 64-bit permute puts them in order
                let h = _mm256_hadd_epi32(acc[2 * half], acc[2 * half + 1]);
                let h = _mm256_permute4x64_epi64::<0b11_01_10_00>(h);
                let f = _mm256_cvtepi32_ps(_mm256_sub_epi32(h, corr));
                let y = _mm256_mul_ps(_mm256_mul_ps(f, sx), _mm256_loadu_ps(t.ws.add(half * L)));
                let dst = t.out.add(i * t.os + half * L);
                if n == L {
                    _mm256_storeu_ps(dst, y);
                } else {
                    super::avx2::store_partial(dst, n, y);
                }
            }
        }
    }
}

/// [`crate::w8a8::W8a8Isa::gemm`] at this level: panels outer (a panel stays in L1 across all tokens), token
/// pairs inner.
///
/// # Safety
/// AVX2, and the bounds of [`crate::w8a8::check_gemm_bounds`].
#[target_feature(enable = "avx2")]
unsafe fn gemm(w: &Panels, p0: usize, p1: usize, a: &Acts<i16>, out: &mut [f32], os: usize) {
    let m = a.m();
    let at = super::w8a8_tiles(w, p0, a, out, os);
    for p in p0..p1 {
        let mut t = 0;
        while t + 2 <= m {
            // SAFETY: the tile lies inside the checked buffers.
            unsafe { tile::<2>(&at(p, t, 1)) };
            t += 2;
        }
        if t < m {
            // SAFETY: as above.
            unsafe { tile::<1>(&at(p, t, 1)) };
        }
    }
}
