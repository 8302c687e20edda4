//! Round-to-nearest as a solver: lowbit-core's RTN behind the same report as the calibrated
//! methods, so the pipeline treats every method alike.

use crate::report::{LayerReport, Method};
use crate::{Result, SolverError};
use lowbit_core::{rtn, IntScheme, QTensor};
use std::time::Instant;

/// An RTN-quantized layer.
#[derive(Clone, Debug)]
pub struct RtnOutput {
    /// The quantized weight.
    pub qtensor: QTensor,
    /// `loss` is `sum (w - q)^2`.
    pub report: LayerReport,
}

/// Quantizes `w` (row-major `[rows, cols]`) with round-to-nearest.
pub fn rtn_quantize(w: &[f32], rows: usize, cols: usize, scheme: IntScheme) -> Result<RtnOutput> {
    let start = Instant::now();
    if w.len() != rows * cols {
        return Err(SolverError::shape("rtn weight", format!("{rows}x{cols} = {}", rows * cols), w.len()));
    }
    let qtensor = rtn::quantize(w, &[rows, cols], scheme)?;
    let loss = squared_error(w, &qtensor.dequantize());
    let report = LayerReport {
        method: Method::Rtn,
        loss,
        damping: None,
        dead_inputs: 0,
        seconds: start.elapsed().as_secs_f64(),
    };
    Ok(RtnOutput { qtensor, report })
}

/// `sum (a - b)^2` in f64.
pub fn squared_error(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2)).sum()
}
