//! `quantize_model`: the layer-by-layer quantization pipeline of lowbit-quantize.

use crate::errors::{PyLowbitResult, UnsupportedError};
use crate::progress::PySink;
use crate::qtensor::GroupSize;
use lowbit_core::Granularity;
use lowbit_quantize::spec::{option_spec, Alias, OptionKind, OptionSpec, OptionValue, OPTIONS};
use lowbit_quantize::{self as quantize, CalibSource, LayerStat, QuantizeOptions};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict};
use std::path::PathBuf;

/// Quantizes the model at `model` into the lowbit checkpoint directory `out`. `options` are the
/// rows of [`lowbit_quantize::spec::OPTIONS`] (see `quantize_option_specs`).
/// `progress` is a `lowbit.progress` renderer; Ctrl-C stops the run, keeping the checkpoint for
/// `resume`.
#[pyfunction]
#[pyo3(signature = (model, out, *, calib=None, calib_ids=None, data_free=false, progress=None, **options))]
#[allow(clippy::too_many_arguments)]
fn quantize_model(
    py: Python<'_>,
    model: PathBuf,
    out: PathBuf,
    calib: Option<PathBuf>,
    calib_ids: Option<Vec<u32>>,
    data_free: bool,
    progress: Option<Py<PyAny>>,
    options: Option<&Bound<'_, PyDict>>,
) -> PyResult<QuantizeReport> {
    let given = usize::from(calib.is_some()) + usize::from(calib_ids.is_some()) + usize::from(data_free);
    if given > 1 {
        return Err(crate::errors::ShapeError::new_err("give at most one of calib, calib_ids and data_free"));
    }
    let mut pairs = vec![];
    if let Some(options) = options {
        for (k, v) in options.iter() {
            let name: String = k.extract()?;
            let spec = option_spec(&name).ok_or_else(|| {
                PyTypeError::new_err(format!("quantize_model() got an unexpected keyword argument {name:?}"))
            })?;
            let value = if name == "group_size" { group_size_value(&v)? } else { option_value(spec, &v)? };
            pairs.push((name, value));
        }
    }
    let mut opts = {
        let r: PyLowbitResult<QuantizeOptions> = QuantizeOptions::from_pairs(&pairs).map_err(Into::into);
        r?
    };
    opts.calib = match (calib, calib_ids, data_free) {
        (Some(p), _, _) => Some(CalibSource::from_path(p)),
        (_, Some(ids), _) => Some(CalibSource::Tokens(ids)),
        (_, _, true) => Some(CalibSource::DataFree),
        _ => None,
    };
    let mut sink = PySink::new(progress.as_ref());
    let result = py.detach(|| quantize::quantize_model(&model, &out, &opts, &mut sink));
    Ok(QuantizeReport { inner: sink.result(result)? })
}

/// `group_size` means what it means everywhere in lowbit: a positive int, `"channel"` or
/// `"tensor"` (which the pipeline does not do); `None` is the row's per-channel value.
fn group_size_value(v: &Bound<'_, PyAny>) -> PyResult<OptionValue> {
    if v.is_none() {
        return Ok(OptionValue::None);
    }
    match v.extract::<GroupSize>()?.0 {
        Granularity::Group(g) => Ok(OptionValue::Int(g as i64)),
        Granularity::PerChannel => Ok(OptionValue::None),
        Granularity::PerTensor => {
            Err(UnsupportedError::new_err("the pipeline quantizes per group or per channel, not per tensor"))
        }
    }
}

/// A Python value for an option, checked against its row's type.
fn option_value(spec: &OptionSpec, v: &Bound<'_, PyAny>) -> PyResult<OptionValue> {
    let wrong = |want: &str| {
        PyTypeError::new_err(format!(
            "{}: expected {want}{}, got {}",
            spec.name,
            if spec.optional { " or None" } else { "" },
            v.get_type().name().map(|n| n.to_string()).unwrap_or_default()
        ))
    };
    if v.is_none() {
        return Ok(OptionValue::None);
    }
    let is_bool = v.is_instance_of::<PyBool>();
    Ok(match spec.kind {
        OptionKind::Bool if is_bool => OptionValue::Bool(v.extract()?),
        OptionKind::Bool => return Err(wrong("a bool")),
        OptionKind::Int if !is_bool => OptionValue::Int(v.extract().map_err(|_| wrong("an int"))?),
        OptionKind::Int => return Err(wrong("an int")),
        OptionKind::Float if !is_bool => OptionValue::Float(v.extract().map_err(|_| wrong("a float"))?),
        OptionKind::Float => return Err(wrong("a float")),
        OptionKind::Choice(_) => OptionValue::Str(v.extract().map_err(|_| wrong("a str"))?),
    })
}

