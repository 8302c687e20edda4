//! `QTensor` and the quantize / save / load functions.

use crate::arrays::{float_input, FloatArray};
use crate::errors::{PyLowbitResult, ShapeError, UnsupportedError};
use lowbit_core::{
    codebook, io, pack, Absmax, Bits, ClipSearch, Codebook, CodebookScheme, Granularity, IntScheme, QParams, QTensor,
    ScaleDtype, Scales, Scheme, ZeroPoints,
};
use numpy::{IntoPyArray, PyArray1, PyArrayDyn, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A quantized tensor: shape, scheme, packed codes, scales and zero points.
#[pyclass(name = "QTensor", module = "lowbit", frozen)]
pub(crate) struct PyQTensor {
    pub inner: QTensor,
}

fn to_shaped<'py, T: numpy::Element>(
    py: Python<'py>,
    data: Vec<T>,
    shape: &[usize],
) -> PyResult<Bound<'py, PyArrayDyn<T>>> {
    data.into_pyarray(py).reshape(shape.to_vec())
}

#[pymethods]
impl PyQTensor {
    /// Logical shape of the original tensor.
    #[getter]
    fn shape<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyTuple>> {
        PyTuple::new(py, self.inner.shape())
    }
    /// Bits per code.
    #[getter]
    fn bits(&self) -> u32 {
        self.inner.scheme().code_bits().get()
    }
    /// "int", "nf4", "fp4" or "rowlut" (a codebook per output row, SqueezeLLM).
    #[getter]
    fn format(&self) -> &'static str {
        match self.inner.scheme() {
            Scheme::Int(_) => "int",
            Scheme::Codebook(s) if s.codebook == Codebook::Nf4 => "nf4",
            Scheme::Codebook(_) => "fp4",
            Scheme::RowLut(_) => "rowlut",
        }
    }
    /// "tensor", "channel", "group" (integer formats), "block" (codebooks) or "channel" (row
    /// codebooks).
    #[getter]
    fn granularity(&self) -> &'static str {
        match self.inner.scheme() {
            Scheme::Int(s) => match s.granularity {
                Granularity::PerTensor => "tensor",
                Granularity::PerChannel => "channel",
                Granularity::Group(_) => "group",
            },
            Scheme::Codebook(_) => "block",
            Scheme::RowLut(_) => "channel",
        }
    }
    /// Elements per group (or per codebook block); None for per-tensor and per-channel.
    #[getter]
    fn group_size(&self) -> Option<usize> {
        match self.inner.scheme() {
            Scheme::Int(IntScheme { granularity: Granularity::Group(g), .. }) => Some(*g),
            Scheme::Codebook(s) => Some(s.block_size),
            Scheme::Int(_) | Scheme::RowLut(_) => None,
        }
    }
    /// True when there is no stored zero point.
    #[getter]
    fn symmetric(&self) -> bool {
        match self.inner.scheme() {
            Scheme::Int(s) => s.symmetric,
            Scheme::Codebook(_) | Scheme::RowLut(_) => true,
        }
    }
    /// Whether codebook absmax values are double-quantized.
    #[getter]
    fn double_quant(&self) -> bool {
        matches!(self.inner.scheme(), Scheme::Codebook(CodebookScheme { double_quant: true, .. }))
    }
    /// Bytes of storage: codes, scales, zeros.
    #[getter]
    fn nbytes(&self) -> usize {
        self.inner.nbytes()
    }
    /// Storage bits per weight, everything included.
    #[getter]
    fn bits_per_weight(&self) -> f64 {
        self.inner.bits_per_weight()
    }
    /// Number of elements.
    #[getter]
    fn numel(&self) -> usize {
        self.inner.numel()
    }
    /// The packed code bytes (a copy).
    #[getter]
    fn packed<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<u8>> {
        self.inner.codes().to_vec().into_pyarray(py)
    }
    /// Scales in their storage dtype (float16 or float32); absmax values for codebooks; the
    /// float16 tables `[rows, 2^bits]` for row codebooks.
    #[getter]
    fn scales<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let shape = self.inner.scale_shape();
        Ok(match self.inner.params() {
            QParams::Int { scales: Scales::F16(v), .. } => to_shaped(py, v.clone(), &shape)?.into_any(),
            QParams::Int { scales: Scales::F32(v), .. } => to_shaped(py, v.clone(), &shape)?.into_any(),
            // SpQR's quantized statistics: the decoded f32 scales.
            QParams::IntStats(st) => {
                let (rows, gpr) = (shape[0], shape.get(1).copied().unwrap_or(1));
                let (mut scales, mut zeros) = (vec![0f32; rows * gpr], vec![0f32; rows * gpr]);
                st.decode_rows(rows, gpr, 0, rows, &mut scales, &mut zeros);
                to_shaped(py, scales, &shape)?.into_any()
            }
            QParams::Codebook { absmax } => {
                let values: Vec<f32> = (0..shape[0]).map(|i| absmax.get(i)).collect();
                to_shaped(py, values, &shape)?.into_any()
            }
            QParams::RowLut { tables } => to_shaped(py, tables.clone(), &shape)?.into_any(),
        })
    }
    /// Zero points of asymmetric schemes in their storage dtype (uint8 codes, or float16/float32
    /// for HQQ's float zeros), else None.
    #[getter]
    fn zeros<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let shape = self.inner.scale_shape();
        let QParams::Int { zeros: Some(z), .. } = self.inner.params() else { return Ok(None) };
        Ok(Some(match z {
            ZeroPoints::Codes(v) => to_shaped(py, v.clone(), &shape)?.into_any(),
            ZeroPoints::Float(Scales::F16(v)) => to_shaped(py, v.clone(), &shape)?.into_any(),
            ZeroPoints::Float(Scales::F32(v)) => to_shaped(py, v.clone(), &shape)?.into_any(),
        }))
    }
    /// The codes, unpacked to one uint8 per element, in the tensor's shape.
    fn codes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArrayDyn<u8>>> {
        let bits = self.inner.scheme().code_bits();
        let (packed, n) = (self.inner.codes(), self.inner.numel());
        let codes = py.detach(|| pack::unpack(packed, bits, n)).map_err(crate::errors::PyLowbitError::from)?;
        to_shaped(py, codes, self.inner.shape())
    }
    /// Reconstructs the float32 tensor: `(q - zero) * scale`, or `table[q] * absmax`.
    fn dequantize<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let values = py.detach(|| self.inner.dequantize());
        to_shaped(py, values, self.inner.shape())
    }
    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other.cast::<PyQTensor>().is_ok_and(|o| o.get().inner == self.inner)
    }
    fn __repr__(&self) -> String {
        let scheme = match self.inner.scheme() {
            Scheme::Int(s) => format!(
                "int{} {} {}{}, scales {:?}",
                s.bits.get(),
                if s.symmetric { "symmetric" } else { "asymmetric" },
                self.granularity(),
                self.group_size().map_or(String::new(), |g| format!(" {g}")),
                s.scale_dtype
            ),
            Scheme::Codebook(s) => {
                format!("{} block {}{}", self.format(), s.block_size, if s.double_quant { " double-quant" } else { "" })
            }
            Scheme::RowLut(s) => format!("rowlut{} ({} f16 values per row)", s.bits.get(), s.entries()),
        };
        format!("QTensor(shape={:?}, {scheme}, {:.3} bits/weight)", self.inner.shape(), self.bits_per_weight())
    }
}

