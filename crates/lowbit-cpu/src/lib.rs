//! lowbit-cpu: products of f32 activations with f32, f16, bf16 and lowbit-quantized weights.
//!
//! [`Linear`] owns a weight matrix `W[rows, cols]` (`rows` = out features) in a kernel-ready
//! layout and computes `Y[m, rows] = X[m, cols] · Wᵀ`. The scalar kernels in [`scalar`] are the
//! reference every SIMD path is tested against; [`dispatch`] picks the fastest path the running
//! CPU supports (override with `LOWBIT_KERNELS=scalar|avx2|avx512`).

#![deny(missing_docs)]

mod dispatch;
mod driver;
mod error;
mod isa;
mod linear;
pub mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86;

pub use dispatch::{kernel_level, KernelLevel};
pub use error::{CpuError, Result};
pub use linear::{Linear, WeightKind};