fn value_to_py<'py>(py: Python<'py>, v: &OptionValue) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        OptionValue::None => py.None().into_bound(py),
        OptionValue::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        OptionValue::Int(i) => i.into_pyobject(py)?.into_any(),
        OptionValue::Float(f) => f.into_pyobject(py)?.into_any(),
        OptionValue::Str(s) => s.into_pyobject(py)?.into_any(),
    })
}

/// Every option of `quantize_model` (one dict per row of the Rust table): `name`, `type`
/// (`bool`, `int`, `float`, `str`), `optional`, `default`, `choices`, `help`, `methods` (empty:
/// all), `cli` (the flag, or None) and `cli_aliases` (command-line words standing for values).
#[pyfunction]
fn quantize_option_specs(py: Python<'_>) -> PyResult<Vec<Bound<'_, PyDict>>> {
    OPTIONS
        .iter()
        .map(|spec| {
            let d = PyDict::new(py);
            let (ty, choices) = match spec.kind {
                OptionKind::Bool => ("bool", None),
                OptionKind::Int => ("int", None),
                OptionKind::Float => ("float", None),
                OptionKind::Choice(c) => ("str", Some(c.to_vec())),
            };
            d.set_item("name", spec.name)?;
            d.set_item("type", ty)?;
            d.set_item("optional", spec.optional)?;
            d.set_item("default", value_to_py(py, &spec.default_value())?)?;
            d.set_item("choices", choices)?;
            d.set_item("help", spec.help)?;
            d.set_item("methods", spec.methods.to_vec())?;
            d.set_item("cli", spec.cli)?;
            let aliases = PyDict::new(py);
            for (word, alias) in spec.cli_aliases {
                let v = match alias {
                    Alias::None => OptionValue::None,
                    Alias::Bool(b) => OptionValue::Bool(*b),
                };
                aliases.set_item(word, value_to_py(py, &v)?)?;
            }
            d.set_item("cli_aliases", aliases)?;
            Ok(d)
        })
        .collect()
}

/// The outcome for one linear layer.
#[pyclass(name = "LayerResult", module = "lowbit._lowbit", frozen, get_all)]
#[derive(Clone)]
pub(crate) struct LayerResult {
    /// Block index.
    block: usize,
    /// Name inside the block (`self_attn.q_proj`, ...).
    name: String,
    /// The solver's loss.
    loss: f64,
    /// GPTQ: the damping used, relative to `mean(diag H)`.
    damping: Option<f64>,
    /// GPTQ: how often the damping had to be raised.
    damping_raises: u32,
    /// Inputs with a zero Hessian diagonal.
    dead_inputs: usize,
    /// AWQ / SmoothQuant: the alpha of the layer's scales.
    alpha: Option<f32>,
    /// Seconds of the solve.
    seconds: f64,
}

impl From<&LayerStat> for LayerResult {
    fn from(l: &LayerStat) -> Self {
        LayerResult {
            block: l.block,
            name: l.name.clone(),
            loss: l.loss,
            damping: l.damping,
            damping_raises: l.damping_raises,
            dead_inputs: l.dead_inputs,
            alpha: l.alpha,
            seconds: l.seconds,
        }
    }
}

#[pymethods]
impl LayerResult {
    fn __repr__(&self) -> String {
        format!("LayerResult(block={}, name={:?}, loss={:.6})", self.block, self.name, self.loss)
    }
}

/// What `quantize_model` did (also written to `lowbit_manifest.json`).
#[pyclass(name = "QuantizeReport", module = "lowbit._lowbit", frozen)]
pub(crate) struct QuantizeReport {
    inner: quantize::QuantizeReport,
}

fn json_to_py<'py>(py: Python<'py>, v: serde_json::Result<String>) -> PyResult<Bound<'py, PyAny>> {
    let text = v.map_err(|e| PyValueError::new_err(e.to_string()))?;
    py.import("json")?.call_method1("loads", (text,))
}

