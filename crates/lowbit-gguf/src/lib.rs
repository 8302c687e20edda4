//! lowbit-gguf: reading and writing GGUF, and ggml's block formats.
//!
//! * [`GgufFile`] / [`GgufHeader::parse`]: GGUF v2 and v3, memory-mapped or from bytes, with
//!   every count held to the named [`limits`] and every failure a typed [`GgufError`].
//! * [`GgufWriter`]: GGUF v3 with metadata of every value type, tensors aligned to
//!   `general.alignment`, data streamed tensor by tensor, files replaced atomically.
//! * [`blocks`]: one file per ggml block type (`#[repr(C)]`, size checked at compile time),
//!   each with its dequantizer and llama.cpp's reference quantizer (and, for the types llama.cpp
//!   weights by an importance matrix, its weighted one: [`quantize_weighted`]); [`REGISTRY`] maps ggml
//!   type ids to them, and [`quantize`] / [`dequantize`] dispatch through it.
//! * [`repack`]: Q4_0 / Q4_1 / Q8_0 blocks from codes and scales chosen elsewhere (lossless export).
//! * [`llama`]: the llama tensor names and the q/k row permutation of llama.cpp's converter.
//!
//! It depends on no model code: `lowbit-model` loads models through it, and an exporter can
//! write GGUF without the runtime.
//!
//! ```
//! use lowbit_gguf::{dequantize_to_vec, quantize, GgmlType, GgufFile, GgufValue, GgufWriter};
//! let x: Vec<f32> = (0..64).map(|i| (i as f32 * 0.37).sin()).collect();
//! let mut w = GgufWriter::new();
//! w.add_kv("general.name", GgufValue::Str("demo".into()))?;
//! w.add_tensor("t", GgmlType::Q8_0, &[2, 32])?;
//! let mut data = w.begin(Vec::new())?;
//! data.write_tensor("t", &quantize(GgmlType::Q8_0, &x)?)?;
//! let file = GgufFile::from_vec(data.finish()?)?;
//! let (shape, y) = file.dequantize("t")?;
//! assert_eq!(shape, [2, 32]);
//! assert!(x.iter().zip(&y).all(|(a, b)| (a - b).abs() < 0.01));
//! # Ok::<(), lowbit_gguf::GgufError>(())
//! ```
#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod blocks;
mod error;
pub mod limits;
pub mod llama;
mod reader;
pub mod repack;
mod types;
mod value;
mod writer;

pub use error::{GgufError, Result};
pub use reader::{FileBytes, GgufFile, GgufHeader, GgufTensorInfo, MAGIC};
pub use types::{
    dequantize, dequantize_to_vec, quantize, quantize_weighted, DequantizeFn, GgmlType, QuantizeFn, QuantizeWeightedFn,
    TypeTraits, REGISTRY,
};
pub use value::{GgufValue, GgufValueType};
pub use writer::{GgufDataWriter, GgufFileWriter, GgufWriter};
