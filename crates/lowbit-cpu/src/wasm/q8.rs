//! The int8-activation kernels of the `simd128` level (crate `q8` module docs: layout and the
//! definition they equal bit for bit).
//!
//! A v128 of a packed line holds 4 rows x 4 codes, against 4 activation codes splat to every
//! 32-bit lane. Baseline: 4-bit codes multiplied as i8 (`i16x8_extmul_*_i8x16`, summed in i16
//! over the block), 8-bit codes widened to i16 and multiplied with `i32x4_dot_i16x8` (two rows
//! per product, pairs of columns per lane; the pairs are added at the end of each block).
//! Relaxed build: `i32x4_relaxed_dot_i8x16_i7x16_add` with the activations as the i8 operand and
//! 4-bit codes (0..15), or each nibble of 8-bit codes, as the 7-bit one: one instruction per
//! 4 rows x 4 columns (per nibble). The i32 sums are exact either way.
//!
//! The definition's two fused multiply-adds per lane are computed exactly ([`fma_exact`]).

use crate::isa::Portable;
use crate::q8::{check_gemv_bounds, Acts, PackedInt, Q8Isa, Zp, PANEL, QK};
use core::arch::wasm32::*;

/// The int8 kernels of the `simd128` level (exists in `+simd128` modules only).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Simd128Q8(());

impl Simd128Q8 {
    /// The kernels (always available in a module built with `+simd128`).
    pub(crate) fn new() -> Option<Self> {
        Some(Simd128Q8(()))
    }
}

/// `fma(a, b, c)` for two f64 lanes holding f32 values, rounded to f32 once, as IEEE's fused
/// f32 multiply-add: `a * b` is exact in f64 (24 + 24 bits), the sum is rounded to f64 *to odd*
/// (the TwoSum error decides whether the even result moves one ulp towards the exact sum), and
/// rounding to odd with 29 extra bits before the final round to nearest makes that final
/// rounding correct (Boldo and Melquiond). Finite inputs.
#[inline(always)]
pub(crate) fn fma_exact_f64x2(a: v128, b: v128, c: v128) -> v128 {
    let p = f64x2_mul(a, b);
    let s = f64x2_add(p, c);
    // TwoSum: s + e == p + c exactly.
    let bb = f64x2_sub(s, p);
    let e = f64x2_add(f64x2_sub(p, f64x2_sub(s, bb)), f64x2_sub(c, bb));
    let inexact = f64x2_ne(e, f64x2_splat(0.0));
    let even = i64x2_eq(v128_and(s, i64x2_splat(1)), i64x2_splat(0));
    // +1 ulp (in magnitude) when e has the sign of s, else -1.
    let dir = v128_or(i64x2_shr(v128_xor(e, s), 63), i64x2_splat(1));
    i64x2_add(s, v128_and(dir, v128_and(inexact, even)))
}

/// `fma(a, b, c)` per lane of f32x4, correctly rounded: the f64 sums of the exact products,
/// unless one of them is a case [`super::f64_sum_suspect`] names (rare), then
/// [`fma_exact_f64x2`] on all four lanes.
#[inline(always)]
pub(crate) fn fma_exact(a: v128, b: v128, c: v128) -> v128 {
    let hi = |v: v128| f64x2_promote_low_f32x4(i64x2_shuffle::<1, 1>(v, v));
    let lo_ = |v: v128| f64x2_promote_low_f32x4(v);
    let (al, bl, cl, ah, bh, ch) = (lo_(a), lo_(b), lo_(c), hi(a), hi(b), hi(c));
    let (sl, sh) = (f64x2_add(f64x2_mul(al, bl), cl), f64x2_add(f64x2_mul(ah, bh), ch));
    let suspect = |s: v128| {
        let mid = i64x2_eq(v128_and(s, i64x2_splat(0x1fff_ffff)), i64x2_splat(0x1000_0000));
        let exp = v128_and(u64x2_shr(s, 52), i64x2_splat(0x7ff));
        let odd_range = v128_or(i64x2_lt(exp, i64x2_splat(1023 - 126)), i64x2_eq(exp, i64x2_splat(0x7ff)));
        v128_or(mid, odd_range)
    };
    let (sl, sh) = if v128_any_true(v128_or(suspect(sl), suspect(sh))) {
        (fma_exact_f64x2(al, bl, cl), fma_exact_f64x2(ah, bh, ch))
    } else {
        (sl, sh)
    };
    i64x2_shuffle::<0, 2>(f32x4_demote_f64x2_zero(sl), f32x4_demote_f64x2_zero(sh))
}

