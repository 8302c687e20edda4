//! Calibrated post-training quantization of whole models: the layer-by-layer pipeline that
//! drives `lowbit-solvers` (RTN, GPTQ, AWQ, SmoothQuant) over the model's blocks.
//!
//! * [`quantize_model`]: model path in, lowbit checkpoint directory out, with a report.
//! * [`calib`]: calibration windows (the protocol's by default), data-free sampling.
//! * [`staged_logits`]: the staged block forward the pipeline runs, exposed for tests.

mod block;
pub mod calib;
mod checkpoint;
mod numpy_rng;
mod options;
mod output;
mod pipeline;
mod sha256;
mod stash;

pub use block::staged_logits;
pub use calib::{windows_from_stream, CalibSource};
pub use options::{peak_rss_bytes, LayerStat, QuantMethod, QuantizeOptions, QuantizeReport};
pub use output::MANIFEST_FILE;
pub use pipeline::{partial_dir, quantize_model};
