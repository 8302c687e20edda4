//! lowbit-core: the specification of lowbit's quantized formats.
//!
//! Everything here is safe, scalar Rust: the quantization schemes ([`scheme`]), the bit packing of
//! codes ([`pack`]), round-to-nearest quantization for integer formats ([`rtn`]) and for the QLoRA
//! codebooks ([`codebook`]), the [`QTensor`] container and its safetensors serialization ([`io`]).
//! The byte layout is documented in `docs/format.md`; the convention used throughout is
//!
//! ```text
//! q = clamp(round(w / scale) + zero, 0, 2^bits - 1),   w ~ (q - zero) * scale
//! ```
//!
//! Fast kernels (crate `lowbit-cpu`) are tested against the scalar code in this crate.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod codebook;
mod error;
pub mod io;
pub mod pack;
mod par;
mod qtensor;
pub mod rtn;
pub mod scheme;

pub use codebook::Absmax;
pub use error::{CoreError, Result};
pub use qtensor::{QParams, QTensor, Scales};
pub use scheme::{Bits, ClipSearch, Codebook, CodebookScheme, Granularity, IntScheme, ScaleDtype, Scheme};

/// Checks that every weight is finite, naming the first offender.
pub fn check_finite(weights: &[f32]) -> Result<()> {
    match weights.iter().position(|w| !w.is_finite()) {
        Some(index) => Err(CoreError::NonFinite { index, value: weights[index] }),
        None => Ok(()),
    }
}
