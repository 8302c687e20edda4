//! `export_gguf` / `export_hf`: a model lowbit loads to a llama GGUF or an HF GPTQ, AWQ or
//! compressed-tensors directory, with the per-tensor report.

use crate::errors::{PyLowbitResult, UnsupportedError};
use crate::progress::PySink;
use lowbit_model::gguf::{GgmlType, GgufExportOptions, GgufPlan};
use lowbit_model::{HfFormat, LoadOptions, Model};
use lowbit_quantize::imatrix::{imatrix, DEFAULT_IMATRIX_SAMPLES, IMATRIX_SEQLEN};
use lowbit_quantize::CalibSource;
use numpy::IntoPyArray;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};
use std::path::PathBuf;

/// Exports the model at `model` to the GGUF file `out` (GIL released). `dense_type` (a ggml type
/// name such as `"Q8_0"`) requantizes dense weight matrices. `imatrix_text` (a calibration file,
/// as `quantize_model`'s `calib`) weights the requantization of block linears by the model's
/// importance matrix over `imatrix_samples` windows of 512 tokens; `progress` sees its phases.
/// Returns `{"bytes": int, "imatrix_tokens": int, "tensors": [{"name", "source", "type", "path",
/// "max_abs_diff"}, ...]}`.
#[pyfunction]
#[pyo3(signature = (model, out, dense_type=None, imatrix_text=None, imatrix_samples=None, progress=None))]
#[allow(clippy::too_many_arguments)]
fn export_gguf<'py>(
    py: Python<'py>,
    model: PathBuf,
    out: PathBuf,
    dense_type: Option<&str>,
    imatrix_text: Option<PathBuf>,
    imatrix_samples: Option<usize>,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let dense_type = dense_type.map(parse_type).transpose()?;
    let mut sink = PySink::new(progress.as_ref());
    let result = py.detach(|| -> lowbit_quantize::Result<_> {
        let m = Model::load_with(&model, &LoadOptions::default())?;
        let samples = imatrix_samples.unwrap_or(DEFAULT_IMATRIX_SAMPLES);
        let im = match &imatrix_text {
            Some(p) => Some(imatrix(&m, &CalibSource::from_path(p), samples, IMATRIX_SEQLEN, 0, &mut sink)?),
            None => None,
        };
        let tokens = im.as_ref().map_or(0, |im| im.tokens());
        let opts = GgufExportOptions { dense_type, imatrix: im };
        Ok((GgufPlan::new(&m, &model, &opts)?.write(&out)?, tokens))
    });
    let (report, tokens) = sink.result(result)?;
    let tensors = PyList::empty(py);
    for t in report.tensors {
        tensors.append(tensor_row(py, t.name, t.source, t.ty.name(), t.path.name(), t.max_abs_diff)?)?;
    }
    let out = PyDict::new(py);
    out.set_item("bytes", report.bytes)?;
    out.set_item("imatrix_tokens", tokens)?;
    out.set_item("tensors", tensors)?;
    Ok(out)
}

/// The importance matrix of the model at `model` over `samples` windows of `seqlen` tokens
/// drawn from the calibration file `calib` (GIL released): `{weight name: mean x^2 per input
/// column}` for every block linear.
#[pyfunction]
#[pyo3(signature = (model, calib, samples=None, seqlen=IMATRIX_SEQLEN, progress=None))]
fn imatrix_of<'py>(
    py: Python<'py>,
    model: PathBuf,
    calib: PathBuf,
    samples: Option<usize>,
    seqlen: usize,
    progress: Option<Py<PyAny>>,
) -> PyResult<Bound<'py, PyDict>> {
    let mut sink = PySink::new(progress.as_ref());
    let result = py.detach(|| -> lowbit_quantize::Result<_> {
        let m = Model::load_with(&model, &LoadOptions::default())?;
        let samples = samples.unwrap_or(DEFAULT_IMATRIX_SAMPLES);
        imatrix(&m, &CalibSource::from_path(&calib), samples, seqlen, 0, &mut sink)
    });
    let im = sink.result(result)?;
    let out = PyDict::new(py);
    for (name, v) in im.iter() {
        out.set_item(name, v.to_vec().into_pyarray(py))?;
    }
    Ok(out)
}

