//! wasm32 SIMD128 kernels (the `simd128` level), compiled only into modules built with
//! `-C target-feature=+simd128`: a wasm module has no run-time feature detection (a module with
//! an instruction the engine lacks fails validation as a whole), so the level is chosen when the
//! module is built and the JS side picks the module. With `+relaxed-simd` as well, the same
//! kernels use `f32x4_relaxed_madd` and, for 4-bit codes (0..15 fit its 7-bit operand),
//! `i32x4_relaxed_dot_i8x16_i7x16_add`; that module is a separate build (Safari rejects it).
//!
//! * [`simd128::Simd128`] implements [`crate::isa::Isa`] (f32 activations: dense f32/f16/bf16
//!   rows, integer and NF4/FP4 codes, the GEMM micro-kernel) with four f32 lanes, reusing the
//!   x86 levels' generic loops (`x86/simd.rs`, included below) through their `Simd` trait.
//! * [`q8::Simd128Q8`] implements [`crate::q8::Q8Isa`] (int8 activations, the decode path),
//!   bit for bit equal to the definition: wasm has no fused multiply-add, so the two fused steps
//!   of the definition are computed exactly in f64 lanes with round-to-odd (see `fma_exact`).
//!
//! Attention and the elementwise ops are `leveled!` portable code, which the compiler vectorizes
//! with the module's features; it runs with `FMA = true`, its fused multiply-adds emulated
//! exactly by [`fma_f32`], so a model's logits equal those of the x86 FMA levels bit for bit
//! wherever its products do (the int8-activation ones always do).

// The x86 levels' generic loops, shared as they are: they use only the `Simd` trait. (They move
// to a shared `src/simd.rs` once the x86 levels stop changing under parallel work.)
#[path = "../x86/simd.rs"]
#[allow(dead_code, unused_macros, unused_imports)]
pub(crate) mod simd;

pub(crate) mod q8;
pub(crate) mod simd128;

/// Whether rounding the f64 value with bits `s` to f32 may differ from rounding the exact value
/// it was rounded from: only when it sits exactly halfway between two f32 (low 29 of its 52
/// significand bits `1 << 28`; rounding to nearest f64 is monotonic and such midpoints are f64
/// values, so an inexact sum cannot cross one), or below f32's normal range (where f32 keeps
/// fewer bits), zeros, infinities and NaNs included.
#[inline(always)]
pub(crate) fn f64_sum_suspect(s: u64) -> bool {
    let exp = (s >> 52) & 0x7ff;
    s & 0x1fff_ffff == 0x1000_0000 || exp < 1023 - 126 || exp == 0x7ff
}

/// `a * b + c` rounded once, as a fused multiply-add: the product is exact in f64 (24 + 24
/// bits), so the f64 sum is the only other rounding, and it changes the f32 result only in the
/// rare cases [`f64_sum_suspect`] names, which take [`fma_f32_exact`]. A few f64 operations
/// against a call of libm's `fmaf` for `f32::mul_add`.
#[inline(always)]
pub(crate) fn fma_f32(a: f32, b: f32, c: f32) -> f32 {
    let s = f64::from(a) * f64::from(b) + f64::from(c);
    if f64_sum_suspect(s.to_bits()) {
        fma_f32_exact(a, b, c)
    } else {
        s as f32
    }
}

/// [`fma_f32`] in every case: the sum is rounded to f64 *to odd* (the TwoSum error moves an
/// even, inexact result one ulp towards the exact sum), and rounding to odd with 29 extra bits
/// makes the final rounding to f32 correct (Boldo and Melquiond, 2008). Infinite or NaN sums
/// pass through.
#[inline(never)]
pub(crate) fn fma_f32_exact(a: f32, b: f32, c: f32) -> f32 {
    let p = f64::from(a) * f64::from(b);
    let c = f64::from(c);
    let s = p + c;
    let bb = s - p;
    let e = (p - (s - bb)) + (c - bb);
    let bits = s.to_bits();
    let odd = if e != 0.0 && bits & 1 == 0 && s.is_finite() {
        // sign-magnitude: +1 moves away from zero
        if (e > 0.0) == (s > 0.0) {
            bits + 1
        } else {
            bits - 1
        }
    } else {
        bits
    };
    f64::from_bits(odd) as f32
}

/// Checks [`fma_f32`], [`fma_f32_exact`] and the int8 kernels' vector `fma_exact` (both paths)
/// against libm's `fmaf`
/// (`f32::mul_add`, correct but slow here) on `n` random triples with wide exponents, ties and
/// cancellations among them; the first disagreement, if any. For the browser tests, which cannot
/// run `cargo test`.
#[doc(hidden)]
pub fn check_fma(n: usize) -> Option<(f32, f32, f32)> {
    use core::arch::wasm32::*;
    let mut s = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    for i in 0..n {
        let r = next();
        let f = |r: u64, spread: u32| {
            f32::from_bits((r as u32 & 0x807f_ffff) | ((((r >> 32) as u32) % spread + 127 - spread / 2) << 23))
        };
        let (a, b) = (f(r, 40), f(next(), 40));
        // every fourth c cancels most of a * b, to reach the double-rounding cases
        let c = if i % 4 == 0 { -(a * b) * (1.0 + f32::EPSILON * ((r >> 8) % 7) as f32) } else { f(next(), 80) };
        let want = a.mul_add(b, c);
        let v = q8::fma_exact(f32x4_splat(a), f32x4_splat(b), f32x4_splat(c));
        let (a2, b2, c2) = (f64x2_splat(f64::from(a)), f64x2_splat(f64::from(b)), f64x2_splat(f64::from(c)));
        let slow = f32x4_demote_f64x2_zero(q8::fma_exact_f64x2(a2, b2, c2));
        if fma_f32(a, b, c).to_bits() != want.to_bits()
            || fma_f32_exact(a, b, c).to_bits() != want.to_bits()
            || f32x4_extract_lane::<2>(v).to_bits() != want.to_bits()
            || f32x4_extract_lane::<1>(slow).to_bits() != want.to_bits()
        {
            return Some((a, b, c));
        }
    }
    None
}