/// `group_size` as every entry point spells it (`lowbit.quantize`, the solvers, the pipeline, the
/// CLI): a positive int (elements per group), `"channel"` (one scale per row) or `"tensor"` (one
/// scale in all). No number stands for a granularity: 0 once meant per tensor in one place and
/// per channel in another.
#[derive(Clone, Copy, Debug)]
pub(crate) struct GroupSize(pub Granularity);

impl<'a, 'py> FromPyObject<'a, 'py> for GroupSize {
    type Error = PyErr;
    fn extract(obj: pyo3::Borrowed<'a, 'py, PyAny>) -> PyResult<Self> {
        granularity_of(&obj).map(GroupSize)
    }
}

fn granularity_of(group_size: &Bound<'_, PyAny>) -> PyResult<Granularity> {
    if let Ok(name) = group_size.extract::<String>() {
        return match name.as_str() {
            "channel" => Ok(Granularity::PerChannel),
            "tensor" => Ok(Granularity::PerTensor),
            other => Err(ShapeError::new_err(format!(
                "group_size must be a positive int, 'channel' or 'tensor', got {other:?}"
            ))),
        };
    }
    match group_size.extract::<i64>() {
        Ok(g) if g > 0 => Ok(Granularity::Group(g as usize)),
        Ok(g) => Err(ShapeError::new_err(format!(
            "group_size must be a positive int, 'channel' or 'tensor', got {g} \
             (write 'channel' for one scale per row, 'tensor' for one scale in all)"
        ))),
        Err(_) => Err(ShapeError::new_err(format!(
            "group_size must be a positive int, 'channel' or 'tensor', got {}",
            group_size.repr().map_or_else(|_| "?".to_string(), |r| r.to_string())
        ))),
    }
}

