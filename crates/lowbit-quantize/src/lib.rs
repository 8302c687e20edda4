//! lowbit-quantize: calibrated post-training quantization of whole models, the layer-by-layer
//! pipeline that drives `lowbit-solvers` (RTN, GPTQ, AWQ, SmoothQuant) over the staged decoder
//! block of `lowbit-model` ([`lowbit_model::block`]).
//!
//! * [`quantize_model`]: model path in, lowbit checkpoint directory out, with a report.
//! * [`calib`]: calibration windows (the protocol's by default), data-free sampling.
//! * [`spec`]: every option declared once, for Python and the CLI.
//! * [`mixed`] + [`allocate`]: mixed precision to a byte budget (sensitivity, exact knapsack).
//! * [`imatrix`]: llama.cpp's importance matrix over calibration windows (GGUF export).
#![deny(unsafe_code)]
#![deny(missing_docs)]

pub mod allocate;
pub mod calib;
mod checkpoint;
mod error;
pub mod imatrix;
pub mod mixed;
mod numpy_rng;
mod options;
mod output;
mod pipeline;
mod qat;
pub mod roles;
pub mod spec;
mod stash;

pub use calib::{windows_from_stream, CalibSource};
pub use error::{QuantizeError, Result};
pub use lowbit_solvers::MethodConfig;
pub use options::{peak_rss_bytes, LayerStat, QuantizeOptions, QuantizeReport, WeightFormat};
pub use output::MANIFEST_FILE;
pub use pipeline::{partial_dir, quantize_bytes, quantize_model, CHECKPOINT_INTERVAL};
pub use roles::TensorScheme;
