//! W8A8 kernels with AVX512-VNNI: `vpdpbusd` multiplies the 64 unsigned weight codes of one
//! panel line (`u = w + 128`, 16 rows x 4 columns) by four signed activation codes broadcast to
//! every lane and adds each lane's four products to an i32 accumulator: 64 multiply-adds per
//! instruction, one accumulator per 16 outputs, no horizontal sums. The `+128` of the weights
//! comes back out as `128 * Σ x` per token (module docs of [`crate::w8a8`]); the unsigned
//! operand must be the one in a register, so the activations are the signed, broadcast one.
//!
//! Tiles: a matrix-vector product keeps 8 panels (128 rows) in flight, 8 independent
//! accumulators to cover `vpdpbusd`'s latency; a matrix-matrix product runs 2 panels x 12 tokens
//! (24 accumulators, 2 weight registers), each weight line loaded once per 12 tokens.

use super::avx512::tail_mask;
use super::W8a8Tile as Tile;
use crate::scalar::{absmax_bits, scale_from_absmax_bits};
use crate::w8a8::{Acts, Panels, LINE, PANEL_ROWS, QUAD};
use std::arch::x86_64::*;

/// The AVX512-VNNI W8A8 level; a value exists only on CPUs that run it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Vnni512(());

impl Vnni512 {
    /// The level, if this CPU supports it.
    pub(crate) fn new() -> Option<Self> {
        (is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni"))
        .then_some(Vnni512(()))
    }
}

super::w8a8_isa!(Vnni512, i8);

/// Per-token quantization (the arithmetic of [`crate::scalar::quantize_i8`]: a true division,
/// then round-to-nearest-even, then the clamp), 16 lanes at a time.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
unsafe fn quantize_row(x: &[f32], codes: &mut [i8]) -> Option<(f32, i32)> {
    let scale = scale_from_absmax_bits(absmax_bits(x))?;
    let n = x.len();
    let sv = _mm512_set1_ps(scale);
    let (lo, hi) = (_mm512_set1_epi32(-127), _mm512_set1_epi32(127));
    let mut sum = _mm512_setzero_si512();
    let mut k = 0;
    while k < n {
        let mask = tail_mask(n - k);
        // SAFETY: the masked lanes lie below `n <= codes.len()` (asserted by the caller); masked
        // lanes do not fault.
        unsafe {
            let v = _mm512_maskz_loadu_ps(mask, x.as_ptr().add(k));
            let q = _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_div_ps(v, sv));
            let q = _mm512_max_epi32(_mm512_min_epi32(q, hi), lo);
            sum = _mm512_add_epi32(sum, q);
            _mm512_mask_cvtepi32_storeu_epi8(codes.as_mut_ptr().add(k), mask, q);
        }
        k += 16;
    }
    codes[n..].fill(0);
    Some((scale, _mm512_reduce_add_epi32(sum)))
}

/// `NP` panels x `MT` tokens, all columns, then the offset correction and the two scales.
///
/// # Safety
/// AVX512-F/BW/VL/VNNI; the tile's panels, tokens, scales and outputs lie in their buffers.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn tile<const NP: usize, const MT: usize>(t: &Tile<i8>) {
    let mut acc = [[_mm512_setzero_si512(); NP]; MT];
    // SAFETY: the caller guarantees every pointer below addresses its buffer: `kq` lines of each
    // of the `NP` panels, `kp >= 4 * kq` codes of each of the `MT` tokens, `16 * NP` scales
    // (padded), and outputs `i * os + j` for `j < valid`.
    unsafe {
        for q in 0..t.kq {
            let mut wv = [_mm512_setzero_si512(); NP];
            for (p, v) in wv.iter_mut().enumerate() {
                *v = _mm512_loadu_si512(t.w.add(p * t.pstride + q * LINE).cast());
            }
            for (i, acc) in acc.iter_mut().enumerate() {
                let xb = _mm512_set1_epi32(t.a.add(i * t.kp + q * QUAD).cast::<i32>().read_unaligned());
                for (a, &v) in acc.iter_mut().zip(&wv) {
                    *a = _mm512_dpbusd_epi32(*a, v, xb);
                }
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            let corr = _mm512_set1_epi32(t.sums.add(i).read().wrapping_mul(128));
            let sx = _mm512_set1_ps(t.sx.add(i).read());
            for (p, a) in acc.iter().enumerate() {
                let n = t.valid.saturating_sub(p * PANEL_ROWS);
                if n == 0 {
                    break;
                }
                let f = _mm512_cvtepi32_ps(_mm512_sub_epi32(*a, corr));
                let y = _mm512_mul_ps(_mm512_mul_ps(f, sx), _mm512_loadu_ps(t.ws.add(p * PANEL_ROWS)));
                _mm512_mask_storeu_ps(t.out.add(i * t.os + p * PANEL_ROWS), tail_mask(n), y);
            }
        }
    }
}

/// Runs tiles of `NP` panels starting at panel `p` over every token, widest token tiles first.
macro_rules! token_tiles {
    ($at:ident, $p:expr, $m:expr, $np:literal, [$($mt:literal),*]) => {{
        let mut t = 0;
        $(
            while $m - t >= $mt {
                // SAFETY: as for `gemm`: the tile lies inside the checked buffers.
                unsafe { tile::<$np, $mt>(&$at($p, t, $np)) };
                t += $mt;
            }
        )*
    }};
}

/// Runs groups of `NP` panels from `p` while whole groups remain before `p1`.
macro_rules! panel_groups {
    ($at:ident, $p:ident, $p1:expr, $m:expr, $np:literal, $mts:tt) => {
        while $p1 - $p >= $np {
            token_tiles!($at, $p, $m, $np, $mts);
            $p += $np;
        }
    };
}

/// [`crate::w8a8::W8a8Isa::gemm`] at this level.
///
/// # Safety
/// AVX512-F/BW/VL/VNNI, and the bounds of [`crate::w8a8::check_gemm_bounds`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni")]
unsafe fn gemm(w: &Panels, p0: usize, p1: usize, a: &Acts<i8>, out: &mut [f32], os: usize) {
    let m = a.m();
    let at = super::w8a8_tiles(w, p0, a, out, os);
    let mut p = p0;
    match m {
        1 => {
            panel_groups!(at, p, p1, m, 8, [1]);
            panel_groups!(at, p, p1, m, 4, [1]);
            panel_groups!(at, p, p1, m, 2, [1]);
            panel_groups!(at, p, p1, m, 1, [1]);
        }
        2..=3 => {
            panel_groups!(at, p, p1, m, 4, [2, 1]);
            panel_groups!(at, p, p1, m, 1, [2, 1]);
        }
        _ => {
            panel_groups!(at, p, p1, m, 2, [12, 8, 4, 2, 1]);
            panel_groups!(at, p, p1, m, 1, [12, 8, 4, 2, 1]);
        }
    }
}
