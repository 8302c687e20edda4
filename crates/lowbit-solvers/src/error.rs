//! The one error type of lowbit-solvers.

use lowbit_core::CoreError;
use thiserror::Error;

/// Result type of lowbit-solvers.
pub type Result<T, E = SolverError> = std::result::Result<T, E>;

/// Everything a solver can reject. Solvers never panic on user input.
#[derive(Debug, Error)]
pub enum SolverError {
    /// An error from the format layer (bad group size, scale overflow, non-finite weight, ...).
    #[error(transparent)]
    Core(#[from] CoreError),
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
    /// A NaN or infinite calibration activation.
    #[error("{op}: calibration activations must be finite, found {value} at token {token}, channel {channel}")]
    NonFiniteActivation {
        /// The operation that checked.
        op: &'static str,
        /// Token (row of the batch) of the first offender.
        token: usize,
        /// Input channel of the first offender.
        channel: usize,
        /// The value found.
        value: f32,
    },
    /// A Hessian (or other statistic) that has seen no calibration data.
    #[error("{op}: no calibration tokens were accumulated")]
    NoCalibrationData {
        /// The operation that needed data.
        op: &'static str,
    },
    /// A Hessian that is not positive definite even after the largest allowed damping.
    #[error(
        "the Hessian stays singular (or is not finite) after damping up to lambda = {last_lambda:e} \
         ({attempts} attempts; first non-positive pivot at column {pivot:?}); check the calibration activations"
    )]
    SingularHessian {
        /// The largest damping tried.
        last_lambda: f64,
        /// How many factorizations were attempted.
        attempts: u32,
        /// Column of the first non-positive pivot of the last attempt, when known.
        pivot: Option<usize>,
    },
    /// A parameter outside its valid range.
    #[error("invalid {name} = {value}: {reason}")]
    InvalidParameter {
        /// The parameter.
        name: &'static str,
        /// The value received, formatted.
        value: String,
        /// Why it is rejected.
        reason: &'static str,
    },
}

impl SolverError {
    pub(crate) fn shape(op: &'static str, expected: impl ToString, got: impl ToString) -> Self {
        SolverError::Shape { op, expected: expected.to_string(), got: got.to_string() }
    }

    pub(crate) fn param(name: &'static str, value: impl ToString, reason: &'static str) -> Self {
        SolverError::InvalidParameter { name, value: value.to_string(), reason }
    }
}
