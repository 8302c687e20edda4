//! lowbit-solvers: calibrated post-training quantization of linear layers, in the papers'
//! notation (`W[rows = out, cols = in]`, activations `X[cols, N]`, `H = 2/N X X^T`, `H^-1`, `Q`,
//! `err`).
//!
//! * [`hessian`]: GPTQ's Hessian, accumulated batch by batch (symmetric rank-k updates, f64).
//! * [`linalg`]: the damped Cholesky factor of `H^-1`, with automatic damping escalation.
//! * [`gptq`]: GPTQ (Frantar et al. 2022) with lazy batches, groups, act-order, static groups.
//! * [`awq`]: AWQ's activation-aware scale search and clipping search (Lin et al. 2023).
//! * [`smoothquant`]: SmoothQuant's smoothing factors and W8A8 reference (Xiao et al. 2022).
//! * [`llm_int8`]: LLM.int8()'s vector-wise int8 weights (Dettmers et al. 2022); its
//!   mixed-precision decomposition runs in lowbit-cpu.
//! * [`hqq`]: HQQ's calibration-free zero-point optimization (Badri & Shaji 2023), float zeros.
//! * [`spqr`]: SpQR (Dettmers et al. 2023): GPTQ with small groups, 3-bit quantized group
//!   statistics and f16 sparse outliers.
//! * [`rtn`]: round-to-nearest behind the same report.
//! * [`method`]: the seam a whole-model pipeline drives: [`MethodConfig`], one arm per method,
//!   each with its own settings ([`RtnMethod`], [`GptqMethod`], [`AwqMethod`],
//!   [`SmoothQuantMethod`], [`LlmInt8Method`], [`HqqMethod`], [`SpqrMethod`]) implementing
//!   [`QuantMethod`].
//!
//! Every solver returns a [`LayerReport`]; none prints. Outputs are plain lowbit
//! [`lowbit_core::QTensor`]s in the original column order.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod awq;
mod error;
pub mod gptq;
pub mod hessian;
pub mod hqq;
pub mod linalg;
pub mod llm_int8;
pub mod method;
mod par;
pub mod report;
pub mod rtn;
pub mod smoothquant;
pub mod spqr;
pub mod squeezellm;

pub use awq::AwqMethod;
pub use error::{Result, SolverError};
pub use gptq::{gptq_quantize, GptqConfig, GptqMethod, GptqOutput};
pub use hessian::{Hessian, HessianPrecision};
pub use hqq::HqqMethod;
pub use linalg::{Damping, DampingConfig};
pub use llm_int8::LlmInt8Method;
pub use method::{
    CalibShape, FoldTarget, Group, GroupLayer, GroupSolution, LayerWeight, MethodConfig, MethodInfo, QuantMethod, Role,
    SolvedLayer, Statistics,
};
pub use report::LayerReport;
pub use rtn::{rtn_quantize, RtnMethod, RtnOutput};
pub use smoothquant::SmoothQuantMethod;
pub use spqr::{spqr_quantize, SpqrConfig, SpqrMethod, SpqrOutput};
pub use squeezellm::{squeezellm_quantize, SqueezeLlmMethod, SqueezeLlmOutput};

/// `tr((W - Q) H (W - Q)^T)`: the GPTQ objective `(2/N) ||W X - Q X||_F^2` of a quantized
/// layer, for any method (`w`, `q` row-major `[rows, cols]`, e.g. `q` a dequantized tensor).
pub fn output_error(w: &[f32], q: &[f32], rows: usize, cols: usize, h: &Hessian) -> Result<f64> {
    Ok(output_error_rows(w, q, rows, cols, h)?.iter().sum())
}

/// [`output_error`] per output row: `(w_r - q_r) H (w_r - q_r)^T` (mixed precision weights
/// each row by how its output error reaches the residual stream).
pub fn output_error_rows(w: &[f32], q: &[f32], rows: usize, cols: usize, h: &Hessian) -> Result<Vec<f64>> {
    if w.len() != rows * cols || q.len() != rows * cols || h.cols() != cols {
        return Err(SolverError::shape(
            "output_error",
            format!("{rows}x{cols} weights and a {cols}-channel Hessian"),
            format!("{} and {} weights, {} channels", w.len(), q.len(), h.cols()),
        ));
    }
    let delta = faer::Mat::<f64>::from_fn(cols, rows, |c, r| f64::from(w[r * cols + c]) - f64::from(q[r * cols + c]));
    let hd = h.matrix() * &delta;
    Ok((0..rows).map(|r| delta.col(r).iter().zip(hd.col(r).iter()).map(|(a, b)| a * b).sum::<f64>()).collect())
}
