//! Round-to-nearest as a solver: lowbit-core's RTN behind the same report as the calibrated
//! methods, so the pipeline treats every method alike.

use crate::method::{CalibShape, Group, GroupSolution, MethodInfo, NoStatistics, QuantMethod, SolvedLayer, Statistics};
use crate::report::LayerReport;
use crate::{Result, SolverError};
use lowbit_core::clock::Instant;
use lowbit_core::{codebook, rtn, ClipSearch, CodebookScheme, IntScheme, QTensor, Scheme};
use serde_json::{Map, Value};

/// The range search of GPTQ's reference `mse` quantizer: 100 steps down to 20% of the range.
pub const MSE_CLIP: ClipSearch = ClipSearch::Mse { grid: 100, max_shrink: 0.8 };

/// RTN as a pipeline method.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RtnMethod {
    /// Choose each group's range by the least squared reconstruction error ([`MSE_CLIP`])
    /// instead of min-max (off: RTN is the plain baseline).
    pub mse_clip: bool,
}

/// `scheme` with min-max ranges, or [`MSE_CLIP`] when `mse`.
pub fn with_clip(scheme: IntScheme, mse: bool) -> IntScheme {
    IntScheme { clip: if mse { MSE_CLIP } else { ClipSearch::MinMax }, ..scheme }
}

/// The manifest's name of the range search.
pub(crate) fn clip_param(mse: bool) -> Value {
    if mse { "mse (grid 100, max_shrink 0.8)" } else { "minmax" }.into()
}

impl QuantMethod for RtnMethod {
    fn info(&self) -> MethodInfo {
        MethodInfo { name: "rtn", aliases: &[], calibrated: false }
    }
    fn validate(&self, scheme: &Scheme) -> Result<()> {
        if matches!(scheme, Scheme::RowLut(_)) {
            return Err(crate::method::no_row_codebooks("rtn"));
        }
        if self.mse_clip && matches!(scheme, Scheme::Codebook(_)) {
            return Err(SolverError::param(
                "mse_clip",
                true,
                "nf4/fp4 blocks are scaled by their absmax: no range search",
            ));
        }
        Ok(())
    }
    fn params(&self, _calib: CalibShape) -> Map<String, Value> {
        Map::from_iter([("clip".to_string(), clip_param(self.mse_clip))])
    }
    fn statistics(&self, _cols: usize, _calib: CalibShape) -> Box<dyn Statistics> {
        Box::new(NoStatistics)
    }
    fn solve_group(&self, group: &Group, _stats: &dyn Statistics) -> Result<GroupSolution> {
        let layers = match group.scheme {
            Scheme::Int(s) => rtn_layers(group, with_clip(s, self.mse_clip))?,
            Scheme::Codebook(c) => codebook_layers(group, c)?,
            Scheme::RowLut(_) => return Err(crate::method::no_row_codebooks("rtn")),
        };
        Ok(GroupSolution { layers, fold: None, int8_activations: false })
    }
}

/// Every layer of `group` rounded to nearest under `scheme`, each on its own (RTN, and
/// SmoothQuant's layers with nowhere to fold).
pub(crate) fn rtn_layers(group: &Group, scheme: IntScheme) -> Result<Vec<SolvedLayer>> {
    group
        .layers
        .iter()
        .map(|l| {
            let out = rtn_quantize(l.w, l.rows, group.cols, scheme)?;
            Ok(SolvedLayer { qtensor: out.qtensor, report: out.report, alpha: None })
        })
        .collect()
}

/// Every layer of `group` in a codebook (QLoRA's NF4/FP4 quantization: nearest entry per weight).
fn codebook_layers(group: &Group, scheme: CodebookScheme) -> Result<Vec<SolvedLayer>> {
    group
        .layers
        .iter()
        .map(|l| {
            let start = Instant::now();
            let qtensor = codebook::quantize(l.w, &[l.rows, group.cols], scheme)?;
            let loss = squared_error(l.w, &qtensor.dequantize());
            let seconds = start.elapsed().as_secs_f64();
            let report = LayerReport { method: "rtn", loss, damping: None, dead_inputs: 0, seconds };
            Ok(SolvedLayer { qtensor, report, alpha: None })
        })
        .collect()
}

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
    let report =
        LayerReport { method: "rtn", loss, damping: None, dead_inputs: 0, seconds: start.elapsed().as_secs_f64() };
    Ok(RtnOutput { qtensor, report })
}

/// `sum (a - b)^2` in f64.
pub fn squared_error(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2)).sum()
}
