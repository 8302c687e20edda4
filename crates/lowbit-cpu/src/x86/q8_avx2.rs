//! Integer weights x int8 activations with 256-bit vectors (layout and arithmetic in
//! [`crate::q8`]): each 64-byte panel line is read as two halves of 8 rows x 4 columns, a
//! "unit" of 8 outputs in one register.
//!
//! Two levels share the code: [`AvxVnni`] multiplies with the VEX `vpdpbusd` of AVX-VNNI; [`Avx2`]
//! with `vpmaddubsw` + `vpmaddwd`. For 4-bit codes `vpmaddubsw`'s i16 pair sums are at most
//! `2 * 15 * 127 = 3810`, so the eight of a block are added in i16 (at most 30480) before one
//! `vpmaddwd`; 8-bit codes are taken as `v = c - 128` and multiplied as `|v| * sign(q, v)`
//! (pairs at most `2 * 128 * 127 = 32512`), and `128 * s[b]` comes back through the zero point.
//!
//! Tiles: `NU` units x `MT` tokens.

use super::avx2::store_partial;
use crate::q8::{Acts, PackedInt, Zp, PANEL, QK};
use crate::scalar::scale_from_absmax_bits;
use std::arch::x86_64::*;

/// Rows per unit (f32 lanes of a 256-bit vector).
const U: usize = 8;

/// The AVX2 level (`vpmaddubsw`); a value exists only on CPUs that run it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Avx2(());

impl Avx2 {
    /// The level, if this CPU supports it.
    pub(crate) fn new() -> Option<Self> {
        (is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")).then_some(Avx2(()))
    }
}

/// The AVX-VNNI level (256-bit `vpdpbusd`); a value exists only on CPUs that run it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AvxVnni(());

impl AvxVnni {
    /// The level, if this CPU supports it.
    pub(crate) fn new() -> Option<Self> {
        (Avx2::new().is_some() && is_x86_feature_detected!("avxvnni")).then_some(AvxVnni(()))
    }
}

super::q8_isa!(Avx2, quantize_row_avx2, gemv_avx2);
super::q8_isa!(AvxVnni, quantize_row_avx2, gemv_vnni);

/// # Safety
/// AVX2; `x` a multiple of 32 long, `codes`, `scales`, `sums` long enough
/// ([`crate::q8::check_quantize_bounds`]).
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_row_avx2(x: &[f32], codes: &mut [i8], scales: &mut [f32], sums: &mut [i32]) -> bool {
    let abs = _mm256_set1_epi32(0x7fff_ffff);
    let (lo, hi) = (_mm256_set1_epi32(-127), _mm256_set1_epi32(127));
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for b in 0..x.len() / QK {
        // SAFETY: elements 32b..32b+32 lie in `x` and `codes` (caller).
        unsafe {
            let p = x.as_ptr().add(b * QK);
            let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(p.add(8 * i)));
            let bits: [__m256i; 4] = std::array::from_fn(|i| _mm256_and_si256(_mm256_castps_si256(v[i]), abs));
            let m = _mm256_max_epu32(_mm256_max_epu32(bits[0], bits[1]), _mm256_max_epu32(bits[2], bits[3]));
            let m = _mm_max_epu32(_mm256_castsi256_si128(m), _mm256_extracti128_si256::<1>(m));
            let m = _mm_max_epu32(m, _mm_shuffle_epi32::<0b01_00_11_10>(m));
            let m = _mm_max_epu32(m, _mm_shuffle_epi32::<0b10_11_00_01>(m));
            let Some(d) = scale_from_absmax_bits(_mm_cvtsi128_si32(m) as u32) else { return false };
            let dv = _mm256_set1_ps(d);
            let q: [__m256i; 4] = std::array::from_fn(|i| {
                let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_div_ps(v[i], dv));
                _mm256_max_epi32(_mm256_min_epi32(_mm256_cvttps_epi32(r), hi), lo)
            });
            let bytes = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
            _mm256_storeu_si256(codes.as_mut_ptr().add(b * QK).cast(), _mm256_permutevar8x32_epi32(bytes, order));
            let s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
            let s = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256::<1>(s));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
            let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s));
            *scales.get_unchecked_mut(b) = d;
            *sums.get_unchecked_mut(b) = _mm_cvtsi128_si32(s);
        }
    }
    true
}

