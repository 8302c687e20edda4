//! lowbit's CUDA backend: [`Cuda`] implements lowbit-core's
//! [`Backend`](lowbit_core::backend::Backend), so `lowbit_model::Model<Cuda>` runs a whole
//! Llama-family decoder on an NVIDIA GPU with no model code of its own.
//!
//! - **No CUDA at build time.** With the `cuda` feature, cudarc loads `libcuda` and `libnvrtc`
//!   when [`Cuda::new`] runs; the kernels (`src/kernels.cu`) are CUDA C compiled by NVRTC for the
//!   device's compute capability, once per device per process. Without the feature, or without a
//!   driver, the same API returns [`CudaError::Unavailable`]: callers need no `#[cfg]`.
//! - **Weights are uploaded once** ([`layout`]): INT4 and INT8 (any group size that is a multiple
//!   of the 16-byte chunk, symmetric or not, f16 or f32 scales), f16, bf16 and f32 kernels; other
//!   lowbit formats (2/3-bit, NF4/FP4, odd group sizes) are dequantized to f32 at load.
//! - **Kernels**: GEMV for decode (one 128-bit load per lane, coalesced rows), a tiled f32 GEMM
//!   for prefill, RMSNorm, RoPE, causal GQA attention over the device KV cache (one block per
//!   query and head, warps splitting the keys with an online softmax), SwiGLU, residual and bias
//!   adds, embedding lookup and argmax.
//! - **Errors inside infallible ops.** The `Backend` trait's elementwise ops return nothing, so
//!   a failed launch there is kept and returned by the next fallible call (a product, a download).
//!
//! Known gaps: the GEMM uses FP32 FMA, not tensor cores (`mma.sync`); the model's generation and
//! perplexity download logits every step (the `Backend` trait has no device-side sampling yet;
//! [`Cuda::argmax`] is ready for it); GPTQ on the GPU is not here.
//!
//! `unsafe` (kernel launches, raw device copies) lives only in the device module, each block
//! with a `// SAFETY:` comment.
#![deny(unsafe_code)]
#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod error;
pub mod layout;
mod view;

/// The parts of `Backend for Cuda` the device build and the stub share: the associated types,
/// the name and `join`.
macro_rules! backend_types {
    () => {
        type Error = CudaError;
        type Buffer = CudaBuffer;
        type View<'a> = CuView<'a>;
        type ViewMut<'a> = CuViewMut<'a>;
        type Linear = CudaLinear;

        fn name(&self) -> &'static str {
            "cuda"
        }
        // `join` keeps the trait's default: one in-order stream runs both in order.
    };
}
pub(crate) use backend_types;

#[cfg(feature = "cuda")]
mod device;
#[cfg(not(feature = "cuda"))]
#[path = "stub.rs"]
mod device;

pub use device::{compile_kernels, Cuda, CudaBuffer, CudaLinear};
pub use error::CudaError;
pub use view::{CuView, CuViewMut};

/// The INT4 (f16 parameters) GEMV variants: `rR` weight rows per warp, `uU` chunks per lane per
/// step. The benchmark times them all; the backend uses [`DEFAULT_W4_VARIANT`].
pub const W4_GEMV_VARIANTS: &[&str] = &["r1u1", "r2u1", "r4u1", "r8u1", "r1u4", "r2u2", "r4u2"];
/// The INT4 GEMV variant `Backend::linear` uses unless `LOWBIT_CUDA_W4_VARIANT` names another.
pub const DEFAULT_W4_VARIANT: &str = "r4u1";

use lowbit_model::{Device, LoadOptions, Model, ModelError};

/// Loads the model at `path` on the host, then uploads every weight once to CUDA device
/// `ordinal`.
pub fn load_model(path: impl AsRef<std::path::Path>, ordinal: usize) -> Result<Model<Cuda>, ModelError> {
    let backend = Cuda::new(ordinal)
        .map_err(|e| ModelError::DeviceUnavailable { device: format!("cuda:{ordinal}"), reason: e.to_string() })?;
    let host = Model::load_with(path, &LoadOptions::default())?;
    host.to_backend(backend, Device::Cuda(ordinal))
}