/// The four 32-bit activation quads `x[4l..4l + 4]` of a block, each splat to every lane.
#[inline(always)]
fn quad(x: &[i8], l: usize) -> v128 {
    let q = &x[4 * l..4 * l + 4];
    u32x4_splat(u32::from_le_bytes([q[0] as u8, q[1] as u8, q[2] as u8, q[3] as u8]))
}

/// Accumulates `codes (u8) x quad (i8)` of 4 rows: `acc[0]` rows 0-1, `acc[1]` rows 2-3, each
/// lane a pair of columns (exact i32).
#[inline(always)]
fn dot_wide(codes: v128, x16: v128, acc: &mut [v128; 2]) {
    acc[0] = i32x4_add(acc[0], i32x4_dot_i16x8(u16x8_extend_low_u8x16(codes), x16));
    acc[1] = i32x4_add(acc[1], i32x4_dot_i16x8(u16x8_extend_high_u8x16(codes), x16));
}

/// The per-row sums `[r0, r1, r2, r3]` of [`dot_wide`]'s accumulators.
#[inline(always)]
fn rows_of(acc: &[v128; 2]) -> v128 {
    i32x4_add(i32x4_shuffle::<0, 2, 4, 6>(acc[0], acc[1]), i32x4_shuffle::<1, 3, 5, 7>(acc[0], acc[1]))
}

/// The i32 dot products of one block (32 columns) of the 16 rows of a panel with one token's
/// codes `x` (32 values), four rows per vector.
#[inline(always)]
fn block_dots(bits: u32, blk: &[u8], x: &[i8]) -> [v128; 4] {
    assert!(blk.len() >= 64 * bits as usize && x.len() >= QK);
    let bp = blk.as_ptr();
    #[cfg(target_feature = "relaxed-simd")]
    if bits == 4 {
        let mut acc = [i32x4_splat(0); 4];
        let low = u8x16_splat(15);
        for l in 0..4 {
            let (xl, xh) = (quad(x, l), quad(x, l + 4));
            for (g, a) in acc.iter_mut().enumerate() {
                // SAFETY: line l, rows 4g..4g + 4: 16 bytes at 64l + 16g < 256 (asserted).
                let c = unsafe { v128_load(bp.add(l * 64 + 16 * g).cast()) };
                *a = i32x4_relaxed_dot_i8x16_i7x16_add(xl, v128_and(c, low), *a);
                *a = i32x4_relaxed_dot_i8x16_i7x16_add(xh, u8x16_shr(c, 4), *a);
            }
        }
        return acc;
    }
    #[cfg(target_feature = "relaxed-simd")]
    if bits == 8 {
        // 8-bit codes do not fit the 7-bit operand; their nibbles do: c = 16 h + l.
        let (mut lo, mut hi) = ([i32x4_splat(0); 4], [i32x4_splat(0); 4]);
        let low = u8x16_splat(15);
        for l in 0..8 {
            let xq = quad(x, l);
            for g in 0..4 {
                // SAFETY: line l < 8, rows 4g..4g + 4: 16 bytes at 64l + 16g < 512 (asserted).
                let c = unsafe { v128_load(bp.add(l * 64 + 16 * g).cast()) };
                lo[g] = i32x4_relaxed_dot_i8x16_i7x16_add(xq, v128_and(c, low), lo[g]);
                hi[g] = i32x4_relaxed_dot_i8x16_i7x16_add(xq, u8x16_shr(c, 4), hi[g]);
            }
        }
        return std::array::from_fn(|g| i32x4_add(lo[g], i32x4_shl(hi[g], 4)));
    }
    let mut acc = [[i32x4_splat(0); 2]; 4];
    if bits == 4 {
        // 4-bit codes are non-negative i8: i8 x i8 products into i16 lanes, 8 of them summed per
        // lane over the block (at most 8 * 15 * 127 = 15240, no overflow), widened once.
        let low = u8x16_splat(15);
        let mut acc16 = [[i16x8_splat(0); 2]; 4];
        for l in 0..4 {
            let (xl, xh) = (quad(x, l), quad(x, l + 4));
            for (g, a) in acc16.iter_mut().enumerate() {
                // SAFETY: as above.
                let c = unsafe { v128_load(bp.add(l * 64 + 16 * g).cast()) };
                let (cl, ch) = (v128_and(c, low), u8x16_shr(c, 4));
                a[0] = i16x8_add(a[0], i16x8_add(i16x8_extmul_low_i8x16(cl, xl), i16x8_extmul_low_i8x16(ch, xh)));
                a[1] = i16x8_add(a[1], i16x8_add(i16x8_extmul_high_i8x16(cl, xl), i16x8_extmul_high_i8x16(ch, xh)));
            }
        }
        for (a, a16) in acc.iter_mut().zip(&acc16) {
            *a = [i32x4_extadd_pairwise_i16x8(a16[0]), i32x4_extadd_pairwise_i16x8(a16[1])];
        }
    } else {
        for l in 0..8 {
            let xq = i16x8_extend_low_i8x16(quad(x, l));
            for (g, a) in acc.iter_mut().enumerate() {
                // SAFETY: line l < 8, rows 4g..4g + 4: 16 bytes at 64l + 16g < 512 (asserted).
                let c = unsafe { v128_load(bp.add(l * 64 + 16 * g).cast()) };
                dot_wide(c, xq, a);
            }
        }
    }
    acc.map(|a| rows_of(&a))
}