fn scale_dtype_of(name: &str) -> PyResult<ScaleDtype> {
    match name {
        "f16" | "float16" => Ok(ScaleDtype::F16),
        "f32" | "float32" => Ok(ScaleDtype::F32),
        other => Err(UnsupportedError::new_err(format!("scale_dtype must be 'f16' or 'f32', got {other:?}"))),
    }
}

fn clip_of(name: &str) -> PyResult<ClipSearch> {
    match name {
        "minmax" => Ok(ClipSearch::MinMax),
        "mse" => Ok(ClipSearch::MSE_DEFAULT),
        other => Err(UnsupportedError::new_err(format!("clip must be 'minmax' or 'mse', got {other:?}"))),
    }
}

/// Quantizes a float32/float16 array (see `lowbit.quantize` for the documented interface).
#[pyfunction]
#[pyo3(signature = (weights, *, format="int", bits=4, group_size=GroupSize(Granularity::Group(128)), symmetric=false, scale_dtype="f16", clip="minmax", block_size=64, double_quant=false, allow_partial_group=false))]
#[allow(clippy::too_many_arguments)]
fn quantize(
    py: Python<'_>,
    weights: &Bound<'_, PyAny>,
    format: &str,
    bits: u32,
    group_size: GroupSize,
    symmetric: bool,
    scale_dtype: &str,
    clip: &str,
    block_size: usize,
    double_quant: bool,
    allow_partial_group: bool,
) -> PyResult<PyQTensor> {
    let input = float_input(weights)?;
    let shape = input.shape.clone();
    let scheme = match format {
        "int" => {
            let scheme = IntScheme {
                bits: Bits::try_from(bits).map_err(crate::errors::PyLowbitError::from)?,
                symmetric,
                granularity: group_size.0,
                scale_dtype: scale_dtype_of(scale_dtype)?,
                clip: clip_of(clip)?,
            };
            if !allow_partial_group {
                let cols = *shape.last().expect("rank checked");
                scheme.granularity.require_dividing(cols).map_err(crate::errors::PyLowbitError::from)?;
            }
            Scheme::Int(scheme)
        }
        "nf4" | "fp4" => {
            if bits != 4 {
                return Err(UnsupportedError::new_err(format!("{format} is a 4-bit format, got bits={bits}")));
            }
            let codebook = if format == "nf4" { Codebook::Nf4 } else { Codebook::Fp4 };
            Scheme::Codebook(CodebookScheme { codebook, block_size, double_quant })
        }
        other => return Err(UnsupportedError::new_err(format!("format must be 'int', 'nf4' or 'fp4', got {other:?}"))),
    };
    // Both dtypes are read in place; float16 rows are widened one at a time inside the quantizer.
    let result = match &input.array {
        FloatArray::F32(a) => {
            let data = a.as_slice()?;
            py.detach(|| lowbit_core::quantize(data, &shape, scheme))
        }
        FloatArray::F16(a) => {
            let data = a.as_slice()?;
            py.detach(|| lowbit_core::quantize(data, &shape, scheme))
        }
    };
    let inner: PyLowbitResult<QTensor> = result.map_err(Into::into);
    Ok(PyQTensor { inner: inner? })
}