/// `Σ` over one block of one unit (8 rows) against one token: the exact i32 sums
/// `Σ c * q` (`Σ (c - 128) * q` for 8-bit codes without VNNI).
///
/// # Safety
/// AVX2 (+ AVX-VNNI when `VNNI`) in the caller; `wb` points at the unit's first line half
/// (lines 64 bytes apart), `xb` at the block's 32 activation codes.
#[inline(always)]
unsafe fn block_dot<const VNNI: bool, const BITS: u32>(lines: &[__m256i; 8], xb: *const i8) -> __m256i {
    // SAFETY: `xb` addresses 32 codes (caller); only AVX2/AVX-VNNI instructions the caller enables.
    unsafe {
        let x = |l: usize| _mm256_set1_epi32(xb.add(4 * l).cast::<i32>().read_unaligned());
        if VNNI {
            let mut s0 = _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), lines[0], x(0));
            let mut s1 = _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), lines[1], x(1));
            for l in (2..8).step_by(2) {
                s0 = _mm256_dpbusd_avx_epi32(s0, lines[l], x(l));
                s1 = _mm256_dpbusd_avx_epi32(s1, lines[l + 1], x(l + 1));
            }
            _mm256_add_epi32(s0, s1)
        } else if BITS == 4 {
            let mut s = _mm256_maddubs_epi16(lines[0], x(0));
            for (l, &line) in lines.iter().enumerate().skip(1) {
                s = _mm256_add_epi16(s, _mm256_maddubs_epi16(line, x(l)));
            }
            _mm256_madd_epi16(s, _mm256_set1_epi16(1))
        } else {
            let ones = _mm256_set1_epi16(1);
            let prod = |l: usize| {
                let v = lines[l];
                _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(v), _mm256_sign_epi8(x(l), v)), ones)
            };
            let mut s0 = prod(0);
            let mut s1 = prod(1);
            for l in (2..8).step_by(2) {
                s0 = _mm256_add_epi32(s0, prod(l));
                s1 = _mm256_add_epi32(s1, prod(l + 1));
            }
            _mm256_add_epi32(s0, s1)
        }
    }
}

/// One tile: `NU` units from unit `u` (unit `u` = rows `8u..8u + 8`), `MT` tokens from `t`.
///
/// # Safety
/// AVX2 + FMA (+ AVX-VNNI when `VNNI`) in the caller; the bounds of [`crate::q8::check_gemv_bounds`] hold
/// and the tile lies inside them.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const VNNI: bool, const BITS: u32, const NU: usize, const MT: usize>(
    w: &PackedInt,
    u: usize,
    a: &Acts,
    t: usize,
    out: *mut f32,
    os: usize,
    valid: usize,
) {
    let (nb, bb, cols) = (w.nblk, w.block_bytes(), w.cols);
    // `vpmaddubsw` takes 8-bit codes as `c - 128`; the zero point absorbs the 128.
    let z_shift = if !VNNI && BITS == 8 { 128 } else { 0 };
    // the unit's offset (rows, bytes of a line) inside its panel, and its panel
    let half = |uu: usize| (u + uu) % 2 * U;
    let panel = |uu: usize| (u + uu) / 2;
    // SAFETY: every pointer below stays inside the buffers checked by `check_gemv_bounds`: units
    // `u..u + NU` of valid panels, tokens `t..t + MT`, blocks below `nb`, groups below `gpr`; the
    // caller enables the instructions.
    unsafe {
        let mask4 = _mm256_set1_epi8(0x0f);
        let flip = _mm256_set1_epi8(-128);
        let mut y = [[_mm256_setzero_ps(); NU]; MT];
        for g in 0..w.gpr {
            let gi = |uu: usize| (panel(uu) * w.gpr + g) * PANEL + half(uu);
            let z: [__m256i; NU] = std::array::from_fn(|uu| match &w.zeros {
                Zp::Const(z) => _mm256_set1_epi32(i32::from(*z) - z_shift),
                Zp::PerGroup(zs) => _mm256_sub_epi32(
                    _mm256_cvtepu8_epi32(_mm_loadl_epi64(zs.as_ptr().add(gi(uu)).cast())),
                    _mm256_set1_epi32(z_shift),
                ),
            });
            let mut ga = [[_mm256_setzero_ps(); NU]; MT];
            for b in g * w.bpg..((g + 1) * w.bpg).min(nb) {
                for uu in 0..NU {
                    let wb = w.codes.as_ptr().add((panel(uu) * nb + b) * bb + 4 * half(uu));
                    let lines: [__m256i; 8] = if BITS == 8 {
                        std::array::from_fn(|l| {
                            let v = _mm256_loadu_si256(wb.add(64 * l).cast());
                            if VNNI {
                                v
                            } else {
                                _mm256_xor_si256(v, flip)
                            }
                        })
                    } else {
                        let raw: [__m256i; 4] = std::array::from_fn(|l| _mm256_loadu_si256(wb.add(64 * l).cast()));
                        std::array::from_fn(|l| {
                            if l < 4 {
                                _mm256_and_si256(raw[l], mask4)
                            } else {
                                _mm256_and_si256(_mm256_srli_epi16::<4>(raw[l - 4]), mask4)
                            }
                        })
                    };
                    for (tt, ga) in ga.iter_mut().enumerate() {
                        let dot = block_dot::<VNNI, BITS>(&lines, a.codes.as_ptr().add((t + tt) * cols + b * QK));
                        let ai = (t + tt) * nb + b;
                        let (d, s) = (*a.scales.get_unchecked(ai), *a.sums.get_unchecked(ai));
                        let corr = _mm256_madd_epi16(z[uu], _mm256_set1_epi32(s & 0xffff));
                        let dot = _mm256_sub_epi32(dot, corr);
                        ga[uu] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), _mm256_set1_ps(d), ga[uu]);
                    }
                }
            }
            for (yt, gat) in y.iter_mut().zip(&ga) {
                for uu in 0..NU {
                    yt[uu] = _mm256_fmadd_ps(gat[uu], _mm256_loadu_ps(w.scales.as_ptr().add(gi(uu))), yt[uu]);
                }
            }
        }
        for (tt, yt) in y.iter().enumerate() {
            for (uu, &v) in yt.iter().enumerate() {
                let n = valid.saturating_sub(uu * U).min(U);
                if n == 0 {
                    break;
                }
                let dst = out.add(tt * os + uu * U);
                if n == U {
                    _mm256_storeu_ps(dst, v);
                } else {
                    store_partial(dst, n, v);
                }
            }
        }
    }
}

