//! The one place Rust errors become Python exceptions.

use lowbit_core::CoreError;
use lowbit_cpu::CpuError;
use lowbit_model::ModelError;
use lowbit_quantize::QuantizeError;
use lowbit_solvers::SolverError;
use pyo3::create_exception;
use pyo3::exceptions::{PyFileNotFoundError, PyOSError, PyValueError};
use pyo3::prelude::*;

create_exception!(lowbit, LowbitError, PyValueError, "Base class of lowbit's errors (a ValueError).");
create_exception!(lowbit, NonFiniteError, LowbitError, "The input holds NaN or infinite values.");
create_exception!(lowbit, ShapeError, LowbitError, "Shapes, ranks or sizes that do not fit together.");
create_exception!(lowbit, UnsupportedError, LowbitError, "A bit width, dtype or option lowbit does not support.");
create_exception!(lowbit, CorruptFileError, LowbitError, "A file that is truncated, corrupted or not lowbit's.");

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("LowbitError", py.get_type::<LowbitError>())?;
    m.add("NonFiniteError", py.get_type::<NonFiniteError>())?;
    m.add("ShapeError", py.get_type::<ShapeError>())?;
    m.add("UnsupportedError", py.get_type::<UnsupportedError>())?;
    m.add("CorruptFileError", py.get_type::<CorruptFileError>())?;
    Ok(())
}

/// Converts crate errors to the matching Python exception.
pub(crate) struct PyLowbitError(PyErr);

impl From<PyLowbitError> for PyErr {
    fn from(e: PyLowbitError) -> PyErr {
        e.0
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
            CoreError::Io { ref source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                PyFileNotFoundError::new_err(msg)
            }
            CoreError::Io { .. } => PyOSError::new_err(msg),
        })
    }
}

impl From<ModelError> for PyLowbitError {
    fn from(e: ModelError) -> Self {
        let msg = e.to_string();
        PyLowbitError(match e {
            ModelError::Core(core) => return core.into(),
            ModelError::Cpu(CpuError::Core(core)) => return core.into(),
            ModelError::Io { ref source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                PyFileNotFoundError::new_err(msg)
            }
            ModelError::Io { .. } => PyOSError::new_err(msg),
            ModelError::MissingFile { .. } => PyFileNotFoundError::new_err(msg),
            ModelError::UnsupportedArchitecture { .. }
            | ModelError::UnsupportedDtype { .. }
            | ModelError::GgufUnsupported { .. }
            | ModelError::DeviceUnavailable { .. } => UnsupportedError::new_err(msg),
            ModelError::TensorShape { .. } | ModelError::Cpu(_) => ShapeError::new_err(msg),
            ModelError::Config { .. }
            | ModelError::MissingTensor { .. }
            | ModelError::Safetensors { .. }
            | ModelError::Gguf { .. } => CorruptFileError::new_err(msg),
            _ => LowbitError::new_err(msg),
        })
    }
}

impl From<QuantizeError> for PyLowbitError {
    fn from(e: QuantizeError) -> Self {
        let msg = e.to_string();
        PyLowbitError(match e {
            QuantizeError::Model(m) => return m.into(),
            QuantizeError::Core(core) => return core.into(),
            QuantizeError::Cpu(CpuError::Core(core)) => return core.into(),
            QuantizeError::Cpu(_) => ShapeError::new_err(msg),
            // The message names the block and layer; the exception class is the solver's.
            QuantizeError::Solver { source, .. } => {
                let PyLowbitError(err) = source.into();
                Python::attach(|py| PyErr::from_type(err.get_type(py), msg))
            }
            QuantizeError::Io { ref source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
                PyFileNotFoundError::new_err(msg)
            }
            QuantizeError::Io { .. } => PyOSError::new_err(msg),
            QuantizeError::Input { .. } => LowbitError::new_err(msg),
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
            _ => LowbitError::new_err(msg),
        })
    }
}

/// Result of binding code.
pub(crate) type PyLowbitResult<T> = Result<T, PyLowbitError>;
