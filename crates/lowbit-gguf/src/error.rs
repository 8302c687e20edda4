//! The single error type of lowbit-gguf.

use crate::GgmlType;
use thiserror::Error;

/// Result type of lowbit-gguf.
pub type Result<T, E = GgufError> = std::result::Result<T, E>;

/// Everything that can go wrong reading, writing or (de)quantizing GGUF. Parse errors name the
/// byte offset where the file stops making sense; the reader never panics on a malformed file.
#[derive(Debug, Error)]
pub enum GgufError {
    /// Reading or writing a file failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The first four bytes are not `GGUF`.
    #[error("not a GGUF file (bad magic {found:02x?})")]
    BadMagic {
        /// The bytes found instead.
        found: Vec<u8>,
    },
    /// A GGUF version this crate does not read.
    #[error("GGUF version {version} (lowbit reads 2 and 3)")]
    UnsupportedVersion {
        /// The version in the header.
        version: u32,
    },
    /// The file ends in the middle of a field.
    #[error("at byte {offset}: file ends while reading {what} ({needed} bytes needed, {left} left)")]
    Truncated {
        /// Where the field starts.
        offset: usize,
        /// The field.
        what: String,
        /// Its size.
        needed: u64,
        /// Bytes left in the file.
        left: usize,
    },
    /// A count or length beyond one of the limits in [`crate::limits`].
    #[error("at byte {offset}: {what} = {value} exceeds the limit {limit}")]
    LimitExceeded {
        /// Where the field is (0 for the writer).
        offset: usize,
        /// The field.
        what: String,
        /// The value found.
        value: u64,
        /// The limit it breaks.
        limit: u64,
    },
    /// A malformed field: bad UTF-8, a boolean that is neither 0 nor 1, an unknown value type,
    /// a duplicate key or name, an impossible alignment.
    #[error("at byte {offset}: {reason}")]
    Malformed {
        /// Where the field is.
        offset: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// A tensor of a ggml type this crate does not know.
    #[error("tensor {name} has ggml type {id}, which lowbit does not read")]
    UnknownTensorType {
        /// The tensor.
        name: String,
        /// The ggml type id.
        id: u32,
    },
    /// Tensor dimensions that do not describe whole blocks or are too large.
    #[error("tensor {name}: dims {dims:?} ({reason})")]
    BadDims {
        /// The tensor.
        name: String,
        /// The dims, innermost first.
        dims: Vec<u64>,
        /// What is wrong.
        reason: String,
    },
    /// Tensor data that lies outside the file, overlaps another tensor or is misaligned.
    #[error("tensor {name}: {nbytes} bytes at data offset {offset}: {reason}")]
    BadTensorData {
        /// The tensor.
        name: String,
        /// Offset relative to the data section.
        offset: u64,
        /// Byte length.
        nbytes: u64,
        /// What is wrong.
        reason: String,
    },
    /// A tensor that is not in the file (or not declared to the writer).
    #[error("no tensor named {name}")]
    MissingTensor {
        /// The name asked for.
        name: String,
    },
    /// A metadata value that is missing or of the wrong type.
    #[error("metadata {key}: {reason}")]
    Metadata {
        /// The key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// A buffer whose length does not match the element or byte count of the operation.
    #[error("{op}: expected {expected} {unit}, got {got}")]
    Length {
        /// The operation.
        op: &'static str,
        /// What is counted.
        unit: &'static str,
        /// The length needed.
        expected: usize,
        /// The length given.
        got: usize,
    },
    /// An element count that is not a whole number of blocks of the type.
    #[error("{ty:?}: {n} elements is not a whole number of {block_len}-element blocks")]
    NotWholeBlocks {
        /// The type.
        ty: GgmlType,
        /// The element count.
        n: usize,
        /// Elements per block.
        block_len: usize,
    },
    /// A type with no reference quantizer (none for any type this crate reads, today).
    #[error("{ty:?} has no reference quantizer")]
    NoQuantizer {
        /// The type.
        ty: GgmlType,
    },
    /// A type without an importance-weighted quantizer.
    #[error("{ty:?} has no importance-weighted quantizer in lowbit (the 4/5-bit types and K-quants have)")]
    NoWeightedQuantizer {
        /// The type.
        ty: GgmlType,
    },
    /// A code outside the range of the block type (repacking codes chosen elsewhere).
    #[error("{ty:?}: code {code} is out of range")]
    CodeRange {
        /// The type.
        ty: GgmlType,
        /// The code.
        code: i32,
    },
    /// The streaming writer was used out of order: a tensor written twice, out of the declared
    /// order, or missing at `finish`.
    #[error("GGUF writer: {reason}")]
    WriterState {
        /// What went wrong.
        reason: String,
    },
}

impl GgufError {
    pub(crate) fn io(path: &std::path::Path, source: std::io::Error) -> Self {
        GgufError::Io { path: path.display().to_string(), source }
    }
    pub(crate) fn malformed(offset: usize, reason: impl Into<String>) -> Self {
        GgufError::Malformed { offset, reason: reason.into() }
    }
}
