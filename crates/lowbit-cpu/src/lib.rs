//! lowbit-cpu: products of f32 activations with f32, f16, bf16 and lowbit-quantized weights.
//!
//! [`Linear`] owns a weight matrix `W[rows, cols]` (`rows` = out features) in a kernel-ready
//! layout and computes `Y[m, rows] = X[m, cols] · Wᵀ`. The scalar kernels in [`scalar`] are the
//! reference every SIMD path is tested against; [`dispatch`] picks the fastest path the running
//! CPU supports (override with `LOWBIT_KERNELS=scalar|avx2|avx512`).
//!
//! [`Int8Linear`] is the W8A8 path (SmoothQuant): 8-bit symmetric per-channel weights times
//! activations quantized per token to int8, summed exactly in i32 (`vpdpbusd` with AVX512-VNNI,
//! `vpmaddwd` with AVX2), bit-identical at every level.
//!
//! [`attention`] (causal grouped-query attention over a KV cache) and [`ops`] (RMSNorm, SwiGLU,
//! RoPE, bias, NLL) are the rest of a transformer's forward pass; `LOWBIT_KERNELS` governs them
//! too.

#![deny(missing_docs)]

pub mod attention;
mod dispatch;
mod driver;
mod error;
mod int8_linear;
mod isa;
mod linear;
pub mod ops;
mod par;
pub mod scalar;
mod w8a8;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use dispatch::{kernel_level, KernelLevel};
pub use error::{CpuError, Result};
pub use int8_linear::Int8Linear;
pub use linear::{Linear, WeightKind};
pub use w8a8::W8A8_MAX_COLS;
