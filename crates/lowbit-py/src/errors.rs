//! The one place Rust errors become Python exceptions.

use lowbit_core::{Cancelled, CoreError};
use lowbit_cpu::CpuError;
use lowbit_model::ModelError;
use lowbit_solvers::SolverError;
use pyo3::create_exception;
use pyo3::exceptions::{PyFileExistsError, PyFileNotFoundError, PyKeyboardInterrupt, PyOSError, PyValueError};
use pyo3::prelude::*;

create_exception!(lowbit, LowbitError, PyValueError, "Base class of lowbit's errors (a ValueError).");
create_exception!(lowbit, NonFiniteError, LowbitError, "The input holds NaN or infinite values.");
create_exception!(lowbit, ShapeError, LowbitError, "Shapes, ranks or sizes that do not fit together.");
create_exception!(lowbit, UnsupportedError, LowbitError, "A bit width, dtype or option lowbit does not support.");
create_exception!(lowbit, CorruptFileError, LowbitError, "A file that is truncated, corrupted or not lowbit's.");
create_exception!(
    lowbit,
    SolverFailedError,
    LowbitError,
    "A solver that could not finish on valid input: a singular Hessian, no calibration data."
);

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("LowbitError", py.get_type::<LowbitError>())?;
    m.add("NonFiniteError", py.get_type::<NonFiniteError>())?;
    m.add("ShapeError", py.get_type::<ShapeError>())?;
    m.add("UnsupportedError", py.get_type::<UnsupportedError>())?;
    m.add("CorruptFileError", py.get_type::<CorruptFileError>())?;
    m.add("SolverFailedError", py.get_type::<SolverFailedError>())?;
    Ok(())
}

/// Converts crate errors to the matching Python exception.
pub(crate) struct PyLowbitError(PyErr);

impl From<PyLowbitError> for PyErr {
    fn from(e: PyLowbitError) -> PyErr {
        e.0
    }
}

fn io_error(msg: String, source: &std::io::Error) -> PyErr {
    match source.kind() {
        std::io::ErrorKind::NotFound => PyFileNotFoundError::new_err(msg),
        std::io::ErrorKind::AlreadyExists => PyFileExistsError::new_err(msg),
        _ => PyOSError::new_err(msg),
    }
}

// Every conversion below names each variant: a new variant is a compile error here until it is
// given its Python class, never a silent `LowbitError`.

impl From<Cancelled> for PyLowbitError {
    fn from(e: Cancelled) -> Self {
        // The Python sink re-raises the KeyboardInterrupt it caught; this is the fallback for a
        // cancellation that did not come from a Python signal.
        PyLowbitError(PyKeyboardInterrupt::new_err(e.to_string()))
    }
}

impl From<CoreError> for PyLowbitError {
    fn from(e: CoreError) -> Self {
        let msg = e.to_string();
        PyLowbitError(match e {
            CoreError::NonFinite { .. } => NonFiniteError::new_err(msg),
            CoreError::UnsupportedBits { .. } => UnsupportedError::new_err(msg),
            CoreError::GroupSize { .. }
            | CoreError::BlockSize(_)
            | CoreError::Empty { .. }
            | CoreError::Shape { .. } => ShapeError::new_err(msg),
            CoreError::ScaleOverflow { .. } => LowbitError::new_err(msg),
            CoreError::Corrupt(_) => CorruptFileError::new_err(msg),
            CoreError::Io { ref source, .. } => io_error(msg, source),
        })
    }
}

impl From<CpuError> for PyLowbitError {
    fn from(e: CpuError) -> Self {
        let msg = e.to_string();
        PyLowbitError(match e {
            CpuError::Core(core) => return core.into(),
            CpuError::Shape { .. } => ShapeError::new_err(msg),
            CpuError::Unsupported { .. } | CpuError::KernelLevel(_) => UnsupportedError::new_err(msg),
            CpuError::NonFiniteActivation { .. } => NonFiniteError::new_err(msg),
        })
    }
}

impl From<ModelError> for PyLowbitError {
    fn from(e: ModelError) -> Self {
        let msg = e.to_string();
        PyLowbitError(match e {
            ModelError::Core(core) => return core.into(),
            ModelError::Cpu(cpu) => return cpu.into(),
            ModelError::Cancelled(c) => return c.into(),
            ModelError::Io { ref source, .. } => io_error(msg, source),
            ModelError::MissingFile { .. } => PyFileNotFoundError::new_err(msg),
            ModelError::UnsupportedArchitecture { .. }
            | ModelError::UnsupportedDtype { .. }
            | ModelError::GgufUnsupported { .. }
            | ModelError::DeviceUnavailable { .. } => UnsupportedError::new_err(msg),
            ModelError::TensorShape { .. } => ShapeError::new_err(msg),
            ModelError::Config { .. }
            | ModelError::MissingTensor { .. }
            | ModelError::Safetensors { .. }
            | ModelError::Gguf { .. } => CorruptFileError::new_err(msg),
            ModelError::Tokenizer(_)
            | ModelError::NoTokenizer { .. }
            | ModelError::ChatTemplate(_)
            | ModelError::Input { .. } => LowbitError::new_err(msg),
        })
    }
}

impl From<SolverError> for PyLowbitError {
    fn from(e: SolverError) -> Self {
        let msg = e.to_string();
        PyLowbitError(match e {
            SolverError::Core(core) => return core.into(),
            SolverError::NonFiniteActivation { .. } => NonFiniteError::new_err(msg),
            SolverError::Shape { .. } => ShapeError::new_err(msg),
            SolverError::InvalidParameter { .. } => UnsupportedError::new_err(msg),
            SolverError::NoCalibrationData { .. } | SolverError::SingularHessian { .. } => {
                SolverFailedError::new_err(msg)
            }
        })
    }
}

/// Result of binding code.
pub(crate) type PyLowbitResult<T> = Result<T, PyLowbitError>;
