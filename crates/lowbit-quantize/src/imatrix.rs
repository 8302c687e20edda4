//! The importance matrix for GGUF export (`lowbit export --imatrix-text`): calibration windows
//! drawn as the pipeline draws them ([`crate::calib`]), then `lowbit_model::collect_imatrix`.

use crate::calib::{calibration_windows, token_file_window_len};
use crate::{CalibSource, Result};
use lowbit_core::progress::Progress;
use lowbit_model::{collect_imatrix, Imatrix, Model};

/// Windows an importance matrix is computed over by default: 32 of 512 tokens (`llama-imatrix`
/// also runs 512-token chunks; 16k tokens settle the means of SmolLM2's columns to a few percent
/// and take about a minute on two cores).
pub const DEFAULT_IMATRIX_SAMPLES: usize = 32;
/// Tokens per importance-matrix window.
pub const IMATRIX_SEQLEN: usize = 512;

/// The importance matrix of `model` over `nsamples` windows of `seqlen` tokens drawn from `src`
/// with `seed` (phases `calibrate`, then `imatrix`); `seqlen` is capped at the model's context,
/// and a token file of windows (a 2-D array) gives its own.
pub fn imatrix(
    model: &Model,
    src: &CalibSource,
    nsamples: usize,
    seqlen: usize,
    seed: u64,
    progress: &mut dyn Progress,
) -> Result<Imatrix> {
    let seqlen = match src {
        CalibSource::TokenFile(p) => token_file_window_len(p)?.unwrap_or(seqlen),
        _ => seqlen,
    };
    let seqlen = seqlen.min(model.config().max_position_embeddings);
    let windows = calibration_windows(model, src, nsamples, seqlen, seed, progress)?;
    Ok(collect_imatrix(model, &windows, seqlen, progress)?)
}
