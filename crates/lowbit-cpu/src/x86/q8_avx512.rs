//! Integer weights x int8 activations with AVX512-VNNI (layout and arithmetic in
//! [`crate::q8`]): one 64-byte line of a panel is 16 rows x 4 columns, `vpdpbusd` multiplies it
//! by 4 activation codes broadcast to every lane, so a panel's 16 outputs accumulate in one
//! register without horizontal sums.
//!
//! Tiles: `NP` panels x `MT` tokens; per panel and token two i32 block accumulators (two
//! independent `vpdpbusd` chains), one f32 group sum and one f32 row sum.

use crate::q8::{Acts, PackedInt, Zp, PANEL, QK};
use crate::scalar::scale_from_absmax_bits;
use std::arch::x86_64::*;

/// The AVX512-VNNI level; a value exists only on CPUs that run it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Vnni512(());

impl Vnni512 {
    /// The level, if this CPU supports it.
    pub(crate) fn new() -> Option<Self> {
        let ok = is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
            && is_x86_feature_detected!("fma");
        ok.then_some(Vnni512(()))
    }
}

super::q8_isa!(Vnni512, quantize_row, gemv);

/// # Safety
/// AVX-512 F/BW; `x` a multiple of 32 long, `codes`, `scales`, `sums` at least as long as needed.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn quantize_row(x: &[f32], codes: &mut [i8], scales: &mut [f32], sums: &mut [i32]) -> bool {
    let abs = _mm512_set1_epi32(0x7fff_ffff);
    let (lo, hi) = (_mm512_set1_epi32(-127), _mm512_set1_epi32(127));
    for b in 0..x.len() / QK {
        // SAFETY: elements 32b..32b+32 lie in `x` and `codes` (caller).
        unsafe {
            let p = x.as_ptr().add(b * QK);
            let (v0, v1) = (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16)));
            let bits = _mm512_max_epu32(
                _mm512_and_si512(_mm512_castps_si512(v0), abs),
                _mm512_and_si512(_mm512_castps_si512(v1), abs),
            );
            let Some(d) = scale_from_absmax_bits(_mm512_reduce_max_epu32(bits)) else { return false };
            let dv = _mm512_set1_ps(d);
            let q = |v: __m512| {
                let r =
                    _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_div_ps(v, dv));
                _mm512_max_epi32(_mm512_min_epi32(r, hi), lo)
            };
            let (q0, q1) = (q(v0), q(v1));
            let c = codes.as_mut_ptr().add(b * QK);
            _mm_storeu_si128(c.cast(), _mm512_cvtepi32_epi8(q0));
            _mm_storeu_si128(c.add(16).cast(), _mm512_cvtepi32_epi8(q1));
            *scales.get_unchecked_mut(b) = d;
            *sums.get_unchecked_mut(b) = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
        }
    }
    true
}

