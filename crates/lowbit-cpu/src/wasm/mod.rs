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
//! with the module's features.

// The x86 levels' generic loops, shared as they are: they use only the `Simd` trait. (They move
// to a shared `src/simd.rs` once the x86 levels stop changing under parallel work.)
#[path = "../x86/simd.rs"]
#[allow(dead_code, unused_macros, unused_imports)]
pub(crate) mod simd;

pub(crate) mod q8;
pub(crate) mod simd128;
