//! lowbit-model: the Llama-family runtime.
//!
//! * [`ModelConfig`]: Hugging Face `config.json` for Llama, Mistral, Qwen2 and Qwen3.
//! * [`Model::load`]: a Hugging Face directory (safetensors, single or sharded, f32/f16/bf16 and
//!   lowbit-quantized tensors, memory-mapped) or a `.gguf` file; [`import_gguf`] converts a GGUF
//!   to a directory.
//! * [`Model::from_bytes`]: the same from memory (a GGUF, or a single-file lowbit model, see
//!   [`bytes`]): the wasm build's loader.
//! * [`Model::forward`] / [`Model::forward_batch`]: prefill and decode with a [`KvCache`]. The
//!   model talks to kernels only through a `lowbit_core::backend::Backend` (`Model<B>`, `Layer<B>`,
//!   `KvCache<B>`); loading builds the CPU one (`lowbit_cpu::Cpu`, the default type parameter),
//!   whose weights are `lowbit_cpu::Linear`s, so quantized weights run packed.
//! * [`Model::generate`]: greedy or sampled decoding with streaming; [`Tokenizer`] with its
//!   chat template.
//! * [`Model::perplexity`]: the project's evaluation protocol.
//! * [`imatrix`]: llama.cpp's importance matrix from the model's activations (for GGUF export).
//! * [`block`]: one decoder block in stages, which the quantization pipeline (crate
//!   `lowbit-quantize`) runs between its solves; [`Model::open_blocks`] streams a checkpoint's
//!   blocks one at a time.
#![deny(unsafe_code)]
#![deny(missing_docs)]

mod awq;
pub mod block;
pub mod bytes;
mod clock;
mod compressed_tensors;
pub mod config;
mod convert;
mod device;
mod error;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod generate;
pub mod gguf;
pub mod gptq;
mod hf_quant;
pub mod imatrix;
mod load;
mod model;
pub mod perplexity;
mod safetensors_source;
mod tensors;
pub mod tokenizer;

// Attention and the elementwise ops are lowbit-cpu's kernels (dispatched by `LOWBIT_KERNELS`).
use lowbit_cpu::ops;

pub use config::{Architecture, Llama3RopeScaling, ModelConfig};
pub use convert::{convert, ggml_type, ConvertFormat, ConvertOptions, ConvertReport, ConvertedTensor};
pub use device::Device;
pub use error::{ModelError, Result};
pub use generate::{BatchPrompt, GenerateOptions, Generation, Rng, StopReason, TokenEvent};
pub use gguf::{export_gguf, import_gguf, GgufExportOptions, GgufFile};
pub use gptq::export_gptq;
pub use hf_quant::{export_hf, HfExport, HfFormat, HfTensorExport};
pub use imatrix::{collect_imatrix, Imatrix};
pub use load::{LastFile, LoadOptions, SaveExtras, StoredSize};
pub use model::{BlockReader, KvCache, Layer, Logits, LogitsMode, Model, LINEAR_NAMES};
pub use perplexity::{PerplexityOptions, PerplexityResult};
pub use tensors::{Tensor, TensorData};
pub use tokenizer::{ChatMessage, Tokenizer};