/// One tile: `NP` panels from panel `p`, `MT` tokens from token `t`, of a 4- or 8-bit weight.
///
/// # Safety
/// AVX512-F/BW/VL/VNNI and FMA; the bounds of [`crate::q8::check_gemv_bounds`] hold and the tile lies inside
/// them.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const BITS: u32, const NP: usize, const MT: usize>(
    w: &PackedInt,
    p: usize,
    a: &Acts,
    t: usize,
    out: *mut f32,
    os: usize,
    valid: usize,
) {
    let (nb, bb, cols) = (w.nblk, w.block_bytes(), w.cols);
    let (mask_lo, mask_hi) = (_mm512_set1_epi8(0x0f), _mm512_set1_epi8(0xf0u8 as i8));
    let mut y = [[_mm512_setzero_ps(); NP]; MT];
    // SAFETY: every pointer below stays inside the buffers checked by `check_gemv_bounds`: panels
    // `p..p + NP`, tokens `t..t + MT`, blocks below `nb`, groups below `gpr`.
    unsafe {
        for g in 0..w.gpr {
            let gi = |pp: usize| ((p + pp) * w.gpr + g) * PANEL;
            let z: [__m512i; NP] = std::array::from_fn(|pp| match &w.zeros {
                Zp::Const(z) => _mm512_set1_epi32(i32::from(*z)),
                Zp::PerGroup(zs) => _mm512_cvtepu8_epi32(_mm_loadu_si128(zs.as_ptr().add(gi(pp)).cast())),
            });
            let mut ga = [[_mm512_setzero_ps(); NP]; MT];
            for b in g * w.bpg..((g + 1) * w.bpg).min(nb) {
                // this block's activations of every token, broadcast once for all panels
                let xs: [[__m512i; 8]; MT] = std::array::from_fn(|tt| {
                    let xb = a.codes.as_ptr().add((t + tt) * cols + b * QK);
                    std::array::from_fn(|l| _mm512_set1_epi32(xb.add(4 * l).cast::<i32>().read_unaligned()))
                });
                let ai = |tt: usize| (t + tt) * nb + b;
                let ds: [__m512; MT] = std::array::from_fn(|tt| _mm512_set1_ps(*a.scales.get_unchecked(ai(tt))));
                let ss: [__m512i; MT] =
                    std::array::from_fn(|tt| _mm512_set1_epi32(*a.sums.get_unchecked(ai(tt)) & 0xffff));
                for pp in 0..NP {
                    let wb = w.codes.as_ptr().add(((p + pp) * nb + b) * bb);
                    let line = |l: usize| _mm512_loadu_si512(wb.add(64 * l).cast());
                    let dots: [__m512i; MT] = if BITS == 8 {
                        let lines: [__m512i; 8] = std::array::from_fn(line);
                        std::array::from_fn(|tt| {
                            let x = &xs[tt];
                            let mut s0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lines[0], x[0]);
                            let mut s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lines[1], x[1]);
                            for l in (2..8).step_by(2) {
                                s0 = _mm512_dpbusd_epi32(s0, lines[l], x[l]);
                                s1 = _mm512_dpbusd_epi32(s1, lines[l + 1], x[l + 1]);
                            }
                            _mm512_add_epi32(s0, s1)
                        })
                    } else {
                        // High nibbles stay in place (16x their value): their sum is a multiple
                        // of 16 that an arithmetic shift divides exactly, one shift per block
                        // instead of one per line.
                        let raw: [__m512i; 4] = std::array::from_fn(line);
                        let lo: [__m512i; 4] = std::array::from_fn(|l| _mm512_and_si512(raw[l], mask_lo));
                        let hi: [__m512i; 4] = std::array::from_fn(|l| _mm512_and_si512(raw[l], mask_hi));
                        std::array::from_fn(|tt| {
                            let x = &xs[tt];
                            let mut sl = _mm512_dpbusd_epi32(_mm512_setzero_si512(), lo[0], x[0]);
                            let mut sh = _mm512_dpbusd_epi32(_mm512_setzero_si512(), hi[0], x[4]);
                            for l in 1..4 {
                                sl = _mm512_dpbusd_epi32(sl, lo[l], x[l]);
                                sh = _mm512_dpbusd_epi32(sh, hi[l], x[4 + l]);
                            }
                            _mm512_add_epi32(sl, _mm512_srai_epi32::<4>(sh))
                        })
                    };
                    for (tt, ga) in ga.iter_mut().enumerate() {
                        let corr = _mm512_madd_epi16(z[pp], ss[tt]);
                        let dot = _mm512_sub_epi32(dots[tt], corr);
                        ga[pp] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), ds[tt], ga[pp]);
                    }
                }
            }
            for (yt, gat) in y.iter_mut().zip(&ga) {
                for pp in 0..NP {
                    yt[pp] = _mm512_fmadd_ps(gat[pp], _mm512_loadu_ps(w.scales.as_ptr().add(gi(pp))), yt[pp]);
                }
            }
        }
        for (tt, yt) in y.iter().enumerate() {
            for (pp, &v) in yt.iter().enumerate() {
                let n = valid.saturating_sub(pp * PANEL).min(PANEL);
                if n == 0 {
                    break;
                }
                _mm512_mask_storeu_ps(out.add(tt * os + pp * PANEL), (1u32 << n).wrapping_sub(1) as u16, v);
            }
        }
    }
}

/// Runs tiles of `NP` panels (each over tokens in tiles of `MT`, then singly) while whole groups
/// of `NP` remain before `p1`.
macro_rules! panels {
    ($bits:literal, $w:ident, $p:ident, $p0:ident, $p1:ident, $a:ident, $out:ident, $os:ident, $np:literal, $mt:literal) => {
        while $p1 - $p >= $np {
            let valid = (($p + $np) * PANEL).min($w.rows) - $p * PANEL;
            let mut t = 0;
            let m = $a.m();
            while m - t >= $mt {
                // SAFETY: the tile lies inside the checked buffers.
                unsafe { tile::<$bits, $np, $mt>($w, $p, $a, t, $out.add(t * $os + ($p - $p0) * PANEL), $os, valid) };
                t += $mt;
            }
            while t < m {
                // SAFETY: as above.
                unsafe { tile::<$bits, $np, 1>($w, $p, $a, t, $out.add(t * $os + ($p - $p0) * PANEL), $os, valid) };
                t += 1;
            }
            $p += $np;
        }
    };
}

/// [`crate::q8::Q8Isa::gemv`] at this level for `BITS`-bit weights.
macro_rules! gemv_bits {
    ($bits:literal, $w:ident, $p0:ident, $p1:ident, $a:ident, $out:ident, $os:ident) => {{
        let mut p = $p0;
        if $a.m() == 1 {
            panels!($bits, $w, p, $p0, $p1, $a, $out, $os, 4, 1);
            panels!($bits, $w, p, $p0, $p1, $a, $out, $os, 2, 1);
            panels!($bits, $w, p, $p0, $p1, $a, $out, $os, 1, 1);
        } else {
            panels!($bits, $w, p, $p0, $p1, $a, $out, $os, 2, 2);
            panels!($bits, $w, p, $p0, $p1, $a, $out, $os, 1, 2);
        }
    }};
}

/// # Safety
/// AVX512-F/BW/VL/VNNI and FMA, and the bounds of [`crate::q8::check_gemv_bounds`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,fma")]
unsafe fn gemv(w: &PackedInt, p0: usize, p1: usize, a: &Acts, out: &mut [f32], os: usize) {
    let out = out.as_mut_ptr();
    if w.bits == 8 {
        gemv_bits!(8, w, p0, p1, a, out, os);
    } else {
        gemv_bits!(4, w, p0, p1, a, out, os);
    }
}
