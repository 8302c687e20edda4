//! lowbit-core: the specification of lowbit's quantized formats.
//!
//! Everything here is safe, scalar Rust: the quantization schemes ([`scheme`]), the bit packing of
//! codes ([`pack`]), round-to-nearest quantization for integer formats ([`rtn`]), for the QLoRA
//! codebooks ([`codebook`]) and for per-row codebooks ([`rowlut`]), the [`QTensor`] container and
//! its safetensors serialization ([`io`]).
//! The byte layout is documented in `docs/format.md`; the convention used throughout is
//!
//! ```text
//! q = clamp(round(w / scale) + zero, 0, 2^bits - 1),   w ~ (q - zero) * scale
//! ```
//!
//! Fast kernels (crate `lowbit-cpu`) are tested against the scalar code in this crate.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod backend;
pub mod clock;
pub mod codebook;
mod element;
mod error;
pub mod io;
pub mod pack;
pub mod par;
pub mod progress;
mod qtensor;
pub mod rowlut;
pub mod rtn;
pub mod scheme;
pub mod sparse;
pub mod stats;

pub use codebook::Absmax;
pub use element::{check_finite, first_non_finite, Element};
pub use error::{CoreError, Result};
pub use progress::{Cancelled, NoProgress, Progress};
pub use qtensor::{QParams, QTensor, Scales, ZeroPoints};
pub use scheme::{
    Bits, ClipSearch, Codebook, CodebookScheme, Granularity, IntScheme, RowLutScheme, ScaleDtype, Scheme,
};
pub use sparse::{ColumnIndex, SparseOutliers};
pub use stats::QuantStats;

/// Quantizes `weights` (row-major `shape`; f32, f16 or bf16) with any scheme, round to nearest.
pub fn quantize<T: Element>(weights: &[T], shape: &[usize], scheme: Scheme) -> Result<QTensor> {
    match scheme {
        Scheme::Int(s) => rtn::quantize(weights, shape, s),
        Scheme::Codebook(s) => codebook::quantize(weights, shape, s),
        Scheme::RowLut(s) => rowlut::quantize(weights, shape, s),
    }
}
