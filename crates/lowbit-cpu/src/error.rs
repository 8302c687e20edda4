use thiserror::Error;

/// Result type of lowbit-cpu.
pub type Result<T, E = CpuError> = std::result::Result<T, E>;

/// Errors of lowbit-cpu.
#[derive(Debug, Error)]
pub enum CpuError {
    /// Operand shapes that do not fit together.
    #[error("{op}: expected {expected}, got {got}")]
    Shape {
        /// The operation.
        op: &'static str,
        /// What it expected.
        expected: String,
        /// What it received.
        got: String,
    },
    /// A weight format the kernels do not run.
    #[error("unsupported weight format for {op}: {what}")]
    Unsupported {
        /// The operation.
        op: &'static str,
        /// What was asked.
        what: String,
    },
    /// A NaN or infinite activation where the kernel quantizes activations (W8A8).
    #[error("{op}: activations must be finite: found {value} at flat index {index}")]
    NonFiniteActivation {
        /// The operation.
        op: &'static str,
        /// Flat index of the first non-finite element found.
        index: usize,
        /// The value found there.
        value: f32,
    },
    /// A `LOWBIT_KERNELS` value that names no kernel level or one this CPU lacks.
    #[error("LOWBIT_KERNELS={0:?} is not available on this CPU (choose scalar, avx2 or avx512)")]
    KernelLevel(String),
    /// From lowbit-core.
    #[error(transparent)]
    Core(#[from] lowbit_core::CoreError),
}

impl CpuError {
    pub(crate) fn shape(op: &'static str, expected: impl ToString, got: impl ToString) -> Self {
        CpuError::Shape { op, expected: expected.to_string(), got: got.to_string() }
    }
}
