use thiserror::Error;

/// Result type of lowbit-core.
pub type Result<T, E = CoreError> = std::result::Result<T, E>;

/// Everything that can go wrong in lowbit-core. The library never panics on user input.
#[derive(Debug, Error)]
pub enum CoreError {
    /// A NaN or infinite weight.
    #[error("weights must be finite: found {value} at flat index {index}")]
    NonFinite {
        /// Flat index of the first non-finite element.
        index: usize,
        /// The value found there.
        value: f32,
    },
    /// A bit width lowbit does not pack.
    #[error("unsupported bit width {bits}: lowbit packs 2, 3, 4 or 8 bits")]
    UnsupportedBits {
        /// The requested width.
        bits: u32,
    },
    /// A group size that does not divide the row or is otherwise unusable.
    #[error("group size {group_size} is invalid for rows of {cols} elements: {reason}")]
    GroupSize {
        /// The requested group size.
        group_size: usize,
        /// Row length.
        cols: usize,
        /// Why it is rejected.
        reason: &'static str,
    },
    /// A block size of 0 for the codebook formats.
    #[error("block size must be at least 1, got {0}")]
    BlockSize(usize),
    /// An empty tensor.
    #[error("cannot quantize an empty tensor (shape {shape:?})")]
    Empty {
        /// The shape received.
        shape: Vec<usize>,
    },
    /// Shapes or lengths that do not agree.
    #[error("{op}: expected {expected}, got {got}")]
    Shape {
        /// The operation that checked.
        op: &'static str,
        /// What it expected.
        expected: String,
        /// What it received.
        got: String,
    },
    /// A scale that does not fit its storage dtype.
    #[error("scale {scale} does not fit in f16 (weights up to {absmax}); use scale_dtype=f32")]
    ScaleOverflow {
        /// The f32 scale.
        scale: f32,
        /// The group's largest magnitude.
        absmax: f32,
    },
    /// A file or buffer that is not a valid lowbit tensor file.
    #[error("corrupt or truncated lowbit file: {0}")]
    Corrupt(String),
    /// Reading or writing failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl CoreError {
    pub(crate) fn shape(op: &'static str, expected: impl ToString, got: impl ToString) -> Self {
        CoreError::Shape { op, expected: expected.to_string(), got: got.to_string() }
    }
}