/// Writes named QTensors (and string metadata) to a safetensors file, atomically.
#[pyfunction]
#[pyo3(signature = (path, tensors, metadata=None))]
fn save_tensors(
    py: Python<'_>,
    path: PathBuf,
    tensors: &Bound<'_, PyDict>,
    metadata: Option<BTreeMap<String, String>>,
) -> PyResult<()> {
    let mut named: Vec<(String, Py<PyQTensor>)> = Vec::with_capacity(tensors.len());
    for (k, v) in tensors.iter() {
        let qt =
            v.cast::<PyQTensor>().map_err(|_| UnsupportedError::new_err(format!("tensors[{k}] is not a QTensor")))?;
        named.push((k.extract()?, qt.clone().unbind()));
    }
    let metadata = metadata.unwrap_or_default();
    let refs: Vec<(&str, &QTensor)> = named.iter().map(|(n, t)| (n.as_str(), &t.get().inner)).collect();
    let result: PyLowbitResult<()> = py.detach(|| io::save(&path, refs, &metadata)).map_err(Into::into);
    Ok(result?)
}

/// Tensors by name and the file's other metadata.
type LoadedTensors = (BTreeMap<String, Py<PyQTensor>>, BTreeMap<String, String>);

/// Reads a file written by `save_tensors`: returns `(tensors, metadata)`.
#[pyfunction]
fn load_tensors(py: Python<'_>, path: PathBuf) -> PyResult<LoadedTensors> {
    let loaded: PyLowbitResult<io::Loaded> = py.detach(|| io::load(&path)).map_err(Into::into);
    let loaded = loaded?;
    let tensors = loaded
        .tensors
        .into_iter()
        .map(|(k, inner)| Ok((k, Py::new(py, PyQTensor { inner })?)))
        .collect::<PyResult<_>>()?;
    Ok((tensors, loaded.extra))
}

/// The NF4 and FP4 tables, for tests and inspection.
#[pyfunction]
fn codebook_table(name: &str) -> PyResult<Vec<f32>> {
    match name {
        "nf4" => Ok(codebook::NF4.to_vec()),
        "fp4" => Ok(codebook::FP4.to_vec()),
        other => Err(UnsupportedError::new_err(format!("unknown codebook {other:?}"))),
    }
}

/// Reconstructs double-quantized absmax values from their parts (for tests).
#[pyfunction]
fn double_quantize_absmax(absmax: Vec<f32>) -> (Vec<f32>, Vec<f32>) {
    let dq = Absmax::double_quantize(&absmax);
    let Absmax::Double { scales, .. } = &dq else { unreachable!("double_quantize returns Double") };
    ((0..absmax.len()).map(|i| dq.get(i)).collect(), scales.clone())
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyQTensor>()?;
    m.add_function(wrap_pyfunction!(quantize, m)?)?;
    m.add_function(wrap_pyfunction!(save_tensors, m)?)?;
    m.add_function(wrap_pyfunction!(load_tensors, m)?)?;
    m.add_function(wrap_pyfunction!(codebook_table, m)?)?;
    m.add_function(wrap_pyfunction!(double_quantize_absmax, m)?)?;
    Ok(())
}
