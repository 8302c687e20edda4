//! LLM.int8() (Dettmers et al. 2022, "LLM.int8(): 8-bit Matrix Multiplication for Transformers
//! at Scale", §3): vector-wise int8 quantization with a mixed-precision decomposition.
//!
//! * Weights: one absmax scale per output row, symmetric int8 (`scale_r = max_c |W_rc| / 127`,
//!   codes in `[-127, 127]`, as bitsandbytes' `CB` and `SCB`); no calibration.
//! * Activations, at run time: one absmax scale per token (row of `X`), int8.
//! * Decomposition, at run time, per batch: the input columns `O` where any `|X_tc| >= t`
//!   (`t` = 6.0 in the paper and in bitsandbytes) are multiplied in floating point,
//!   `X[:, O] · (W[:, O] dequantized)ᵀ`, the others in int8 with exact i32 sums; the per-token
//!   scales are taken over the non-outlier columns, which is what keeps the int8 part precise.
//!
//! The solve here only produces the int8 weights; the decomposition runs in lowbit-cpu's
//! `Int8Linear` (its outlier threshold), which the pipeline and the loader switch on from
//! [`QuantMethod::int8_outlier_threshold`] and the saved `quantization_config.outlier_threshold`.

use crate::method::{int_scheme, CalibShape, Group, GroupSolution, MethodInfo, NoStatistics, QuantMethod, Statistics};
use crate::rtn::rtn_layers;
use crate::{Result, SolverError};
use lowbit_core::{Bits, ClipSearch, Granularity, IntScheme, ScaleDtype, Scheme};
use serde_json::{Map, Value};

/// The paper's and bitsandbytes' outlier threshold.
pub const DEFAULT_OUTLIER_THRESHOLD: f32 = 6.0;

/// LLM.int8() as a pipeline method.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LlmInt8Method {
    /// Input columns with any `|x| >= outlier_threshold` in a batch run in floating point
    /// (6.0); `+inf` turns the decomposition off (plain vector-wise W8A8).
    pub outlier_threshold: f32,
}

impl Default for LlmInt8Method {
    fn default() -> Self {
        LlmInt8Method { outlier_threshold: DEFAULT_OUTLIER_THRESHOLD }
    }
}

impl LlmInt8Method {
    /// The weight scheme: 8-bit, symmetric, per output row, absmax, f32 scales (the int8
    /// kernels read f32).
    pub fn weight_scheme() -> IntScheme {
        IntScheme {
            bits: Bits::B8,
            symmetric: true,
            granularity: Granularity::PerChannel,
            scale_dtype: ScaleDtype::F32,
            clip: ClipSearch::MinMax,
        }
    }
}

impl QuantMethod for LlmInt8Method {
    fn info(&self) -> MethodInfo {
        MethodInfo { name: "llm-int8", aliases: &["llm_int8", "int8"], calibrated: false }
    }
    fn validate(&self, scheme: &Scheme) -> Result<()> {
        let scheme = int_scheme(scheme, "llm-int8")?;
        if scheme.bits != Bits::B8 || scheme.granularity != Granularity::PerChannel || !scheme.symmetric {
            return Err(SolverError::param(
                "scheme",
                format!("{}-bit {:?}, symmetric {}", scheme.bits.get(), scheme.granularity, scheme.symmetric),
                "llm-int8 is vector-wise int8: bits 8, per-channel (no group size), symmetric",
            ));
        }
        if self.outlier_threshold.is_nan() || self.outlier_threshold <= 0.0 {
            return Err(SolverError::param(
                "outlier_threshold",
                self.outlier_threshold,
                "it must be a positive number (6.0 in the paper; inf turns the decomposition off)",
            ));
        }
        Ok(())
    }
    fn params(&self, _calib: CalibShape) -> Map<String, Value> {
        let t = self.outlier_threshold;
        let activations = if t.is_finite() {
            "int8 per-token dynamic, mixed-precision decomposition"
        } else {
            "int8 per-token dynamic"
        };
        // +inf is JSON null: no decomposition.
        Map::from_iter([
            ("outlier_threshold".to_string(), if t.is_finite() { f64::from(t).into() } else { Value::Null }),
            ("activations".to_string(), activations.into()),
        ])
    }
    fn statistics(&self, _cols: usize, _calib: CalibShape) -> Box<dyn Statistics> {
        Box::new(NoStatistics)
    }
    fn solve_group(&self, group: &Group, _stats: &dyn Statistics) -> Result<GroupSolution> {
        let layers = rtn_layers(group, Self::weight_scheme())?;
        Ok(GroupSolution { layers, fold: None, int8_activations: true })
    }
    fn int8_outlier_threshold(&self) -> Option<f32> {
        Some(self.outlier_threshold).filter(|t| t.is_finite())
    }
}