/// `#[pymethods]` of [`QuantizeReport`]: a getter per plain (`Copy`) field of the Rust report,
/// under its name, then the other methods as written.
macro_rules! report_methods {
    ($($(#[doc = $doc:literal])* $field:ident: $ty:ty;)* @methods { $($methods:tt)* }) => {
        #[pymethods]
        impl QuantizeReport {
            $(
                $(#[doc = $doc])*
                #[getter]
                fn $field(&self) -> $ty {
                    self.inner.$field
                }
            )*
            $($methods)*
        }
    };
}

report_methods! {
    /// Calibration tokens used.
    calib_tokens: usize;
    /// Seconds building calibration windows.
    calib_seconds: f64;
    /// Seconds in the blocks (this run).
    quantize_seconds: f64;
    /// Whole call, seconds.
    wall_seconds: f64;
    /// Peak resident memory of the process, bytes (None where unknown).
    peak_rss_bytes: Option<u64>;
    /// Bytes of the block linears as loaded (f32).
    linear_bytes_before: usize;
    /// Bytes of the block linears after quantization (codes + scales + zeros).
    linear_bytes_after: usize;
    /// Stored bits per block-linear weight (the block linears only).
    bits_per_weight: f64;
    /// Every byte of every file of the written directory, the manifest included.
    out_bytes: u64;
    /// Bytes of the model read (the file, or every file of the directory).
    input_bytes: u64;
    /// Parameters of every tensor written (embedding, LM head when untied, block linears, norms).
    num_params: usize;
    /// Bytes of every tensor as stored, without file headers (llama.cpp's "model size").
    tensor_bytes: usize;
    /// Stored bits per parameter over every tensor (llama.cpp's BPW).
    bits_per_weight_all: f64;
    /// Bytes of the token embedding as stored.
    embed_bytes: usize;
    /// Bytes of the LM head as stored; None when tied (the embedding is the head).
    lm_head_bytes: Option<usize>;
    /// The first block this run computed (non-zero when resumed).
    resumed_from_block: usize;
    @methods {
        /// The output directory.
        #[getter]
        fn out(&self) -> &str {
            &self.inner.out
        }
        /// The method's name.
        #[getter]
        fn method(&self) -> &str {
            self.inner.params["method"].as_str().unwrap_or_default()
        }
        /// Code width.
        #[getter]
        fn bits(&self) -> u64 {
            self.inner.params["bits"].as_u64().unwrap_or_default()
        }
        /// Weights per scale; None = one scale per output channel.
        #[getter]
        fn group_size(&self) -> Option<u64> {
            self.inner.params["group_size"].as_u64()
        }
        /// The method's parameters (as in the manifest).
        #[getter]
        fn params<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
            json_to_py(py, serde_json::to_string(&self.inner.params))
        }
        /// Per linear layer, in block then layer order.
        #[getter]
        fn layers(&self) -> Vec<LayerResult> {
            self.inner.layers.iter().map(LayerResult::from).collect()
        }
        /// SHA-256 of the calibration token ids (u32 little-endian), when calibrated.
        #[getter]
        fn calib_sha256(&self) -> Option<&str> {
            self.inner.calib_sha256.as_deref()
        }
        /// Bits per parameter of the whole directory, every file counted.
        #[getter]
        fn file_bits_per_weight(&self) -> f64 {
            self.inner.file_bits_per_weight()
        }
        /// Caveats.
        #[getter]
        fn notes(&self) -> Vec<String> {
            self.inner.notes.clone()
        }
        /// Mean of the per-layer losses.
        #[getter]
        fn mean_loss(&self) -> f64 {
            self.inner.mean_loss()
        }
        /// The layer with the largest loss.
        #[getter]
        fn worst_layer(&self) -> Option<LayerResult> {
            self.inner.worst_layer().map(LayerResult::from)
        }
        /// A JSON-ready dict of everything above.
        fn to_dict<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
            let mut v = serde_json::to_value(&self.inner).map_err(|e| PyValueError::new_err(e.to_string()))?;
            v["file_bits_per_weight"] = self.inner.file_bits_per_weight().into();
            json_to_py(py, serde_json::to_string(&v))
        }
        fn __repr__(&self) -> String {
            format!(
                "QuantizeReport(method={:?}, bits={}, group_size={}, bits_per_weight={:.3}, bits_per_weight_all={:.3}, \
                 out_bytes={}, layers={}, mean_loss={:.6}, wall_seconds={:.1}, out={:?})",
                self.method(),
                self.bits(),
                self.group_size().map_or("None".to_string(), |g| g.to_string()),
                self.inner.bits_per_weight,
                self.inner.bits_per_weight_all,
                self.inner.out_bytes,
                self.inner.layers.len(),
                self.inner.mean_loss(),
                self.inner.wall_seconds,
                self.inner.out
            )
        }
    }
}

/// The calibration protocol's windows over a token stream (numpy's `default_rng(seed)` offsets).
#[pyfunction]
#[pyo3(signature = (ids, nsamples=128, seqlen=512, seed=0))]
fn calibration_windows(ids: Vec<u32>, nsamples: usize, seqlen: usize, seed: u64) -> PyResult<Vec<u32>> {
    let r: PyLowbitResult<_> = quantize::windows_from_stream(&ids, nsamples, seqlen, seed).map_err(Into::into);
    Ok(r?)
}

/// Whether the method called `name` (or one of its aliases) needs calibration data.
#[pyfunction]
fn method_calibrated(name: &str) -> PyResult<bool> {
    if name == "qat" {
        return Ok(true);
    }
    quantize::MethodConfig::from_name(name)
        .map(|m| m.solver().calibrated())
        .map_err(|e| PyValueError::new_err(e.to_string()))
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(method_calibrated, m)?)?;
    m.add_function(wrap_pyfunction!(quantize_model, m)?)?;
    m.add_function(wrap_pyfunction!(calibration_windows, m)?)?;
    m.add_function(wrap_pyfunction!(quantize_option_specs, m)?)?;
    m.add_class::<QuantizeReport>()?;
    m.add_class::<LayerResult>()?;
    Ok(())
}