/// The zero points of rows `4g..4g + 4` of group slot `gi` (its first row's index in the packed
/// zeros), as i32 lanes.
#[inline(always)]
fn zeros4(zeros: &Zp, gi: usize, g: usize) -> v128 {
    match zeros {
        Zp::Const(z) => i32x4_splat(i32::from(*z)),
        Zp::PerGroup(z) => {
            let z = &z[gi + 4 * g..gi + 4 * g + 4];
            u32x4(u32::from(z[0]), u32::from(z[1]), u32::from(z[2]), u32::from(z[3]))
        }
    }
}

impl Q8Isa for Simd128Q8 {
    fn quantize_row(self, x: &[f32], codes: &mut [i8], scales: &mut [f32], sums: &mut [i32]) -> bool {
        // Once per token and product group: the portable definition costs little beside the
        // products.
        Portable.quantize_row(x, codes, scales, sums)
    }

    fn gemv(self, w: &PackedInt, p0: usize, p1: usize, a: &Acts, out: &mut [f32], os: usize) {
        check_gemv_bounds(w, p0, p1, a, out, os);
        let (nb, bb) = (w.nblk, w.block_bytes());
        for p in p0..p1 {
            let valid = (w.rows - p * PANEL).min(PANEL);
            for t in 0..a.m() {
                let xq = &a.codes[t * w.cols..(t + 1) * w.cols];
                let mut y = [f32x4_splat(0.0); 4];
                for g in 0..w.gpr {
                    let gi = (p * w.gpr + g) * PANEL;
                    let z: [v128; 4] = std::array::from_fn(|i| zeros4(&w.zeros, gi, i));
                    let mut ga = [f32x4_splat(0.0); 4];
                    for b in g * w.bpg..((g + 1) * w.bpg).min(nb) {
                        let dots = block_dots(w.bits, &w.codes[(p * nb + b) * bb..][..bb], &xq[b * QK..]);
                        let s = i32x4_splat(a.sums[t * nb + b]);
                        let d = f32x4_splat(a.scales[t * nb + b]);
                        for i in 0..4 {
                            let dot = i32x4_sub(dots[i], i32x4_mul(z[i], s));
                            ga[i] = fma_exact(f32x4_convert_i32x4(dot), d, ga[i]);
                        }
                    }
                    let sc = &w.scales[gi..gi + PANEL];
                    for i in 0..4 {
                        let s = f32x4(sc[4 * i], sc[4 * i + 1], sc[4 * i + 2], sc[4 * i + 3]);
                        y[i] = fma_exact(ga[i], s, y[i]);
                    }
                }
                let mut ys = [0f32; PANEL];
                for (i, v) in y.iter().enumerate() {
                    for (l, o) in ys[4 * i..4 * i + 4].iter_mut().enumerate() {
                        *o = match l {
                            0 => f32x4_extract_lane::<0>(*v),
                            1 => f32x4_extract_lane::<1>(*v),
                            2 => f32x4_extract_lane::<2>(*v),
                            _ => f32x4_extract_lane::<3>(*v),
                        };
                    }
                }
                out[t * os + (p - p0) * PANEL..][..valid].copy_from_slice(&ys[..valid]);
            }
        }
    }
}
