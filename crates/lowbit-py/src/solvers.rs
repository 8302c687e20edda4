//! GPTQ and AWQ at the layer level (the solvers the quantization pipeline drives).

use crate::arrays::f32_input;
use crate::errors::{PyLowbitError, ShapeError};
use crate::qtensor::GroupSize;
use lowbit_core::pack::unpack;
use lowbit_core::{Bits, ClipSearch, IntScheme, QTensor, ScaleDtype};
use lowbit_solvers::awq::{awq_quantize, AwqConfig, AwqStats};
use lowbit_solvers::LayerWeight;
use lowbit_solvers::{gptq_quantize, DampingConfig, GptqConfig, Hessian};
use numpy::{IntoPyArray, PyArrayMethods, PyReadonlyArray2};
use pyo3::prelude::*;
use pyo3::types::PyDict;

fn scheme(bits: u32, group_size: GroupSize, symmetric: bool) -> PyResult<IntScheme> {
    let bits = Bits::try_from(bits).map_err(PyLowbitError::from)?;
    Ok(IntScheme { bits, symmetric, granularity: group_size.0, scale_dtype: ScaleDtype::F16, clip: ClipSearch::MinMax })
}

/// (codes u8 [rows, cols], scales f32 [rows, groups], zeros u8 [rows, groups]) of an int QTensor.
/// Codes, scales and zeros as numpy arrays.
type Unpacked<'py> = (Bound<'py, PyAny>, Bound<'py, PyAny>, Bound<'py, PyAny>);
/// `(codes, scales, zeros, loss)`.
type GptqResult<'py> = (Bound<'py, PyAny>, Bound<'py, PyAny>, Bound<'py, PyAny>, f64);

fn unpacked<'py>(py: Python<'py>, qt: &QTensor) -> PyResult<Unpacked<'py>> {
    let (rows, cols) = qt.matrix_dims();
    let lowbit_core::Scheme::Int(s) = *qt.scheme() else { unreachable!("solvers return integer tensors") };
    let codes = unpack(qt.codes(), s.bits, rows * cols).map_err(PyLowbitError::from)?;
    let params = qt.group_params().expect("integer tensor");
    let groups = params.len() / rows;
    let scales: Vec<f32> = params.iter().map(|p| p.scale).collect();
    let zeros: Vec<u8> = params.iter().map(|p| p.zero).collect();
    Ok((
        codes.into_pyarray(py).reshape([rows, cols])?.into_any(),
        scales.into_pyarray(py).reshape([rows, groups])?.into_any(),
        zeros.into_pyarray(py).reshape([rows, groups])?.into_any(),
    ))
}

/// gptq_quantize(weight, hessian, bits, group_size, symmetric, act_order=False, static_groups=False,
///               percdamp=0.01, block_size=128) -> (codes, scales, zeros, loss)
///
/// weight: float32 [rows, cols]; hessian: float64 (or float32) [cols, cols], symmetric
/// (e.g. 2/N X^T X). group_size: a positive int, "channel" or "tensor". Codes are unpacked, original column order.
#[pyfunction]
#[pyo3(name = "gptq_quantize", signature = (weight, hessian, bits, group_size, symmetric, act_order=false, static_groups=false, percdamp=0.01, block_size=128))]
#[allow(clippy::too_many_arguments)]
fn gptq_quantize_py<'py>(
    py: Python<'py>,
    weight: &Bound<'py, PyAny>,
    hessian: &Bound<'py, PyAny>,
    bits: u32,
    group_size: GroupSize,
    symmetric: bool,
    act_order: bool,
    static_groups: bool,
    percdamp: f64,
    block_size: usize,
) -> PyResult<GptqResult<'py>> {
    let w = f32_input(weight)?;
    let [rows, cols] = w.shape[..] else { return Err(ShapeError::new_err("weight must be 2-D [rows, cols]")) };
    // f64 Hessian (a float32 one is widened: one copy).
    let h: Vec<f64> = match hessian.extract::<PyReadonlyArray2<f64>>() {
        Ok(a) => a.as_array().iter().copied().collect(),
        Err(_) => hessian.extract::<PyReadonlyArray2<f32>>()?.as_array().iter().map(|&v| f64::from(v)).collect(),
    };
    if h.len() != cols * cols {
        return Err(ShapeError::new_err(format!("hessian must be [{cols}, {cols}]")));
    }
    let cfg = GptqConfig {
        scheme: scheme(bits, group_size, symmetric)?,
        codebook: None,
        act_order,
        static_groups,
        block_size,
        damping: DampingConfig { percdamp, ..Default::default() },
    };
    let data = w.data();
    // tokens = 1: the count only guards against an empty Hessian; GPTQ is invariant to H's scale.
    let out = py
        .detach(|| Hessian::from_matrix(cols, &h, 1).and_then(|hs| gptq_quantize(data, rows, cols, &hs, &cfg)))
        .map_err(PyLowbitError::from)?;
    let (codes, scales, zeros) = unpacked(py, &out.qtensor)?;
    Ok((codes, scales, zeros, out.report.loss))
}

