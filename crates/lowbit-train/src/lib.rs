//! Gradients for quantization-aware training, without PyTorch.
//!
//! [`ops`] holds each operation of a Llama block with its backward pass (linear, RMSNorm,
//! rotate-half RoPE, causal grouped-query attention, the SiLU-gated product); [`block`] chains
//! them into a block's forward pass, which records what the backward pass needs, and its
//! backward pass. Quantization enters through the weights: [`block::BlockWeights::on_grids`]
//! replaces every linear weight by exactly what lowbit stores and the kernels compute with
//! (`lowbit_core` quantize, then dequantize), and the gradients with respect to those weights are
//! applied to the f32 originals (the straight-through estimator).
//!
//! [`grid`] holds the quantization grids whose scales and zero points training moves (LSQ's
//! straight-through gradients). [`train`] runs the first stage of QAT on one block: block-wise
//! reconstruction of the full-precision block's outputs with AdamW, weights and grids together.
//! [`distill`] runs the second: end-to-end tuning of only the scales, with the KL divergence to
//! the full-precision model's next-token distribution, under gradient checkpointing.
//!
//! Everything is f32, row-major, `[tokens, features]`. The tests check every gradient against
//! central finite differences.

pub mod block;
pub mod distill;
pub mod grid;
pub mod ops;
pub mod train;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A buffer of the wrong length.
    #[error("{what}: expected {expected} values, got {got}")]
    Shape { what: &'static str, expected: usize, got: usize },
    /// The caller stopped the training (Ctrl-C, or its checkpoint failed).
    #[error("{0}")]
    Interrupted(String),
    /// The quantization of a weight failed (non-finite values, a scheme that does not fit).
    #[error(transparent)]
    Core(#[from] lowbit_core::CoreError),
}

/// This crate's result.
pub type Result<T> = std::result::Result<T, TrainError>;

pub(crate) fn check_len(what: &'static str, v: &[f32], expected: usize) -> Result<()> {
    if v.len() == expected {
        Ok(())
    } else {
        Err(TrainError::Shape { what, expected, got: v.len() })
    }
}
