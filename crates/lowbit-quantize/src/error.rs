//! The single error type of lowbit-quantize.

use lowbit_model::ModelError;
use lowbit_solvers::SolverError;
use thiserror::Error;

/// Result type of lowbit-quantize.
pub type Result<T, E = QuantizeError> = std::result::Result<T, E>;

/// Everything that can go wrong in a quantization run. Loading and running the model report
/// [`ModelError`], the solvers [`SolverError`] (with the block and layer they were solving).
#[derive(Debug, Error)]
pub enum QuantizeError {
    /// Loading, running or saving the model failed.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A solver failed on one layer (or group of layers sharing an input).
    #[error("quantize: block {block} {layer}: {source}")]
    Solver {
        /// Block index.
        block: usize,
        /// The layer or group (`self_attn.q_proj`, `q/k/v input`, ...).
        layer: String,
        /// What the solver said.
        #[source]
        source: SolverError,
    },
    /// Bad options, calibration data or checkpoint, or a run stopped on purpose.
    #[error("{op}: {reason}")]
    Input {
        /// The operation (`quantize`, `calibration`, `resume`).
        op: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// An error from lowbit-core (quantized tensors, lowbit files).
    #[error(transparent)]
    Core(#[from] lowbit_core::CoreError),
    /// An error from a lowbit-cpu kernel.
    #[error(transparent)]
    Cpu(#[from] lowbit_cpu::CpuError),
}

impl QuantizeError {
    pub(crate) fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        QuantizeError::Io { path: path.as_ref().display().to_string(), source }
    }
    pub(crate) fn input(op: &'static str, reason: impl Into<String>) -> Self {
        QuantizeError::Input { op, reason: reason.into() }
    }
}
