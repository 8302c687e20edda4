//! What a solver reports about each layer (it never prints).

use crate::linalg::Damping;

/// The outcome of quantizing one layer (or one group of layers sharing an input).
#[derive(Clone, Debug, PartialEq)]
pub struct LayerReport {
    /// The method's name (`rtn`, `gptq`, `awq`, `smoothquant`).
    pub method: &'static str,
    /// The method's own loss:
    /// GPTQ: `sum_rows sum_cols (w - q)^2 / [H^-1]_cc^2 / 2` over the Cholesky factor's diagonal,
    /// exactly what the GPTQ reference prints as `error`;
    /// RTN: `sum (w - q)^2`;
    /// AWQ: mean squared output error of the chosen scales;
    /// SmoothQuant: `sum (W - Q(W diag(s)) diag(s)^-1)^2`, the int8 weight error in original units.
    pub loss: f64,
    /// The damping used (GPTQ only).
    pub damping: Option<Damping>,
    /// Inputs whose Hessian diagonal was 0 (their weight columns were zeroed, as GPTQ does).
    pub dead_inputs: usize,
    /// Wall time of the solve, seconds (Hessian accumulation excluded).
    pub seconds: f64,
}