/// Runs tiles of `NU` units (over tokens in tiles of `MT`, then singly) while whole groups of
/// `NU` units with a valid row remain before unit `u1`.
macro_rules! units {
    ($vnni:literal, $bits:literal, $w:ident, $u:ident, $u0:ident, $u1:ident, $a:ident, $out:ident, $os:ident,
     $nu:literal, $mt:literal) => {
        while $u1 - $u >= $nu {
            let valid = (($u + $nu) * U).min($w.rows).saturating_sub($u * U);
            let m = $a.m();
            let mut t = 0;
            while m - t >= $mt {
                // SAFETY: the tile lies inside the checked buffers.
                unsafe {
                    tile::<$vnni, $bits, $nu, $mt>($w, $u, $a, t, $out.add(t * $os + ($u - $u0) * U), $os, valid)
                };
                t += $mt;
            }
            while t < m {
                // SAFETY: as above.
                unsafe { tile::<$vnni, $bits, $nu, 1>($w, $u, $a, t, $out.add(t * $os + ($u - $u0) * U), $os, valid) };
                t += 1;
            }
            $u += $nu;
        }
    };
}

/// [`crate::q8::Q8Isa::gemv`] for `BITS`-bit weights, over units rather than panels: units past the last
/// valid row are skipped.
macro_rules! gemv_bits {
    ($vnni:literal, $bits:literal, $w:ident, $p0:ident, $p1:ident, $a:ident, $out:ident, $os:ident) => {{
        let u0 = 2 * $p0;
        let u1 = (2 * $p1).min($w.rows.div_ceil(U));
        let mut u = u0;
        if $a.m() == 1 {
            units!($vnni, $bits, $w, u, u0, u1, $a, $out, $os, 4, 1);
            units!($vnni, $bits, $w, u, u0, u1, $a, $out, $os, 1, 1);
        } else {
            units!($vnni, $bits, $w, u, u0, u1, $a, $out, $os, 2, 3);
            units!($vnni, $bits, $w, u, u0, u1, $a, $out, $os, 1, 3);
        }
    }};
}

/// [`crate::q8::Q8Isa::gemv`] with or without VNNI: [`gemv_bits`] for the weight's bits.
macro_rules! gemv {
    ($vnni:literal, $w:ident, $p0:ident, $p1:ident, $a:ident, $out:ident, $os:ident) => {{
        let out = $out.as_mut_ptr();
        if $w.bits == 8 {
            gemv_bits!($vnni, 8, $w, $p0, $p1, $a, out, $os);
        } else {
            gemv_bits!($vnni, 4, $w, $p0, $p1, $a, out, $os);
        }
    }};
}

/// # Safety
/// AVX2 + FMA, and the bounds of [`crate::q8::check_gemv_bounds`].
#[target_feature(enable = "avx2,fma")]
unsafe fn gemv_avx2(w: &PackedInt, p0: usize, p1: usize, a: &Acts, out: &mut [f32], os: usize) {
    gemv!(false, w, p0, p1, a, out, os)
}

/// # Safety
/// AVX2 + FMA + AVX-VNNI, and the bounds of [`crate::q8::check_gemv_bounds`].
#[target_feature(enable = "avx2,fma,avxvnni")]
unsafe fn gemv_vnni(w: &PackedInt, p0: usize, p1: usize, a: &Acts, out: &mut [f32], os: usize) {
    gemv!(true, w, p0, p1, a, out, os)
}
