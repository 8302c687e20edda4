//! Header and dimension limits. The reader rejects a file that breaks one with
//! [`GgufError::LimitExceeded`](crate::GgufError::LimitExceeded) before allocating for it, and
//! the writer refuses to produce such a file, so everything lowbit writes it can read back.
//!
//! Every allocation the reader makes is also bounded by the bytes actually left in the input:
//! a count is only trusted as far as the file could hold that many items.

/// Most tensors in one file (the largest public MoE checkpoints hold a few thousand).
pub const MAX_TENSORS: u64 = 1 << 16;
/// Most metadata key-value pairs in one file.
pub const MAX_KV_PAIRS: u64 = 1 << 16;
/// Longest metadata key, in bytes (the GGUF spec caps keys at 65535 bytes).
pub const MAX_KEY_LEN: u64 = 65_535;
/// Longest string value, in bytes (chat templates run to tens of kilobytes).
pub const MAX_STRING_LEN: u64 = 1 << 24;
/// Most elements in one metadata array (vocabularies hold a few hundred thousand tokens).
pub const MAX_ARRAY_LEN: u64 = 1 << 24;
/// Deepest nesting of arrays in arrays.
pub const MAX_ARRAY_DEPTH: u32 = 4;
/// Longest tensor name, in bytes: ggml's `GGML_MAX_NAME` (64) less the terminating NUL.
pub const MAX_TENSOR_NAME_LEN: u64 = 63;
/// Most dimensions of one tensor (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;
/// Most elements in one tensor (2^40, far beyond any model, and no overflow in byte counts).
pub const MAX_TENSOR_ELEMENTS: u64 = 1 << 40;
/// Largest `general.alignment` (a power of two).
pub const MAX_ALIGNMENT: u64 = 1 << 16;
/// The alignment of tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
