//! `quantize_model`: the layer-by-layer quantization pipeline of lowbit-quantize.

use crate::errors::PyLowbitResult;
use lowbit_quantize::{self as quantize, CalibSource, QuantMethod, QuantizeOptions};
use pyo3::prelude::*;
use std::path::PathBuf;

/// Quantizes the model at `model` into the lowbit checkpoint directory `out`; returns the report
/// as a JSON string. `progress(stage, done, total, loss, elapsed, eta)` is called per block.
#[pyfunction]
#[pyo3(signature = (model, out, *, method="gptq", bits=4, group_size=Some(128), sym=false, act_order=false,
    static_groups=None, mse_clip=None, scale_dtype="f16", calib=None, calib_ids=None, data_free=false, nsamples=128, seqlen=512, seed=0,
    percdamp=0.01, awq_samples=128, sq_alpha=0.5, resume=false, stop_after_block=None, progress=None))]
#[allow(clippy::too_many_arguments)]
fn quantize_model(
    py: Python<'_>,
    model: PathBuf,
    out: PathBuf,
    method: &str,
    bits: u32,
    group_size: Option<usize>,
    sym: bool,
    act_order: bool,
    static_groups: Option<bool>,
    mse_clip: Option<bool>,
    scale_dtype: &str,
    calib: Option<PathBuf>,
    calib_ids: Option<Vec<u32>>,
    data_free: bool,
    nsamples: usize,
    seqlen: usize,
    seed: u64,
    percdamp: f64,
    awq_samples: usize,
    sq_alpha: f32,
    resume: bool,
    stop_after_block: Option<usize>,
    progress: Option<Py<PyAny>>,
) -> PyResult<String> {
    let given = usize::from(calib.is_some()) + usize::from(calib_ids.is_some()) + usize::from(data_free);
    if given > 1 {
        return Err(crate::errors::ShapeError::new_err("give at most one of calib, calib_ids and data_free"));
    }
    let calib = match (calib, calib_ids, data_free) {
        (Some(p), _, _) => Some(CalibSource::from_path(p)),
        (_, Some(ids), _) => Some(CalibSource::Tokens(ids)),
        (_, _, true) => Some(CalibSource::DataFree),
        _ => None,
    };
    let method: QuantMethod = {
        let r: PyLowbitResult<QuantMethod> = method.parse().map_err(Into::into);
        r?
    };
    let opts = QuantizeOptions {
        method,
        bits,
        group_size,
        sym,
        act_order,
        static_groups,
        mse_clip,
        scale_dtype: match scale_dtype {
            "f16" => lowbit_core::ScaleDtype::F16,
            "f32" => lowbit_core::ScaleDtype::F32,
            other => {
                return Err(crate::errors::UnsupportedError::new_err(format!(
                    "scale_dtype must be \"f16\" or \"f32\", got {other:?}"
                )))
            }
        },
        percdamp,
        calib,
        nsamples,
        seqlen,
        seed,
        awq_samples,
        sq_alpha,
        resume,
        stop_after_block,
        ..QuantizeOptions::default()
    };
    let mut report = |p: quantize::Progress| {
        let Some(cb) = &progress else { return };
        let stage = match p.stage {
            quantize::Stage::Calibrating => "calibrating",
            quantize::Stage::Block => "block",
            quantize::Stage::Writing => "writing",
        };
        Python::attach(|py| {
            if PyErr::occurred(py) {
                return;
            }
            if let Err(e) = cb.call1(py, (stage, p.done, p.total, p.loss, p.elapsed, p.eta)) {
                e.restore(py);
            }
        });
    };
    let result = py.detach(|| quantize::quantize_model(&model, &out, &opts, &mut report));
    if let Some(err) = PyErr::take(py) {
        return Err(err);
    }
    let r: PyLowbitResult<_> = result.map_err(Into::into);
    Ok(serde_json::to_string(&r?).unwrap_or_default())
}

/// The calibration protocol's windows over a token stream (numpy's `default_rng(seed)` offsets).
#[pyfunction]
#[pyo3(signature = (ids, nsamples=128, seqlen=512, seed=0))]
fn calibration_windows(ids: Vec<u32>, nsamples: usize, seqlen: usize, seed: u64) -> PyResult<Vec<u32>> {
    let r: PyLowbitResult<_> = quantize::windows_from_stream(&ids, nsamples, seqlen, seed).map_err(Into::into);
    Ok(r?)
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(quantize_model, m)?)?;
    m.add_function(wrap_pyfunction!(calibration_windows, m)?)?;
    Ok(())
}