/// Exports the lowbit quantized model at `model` to the HF quantized directory `out` in `format`
/// (`gptq`, `awq`, `compressed-tensors`; GIL released). Returns `{"bytes", "checkpoint_format",
/// "notes": [str], "tensors": [{"name", "source", "type", "path", "max_abs_diff"}, ...]}`.
#[pyfunction]
fn export_hf<'py>(py: Python<'py>, model: PathBuf, out: PathBuf, format: &str) -> PyResult<Bound<'py, PyDict>> {
    let fmt = HfFormat::from_name(format).ok_or_else(|| {
        UnsupportedError::new_err(format!("HF export format {format:?} (gptq, awq, compressed-tensors)"))
    })?;
    let r: PyLowbitResult<_> = py.detach(|| lowbit_model::export_hf(&model, &out, fmt)).map_err(Into::into);
    let report = r?;
    let tensors = PyList::empty(py);
    for t in report.tensors {
        tensors.append(tensor_row(py, t.name, t.source, &t.dtype, t.path.name(), t.max_abs_diff)?)?;
    }
    let out = PyDict::new(py);
    out.set_item("bytes", report.bytes)?;
    out.set_item("checkpoint_format", report.checkpoint_format)?;
    out.set_item("notes", report.notes)?;
    out.set_item("tensors", tensors)?;
    Ok(out)
}

/// Converts the model at `model` to `out` in `format` (`lowbit`, `gguf`, `gptq`, `awq`, `compressed-tensors`; GIL released),
/// refusing a lossy conversion before writing unless `allow_requantize`. `gguf_type` requantizes
/// dense matrices (GGUF only). Returns `{"bytes", "notes": [str], "tensors": [{"name", "source",
/// "type", "path", "max_abs_diff"}, ...]}`.
#[pyfunction]
#[pyo3(signature = (model, out, format, allow_requantize=false, gguf_type=None))]
fn convert<'py>(
    py: Python<'py>,
    model: PathBuf,
    out: PathBuf,
    format: &str,
    allow_requantize: bool,
    gguf_type: Option<&str>,
) -> PyResult<Bound<'py, PyDict>> {
    let format = lowbit_model::ConvertFormat::from_name(format).ok_or_else(|| {
        let names: Vec<_> = lowbit_model::ConvertFormat::ALL.iter().map(|f| f.name()).collect();
        UnsupportedError::new_err(format!("convert format {format:?}: lowbit converts to {}", names.join(", ")))
    })?;
    let dense_type = gguf_type.map(parse_type).transpose()?;
    let opts = lowbit_model::ConvertOptions {
        format,
        allow_requantize,
        gguf: GgufExportOptions { dense_type, ..Default::default() },
    };
    let r: PyLowbitResult<_> = py.detach(|| lowbit_model::convert(&model, &out, &opts)).map_err(Into::into);
    let report = r?;
    let tensors = PyList::empty(py);
    for t in report.tensors {
        tensors.append(tensor_row(py, t.name, t.source, &t.target, t.path.name(), t.max_abs_diff)?)?;
    }
    let out = PyDict::new(py);
    out.set_item("bytes", report.bytes)?;
    out.set_item("notes", report.notes)?;
    out.set_item("tensors", tensors)?;
    Ok(out)
}

fn parse_type(name: &str) -> PyResult<GgmlType> {
    lowbit_model::ggml_type(name).ok_or_else(|| {
        UnsupportedError::new_err(format!("unknown ggml type {name:?} (e.g. F16, Q8_0, Q4_0, Q4_K, Q6_K)"))
    })
}

/// One tensor of an export report: `{"name", "source", "type", "path", "max_abs_diff"}`.
fn tensor_row<'py>(
    py: Python<'py>,
    name: String,
    source: String,
    ty: &str,
    path: &str,
    max_abs_diff: f32,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("name", name)?;
    d.set_item("source", source)?;
    d.set_item("type", ty)?;
    d.set_item("path", path)?;
    d.set_item("max_abs_diff", max_abs_diff)?;
    Ok(d)
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(export_gguf, m)?)?;
    m.add_function(wrap_pyfunction!(export_hf, m)?)?;
    m.add_function(wrap_pyfunction!(imatrix_of, m)?)?;
    m.add_function(wrap_pyfunction!(convert, m)?)
}
