//! The one place Rust errors become Python exceptions.

use lowbit_core::{Cancelled, CoreError};
use lowbit_cpu::CpuError;
use lowbit_model::ModelError;
use lowbit_quantize::QuantizeError;
use lowbit_solvers::SolverError;
use lowbit_train::TrainError;
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
// given its Python class, never a silent `LowbitError`. Each takes the message of the outermost
// error, so context added by a wrapper (block, layer) reaches Python with the inner error's class.

fn cancelled_exception(_: &Cancelled, msg: String) -> PyErr {
    // The Python sink re-raises the KeyboardInterrupt it caught; this is the fallback for a
    // cancellation that did not come from a Python signal.
    PyKeyboardInterrupt::new_err(msg)
}

fn core_exception(e: &CoreError, msg: String) -> PyErr {
    match e {
        CoreError::NonFinite { .. } => NonFiniteError::new_err(msg),
        CoreError::UnsupportedBits { .. } => UnsupportedError::new_err(msg),
        CoreError::GroupSize { .. } | CoreError::BlockSize(_) | CoreError::Empty { .. } | CoreError::Shape { .. } => {
            ShapeError::new_err(msg)
        }
        CoreError::ScaleOverflow { .. } => LowbitError::new_err(msg),
        CoreError::Corrupt(_) => CorruptFileError::new_err(msg),
        CoreError::Io { source, .. } => io_error(msg, source),
    }
}

fn cpu_exception(e: &CpuError, msg: String) -> PyErr {
    match e {
        CpuError::Core(core) => core_exception(core, msg),
        CpuError::Shape { .. } => ShapeError::new_err(msg),
        CpuError::Unsupported { .. } | CpuError::KernelLevel(_) => UnsupportedError::new_err(msg),
        CpuError::NonFiniteActivation { .. } => NonFiniteError::new_err(msg),
    }
}

fn solver_exception(e: &SolverError, msg: String) -> PyErr {
    match e {
        SolverError::Core(core) => core_exception(core, msg),
        SolverError::NonFiniteActivation { .. } => NonFiniteError::new_err(msg),
        SolverError::Shape { .. } => ShapeError::new_err(msg),
        SolverError::InvalidParameter { .. } => UnsupportedError::new_err(msg),
        SolverError::NoCalibrationData { .. } | SolverError::SingularHessian { .. } => SolverFailedError::new_err(msg),
    }
}

fn train_exception(e: &TrainError, msg: String) -> PyErr {
    match e {
        TrainError::Core(core) => core_exception(core, msg),
        TrainError::Shape { .. } => ShapeError::new_err(msg),
        TrainError::Interrupted(_) => LowbitError::new_err(msg),
    }
}

fn quantize_exception(e: &QuantizeError, msg: String) -> PyErr {
    match e {
        QuantizeError::Model(model) => model_exception(model, msg),
        QuantizeError::Core(core) => core_exception(core, msg),
        QuantizeError::Cpu(cpu) => cpu_exception(cpu, msg),
        QuantizeError::Solver { source, .. } => solver_exception(source, msg),
        QuantizeError::NonFiniteActivation { .. } => NonFiniteError::new_err(msg),
        QuantizeError::Io { source, .. } => io_error(msg, source),
        QuantizeError::Input { .. } => LowbitError::new_err(msg),
    }
}

fn model_exception(e: &ModelError, msg: String) -> PyErr {
    match e {
        ModelError::Core(core) => core_exception(core, msg),
        ModelError::Cpu(cpu) => cpu_exception(cpu, msg),
        ModelError::Cancelled(c) => cancelled_exception(c, msg),
        ModelError::Io { source, .. } => io_error(msg, source),
        ModelError::MissingFile { .. } => PyFileNotFoundError::new_err(msg),
        ModelError::UnsupportedArchitecture { .. }
        | ModelError::UnsupportedDtype { .. }
        | ModelError::GgufUnsupported { .. }
        | ModelError::QuantUnsupported { .. }
        | ModelError::Lossy { .. }
        | ModelError::DeviceUnavailable { .. } => UnsupportedError::new_err(msg),
        ModelError::TensorShape { .. } => ShapeError::new_err(msg),
        ModelError::Config { .. }
        | ModelError::MissingTensor { .. }
        | ModelError::Safetensors { .. }
        | ModelError::QuantCheckpoint { .. }
        | ModelError::Gguf { .. } => CorruptFileError::new_err(msg),
        ModelError::Tokenizer(_)
        | ModelError::NoTokenizer { .. }
        | ModelError::ChatTemplate(_)
        | ModelError::Input { .. }
        // A non-CPU backend's failure (the CPU's errors keep `ModelError::Cpu`).
        | ModelError::Backend(_) => LowbitError::new_err(msg),
    }
}

macro_rules! convert {
    ($($ty:ty => $f:ident),* $(,)?) => {$(
        impl From<$ty> for PyLowbitError {
            fn from(e: $ty) -> Self {
                PyLowbitError($f(&e, e.to_string()))
            }
        }
    )*};
}

convert!(
    Cancelled => cancelled_exception,
    CoreError => core_exception,
    CpuError => cpu_exception,
    SolverError => solver_exception,
    ModelError => model_exception,
    QuantizeError => quantize_exception,
    TrainError => train_exception,
);

/// Result of binding code.
pub(crate) type PyLowbitResult<T> = Result<T, PyLowbitError>;
