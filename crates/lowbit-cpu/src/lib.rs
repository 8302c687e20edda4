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
//! [`Cpu`] implements lowbit-core's backend seam (`lowbit_core::backend::Backend`) on these
//! kernels.
//!
//! [`attention`] (causal grouped-query attention over a KV cache) and [`ops`] (RMSNorm, SwiGLU,
//! RoPE, bias, NLL) are the rest of a transformer's forward pass; `LOWBIT_KERNELS` governs them
//! too.

#![deny(missing_docs)]
// `unsafe` lives in the x86 kernel modules and at the dispatch points that call them, each block
// with a `// SAFETY:` comment saying why it holds.
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod attention;
mod backend;
mod dispatch;
mod driver;
mod error;
mod int8_linear;
mod isa;
mod linear;
pub mod ops;
mod par;
#[allow(unsafe_code)]
mod pool;
mod q8;
pub mod scalar;
mod w8a8;
mod weight;
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod x86;

pub use backend::Cpu;
pub use dispatch::{kernel_level, KernelLevel};
pub use error::{CpuError, Result};
pub use int8_linear::Int8Linear;
pub use linear::Linear;
pub use q8::{activations, Activations};
pub use w8a8::W8A8_MAX_COLS;
pub use weight::WeightKind;
