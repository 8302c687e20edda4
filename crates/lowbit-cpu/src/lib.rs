//! lowbit-cpu: products of f32 activations with f32, f16, bf16 and lowbit-quantized weights.
//!
//! [`Linear`] owns a weight matrix `W[rows, cols]` (`rows` = out features) in a kernel-ready
//! layout and computes `Y[m, rows] = X[m, cols] · Wᵀ`. The scalar kernels in [`scalar`] are the
//! reference every SIMD path is tested against; [`dispatch`] picks the fastest path the running
//! CPU supports (override with `LOWBIT_KERNELS=scalar|avx2|avx512`); a wasm32 module built with
//! `+simd128` runs the `simd128` level.
//!
//! [`Int8Linear`] is the W8A8 path (SmoothQuant): 8-bit symmetric per-channel weights times
//! activations quantized per token to int8, summed exactly in i32 (`vpdpbusd` with AVX512-VNNI,
//! `vpmaddwd` with AVX2), bit-identical at every level. With an outlier threshold it runs
//! LLM.int8()'s mixed-precision decomposition: input columns holding any `|x| >= t` in the batch
//! go through an f32 product, the rest through the same int8 kernels.
//!
//! **Int8 activations for 4- and 8-bit integer weights** (generation): the activations are
//! quantized once per product in blocks of 32 (one f32 scale each, as llama.cpp's Q8_0) and
//! multiplied with the weight codes in exact i32 sums (`vpdpbusd` with AVX512-VNNI or AVX-VNNI,
//! `vpmaddubsw` with AVX2), the weights repacked at first use into 16-row panels; every level
//! returns [`Linear::forward_int8_reference`]'s outputs bit for bit. `LOWBIT_ACTIVATIONS`
//! chooses ([`Activations`]): `auto` (default) uses them for every product (prefill, decode,
//! batches) at the AVX2 and AVX-512 levels, as llama.cpp does, and f32 activations at the
//! scalar level and in evaluations ([`Cpu`]'s `for_evaluation`: perplexity follows the
//! protocol's f32); `int8` everywhere (e.g. to measure their perplexity cost); `f32` nowhere. `LOWBIT_VNNI=0`
//! keeps the VNNI instructions out (to measure the `vpmaddubsw` kernels on a VNNI CPU).
//!
//! Decode-sized products run on a small persistent pool (crate-private `pool` module) whose
//! workers spin, then yield, then park, so both cores work on every matrix at a wakeup cost
//! far below rayon's; products sharing an input ([`Linear::forward_many`], the backend's
//! `linears`: q/k/v, gate/up) quantize it once and run as one job.
//!
//! [`Cpu`] implements lowbit-core's backend seam (`lowbit_core::backend::Backend`) on these
//! kernels.
//!
//! [`attention`] (causal grouped-query attention over a KV cache) and [`ops`] (RMSNorm, SwiGLU,
//! RoPE, bias, NLL) are the rest of a transformer's forward pass; `LOWBIT_KERNELS` governs them
//! too.

#![deny(missing_docs)]
// `unsafe` lives in the x86 and wasm kernel modules and at the dispatch points that call them, each block
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
mod llm_int8;
pub mod ops;
mod par;
#[allow(unsafe_code)]
mod pool;
mod q8;
pub mod scalar;
mod w8a8;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
#[allow(unsafe_code)]
mod wasm;
mod weight;
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod x86;

pub use backend::Cpu;
pub use dispatch::{kernel_level, KernelLevel};
pub use error::{CpuError, Result};
pub use int8_linear::Int8Linear;
pub use linear::Linear;
pub use llm_int8::OutlierCounts;
pub use pool::{set_thread_spawner, start as start_thread_pool, ThreadSpawner};
pub use q8::{activations, Activations};
pub use w8a8::W8A8_MAX_COLS;
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
pub use wasm::check_fma;
pub use weight::WeightKind;