/// awq_search(x, weights, bits, group_size, symmetric, n_grid=20, clip=True, max_shrink=0.5,
///            clip_grid=20) -> dict
///
/// x: float32 [tokens, cols]; weights: list of float32 [rows_i, cols]. Returns
/// {"alpha", "scales" f32 [cols], "grid_losses" list[float], "clip" list of f32 [rows_i, groups],
///  "codes"/"qscales"/"zeros" lists of per-layer arrays as in gptq_quantize, "loss"}.
#[pyfunction]
#[pyo3(name = "awq_search", signature = (x, weights, bits, group_size, symmetric, n_grid=20, clip=true, max_shrink=0.5, clip_grid=20))]
#[allow(clippy::too_many_arguments)]
fn awq_search_py<'py>(
    py: Python<'py>,
    x: &Bound<'py, PyAny>,
    weights: Vec<Bound<'py, PyAny>>,
    bits: u32,
    group_size: GroupSize,
    symmetric: bool,
    n_grid: usize,
    clip: bool,
    max_shrink: f32,
    clip_grid: usize,
) -> PyResult<Bound<'py, PyDict>> {
    let xi = f32_input(x)?;
    let [tokens, cols] = xi.shape[..] else { return Err(ShapeError::new_err("x must be 2-D [tokens, cols]")) };
    let ws = weights.iter().map(f32_input).collect::<PyResult<Vec<_>>>()?;
    let mut layers = Vec::with_capacity(ws.len());
    for w in &ws {
        let [rows, c] = w.shape[..] else { return Err(ShapeError::new_err("each weight must be 2-D")) };
        if c != cols {
            return Err(ShapeError::new_err(format!("weight has {c} columns, x has {cols}")));
        }
        layers.push(LayerWeight { w: w.data(), rows });
    }
    let cfg =
        AwqConfig { scheme: scheme(bits, group_size, symmetric)?, n_grid, clip, clip_grid, max_shrink, tie: None };
    let xd = xi.data();
    let out = py
        .detach(|| AwqStats::from_activations(xd, tokens, cols).and_then(|st| awq_quantize(&st, &layers, &cfg)))
        .map_err(PyLowbitError::from)?;
    let d = PyDict::new(py);
    d.set_item("alpha", out.alpha)?;
    d.set_item("scales", out.scales.clone().into_pyarray(py))?;
    d.set_item("grid_losses", out.grid_losses.clone())?;
    d.set_item("loss", out.report.loss)?;
    let (mut codes, mut qscales, mut zeros, mut clips) = (vec![], vec![], vec![], vec![]);
    for (qt, bounds) in out.qtensors.iter().zip(&out.clip) {
        let (c, s, z) = unpacked(py, qt)?;
        let groups = bounds.len() / qt.matrix_dims().0;
        clips.push(bounds.clone().into_pyarray(py).reshape([qt.matrix_dims().0, groups])?);
        codes.push(c);
        qscales.push(s);
        zeros.push(z);
    }
    d.set_item("codes", codes)?;
    d.set_item("qscales", qscales)?;
    d.set_item("zeros", zeros)?;
    d.set_item("clip", clips)?;
    Ok(d)
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(gptq_quantize_py, m)?)?;
    m.add_function(wrap_pyfunction!(awq_search_py, m)?)?;
    Ok(())
}
