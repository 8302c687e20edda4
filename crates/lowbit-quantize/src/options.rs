//! What the user asks of the pipeline, what it reports back, and how it reports progress.

use crate::calib::CalibSource;
use crate::{QuantizeError, Result};
use lowbit_core::{Bits, ClipSearch, Granularity, IntScheme, ScaleDtype};
use serde::Serialize;
use serde_json::{json, Value};

/// The quantization method.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum QuantMethod {
    /// Round-to-nearest (no calibration).
    Rtn,
    /// GPTQ (Frantar et al. 2022), true-sequential.
    Gptq,
    /// AWQ (Lin et al. 2023): activation-aware scales folded into the preceding op, clip + RTN.
    Awq,
    /// SmoothQuant (Xiao et al. 2022) W8A8: smoothing folded into the norms, int8 per-channel
    /// weights (activations are quantized per token at run time).
    SmoothQuant,
}

impl QuantMethod {
    /// The lowercase name (`rtn`, `gptq`, `awq`, `smoothquant`).
    pub fn as_str(self) -> &'static str {
        match self {
            QuantMethod::Rtn => "rtn",
            QuantMethod::Gptq => "gptq",
            QuantMethod::Awq => "awq",
            QuantMethod::SmoothQuant => "smoothquant",
        }
    }
}

impl std::str::FromStr for QuantMethod {
    type Err = QuantizeError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "rtn" => Ok(QuantMethod::Rtn),
            "gptq" => Ok(QuantMethod::Gptq),
            "awq" => Ok(QuantMethod::Awq),
            "smoothquant" | "sq" => Ok(QuantMethod::SmoothQuant),
            _ => Err(QuantizeError::input(
                "quantize",
                format!("unknown method {s:?}: use rtn, gptq, awq or smoothquant"),
            )),
        }
    }
}

/// Options of [`crate::quantize_model`].
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizeOptions {
    /// The method.
    pub method: QuantMethod,
    /// Code width: 2, 3, 4 or 8 (SmoothQuant: 8).
    pub bits: u32,
    /// Group size along the input dimension; `None` = one scale per output channel.
    pub group_size: Option<usize>,
    /// Symmetric codes (no stored zero point).
    pub sym: bool,
    /// GPTQ: quantize columns by descending Hessian diagonal.
    pub act_order: bool,
    /// GPTQ: group parameters from the original weights before the sweep; `None` = on with
    /// act-order (the reference's "act-order + static groups"), off without.
    pub static_groups: Option<bool>,
    /// Storage of the group scales (f16, as GPTQ/AWQ checkpoints; f32 doubles their bytes).
    pub scale_dtype: ScaleDtype,
    /// GPTQ and RTN: choose each group's range by the least squared reconstruction error over
    /// shrunken ranges (the GPTQ reference's `mse` quantizer: 100 steps down to 20% of the range)
    /// instead of min-max. `None`: on for GPTQ (it closes most of the gap act-order leaves, see
    /// benches/README.md), off for RTN (the plain baseline).
    pub mse_clip: Option<bool>,
    /// GPTQ: relative damping (0.01).
    pub percdamp: f64,
    /// GPTQ: lazy-batch block size (128).
    pub block_size: usize,
    /// Calibration data (ignored by RTN). `None` is an error for the calibrated methods.
    pub calib: Option<CalibSource>,
    /// Calibration windows (128).
    pub nsamples: usize,
    /// Tokens per window (512).
    pub seqlen: usize,
    /// Seed of the window offsets (and of data-free sampling); 0 is the protocol.
    pub seed: u64,
    /// AWQ: windows (the first ones) whose statistics the scale and clip searches see (all 128
    /// by default; the reference AWQ used 32, its cost growing with the tokens, lowbit's does not).
    pub awq_samples: usize,
    /// SmoothQuant: migration strength alpha (0.5).
    pub sq_alpha: f32,
    /// Tokens per forward batch inside a block (bounds the temporaries).
    pub batch_tokens: usize,
    /// Continue from `<out>.partial/` when it holds a checkpoint of the same run.
    pub resume: bool,
    /// Testing and interruption hook: stop with an error after checkpointing this block
    /// (0-based), leaving the checkpoint for `resume`.
    pub stop_after_block: Option<usize>,
}

impl Default for QuantizeOptions {
    fn default() -> Self {
        QuantizeOptions {
            method: QuantMethod::Gptq,
            bits: 4,
            group_size: Some(128),
            sym: false,
            act_order: false,
            static_groups: None,
            mse_clip: None,
            scale_dtype: ScaleDtype::F16,
            percdamp: 0.01,
            block_size: 128,
            calib: None,
            nsamples: 128,
            seqlen: 512,
            seed: 0,
            awq_samples: 128,
            sq_alpha: 0.5,
            batch_tokens: 4096,
            resume: false,
            stop_after_block: None,
        }
    }
}

impl QuantizeOptions {
    /// The integer scheme every linear layer gets.
    pub fn scheme(&self) -> Result<IntScheme> {
        let bits = Bits::try_from(self.bits)?;
        if self.method == QuantMethod::SmoothQuant && (self.bits != 8 || self.group_size.is_some() || !self.sym) {
            return Err(QuantizeError::input(
                "quantize",
                "smoothquant is W8A8: bits 8, per-channel (no group size), symmetric",
            ));
        }
        let granularity = match self.group_size {
            None => Granularity::PerChannel,
            Some(0) => return Err(QuantizeError::input("quantize", "group_size must be positive")),
            Some(g) => Granularity::Group(g),
        };
        if self.mse_clip == Some(true) && !matches!(self.method, QuantMethod::Gptq | QuantMethod::Rtn) {
            return Err(QuantizeError::input(
                "quantize",
                "mse_clip applies to gptq and rtn (awq has its own clip search)",
            ));
        }
        let clip = if self.mse_clip() { ClipSearch::Mse { grid: 100, max_shrink: 0.8 } } else { ClipSearch::MinMax };
        Ok(IntScheme { bits, symmetric: self.sym, granularity, scale_dtype: self.scale_dtype, clip })
    }

    /// Whether group ranges come from the MSE search (see [`QuantizeOptions::mse_clip`]).
    pub fn mse_clip(&self) -> bool {
        self.mse_clip.unwrap_or(self.method == QuantMethod::Gptq)
    }

    /// Whether GPTQ uses static groups.
    pub fn static_groups(&self) -> bool {
        self.static_groups.unwrap_or(self.act_order)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        self.scheme()?;
        let bad = |r: String| Err(QuantizeError::input("quantize", r));
        if self.method != QuantMethod::Rtn {
            if self.nsamples == 0 || self.seqlen == 0 {
                return bad(format!("nsamples and seqlen must be positive, got {} x {}", self.nsamples, self.seqlen));
            }
            if self.calib.is_none() {
                return bad(format!(
                    "{} needs calibration data (a file, token ids, or data-free)",
                    self.method.as_str()
                ));
            }
        }
        if !(self.percdamp.is_finite() && self.percdamp >= 0.0) {
            return bad(format!("percdamp must be >= 0, got {}", self.percdamp));
        }
        if self.block_size == 0 || self.batch_tokens == 0 || self.awq_samples == 0 {
            return bad("block_size, batch_tokens and awq_samples must be positive".into());
        }
        if !(self.sq_alpha.is_finite() && (0.0..=1.0).contains(&self.sq_alpha)) {
            return bad(format!("sq_alpha must be in [0, 1], got {}", self.sq_alpha));
        }
        Ok(())
    }

    /// The method's parameters as JSON (manifest, `quantization_config`, resume fingerprint).
    pub fn params_json(&self) -> Value {
        let mut v = json!({
            "method": self.method.as_str(),
            "bits": self.bits,
            "group_size": self.group_size.map_or(-1, |g| g as i64),
            "sym": self.sym,
            "scale_dtype": match self.scale_dtype {
                ScaleDtype::F16 => "f16",
                ScaleDtype::F32 => "f32",
            },
        });
        if matches!(self.method, QuantMethod::Gptq | QuantMethod::Rtn) {
            v["clip"] = if self.mse_clip() { "mse (grid 100, max_shrink 0.8)" } else { "minmax" }.into();
        }
        match self.method {
            QuantMethod::Rtn => {}
            QuantMethod::Gptq => {
                v["desc_act"] = self.act_order.into();
                v["static_groups"] = self.static_groups().into();
                v["damp_percent"] = self.percdamp.into();
                v["block_size"] = self.block_size.into();
                v["true_sequential"] = true.into();
            }
            QuantMethod::Awq => {
                v["awq_samples"] = self.awq_samples.min(self.nsamples).into();
                v["n_grid"] = 20.into();
                v["clip"] = "llm-awq auto_clip (not q/k), grid 20, max_shrink 0.5, 512 tokens".into();
            }
            QuantMethod::SmoothQuant => {
                v["alpha"] = f64::from(self.sq_alpha).into();
                v["activations"] = "int8 per-token dynamic".into();
            }
        }
        if self.method != QuantMethod::Rtn {
            v["nsamples"] = self.nsamples.into();
            v["seqlen"] = self.seqlen.into();
            v["seed"] = self.seed.into();
            v["calibration"] = self.calib.as_ref().map(|c| c.describe()).into();
        }
        v
    }
}

/// What the pipeline is doing, for progress bars.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Building the calibration windows (and, data-free, sampling them).
    Calibrating,
    /// A block was quantized.
    Block,
    /// Writing the output directory.
    Writing,
}

/// One progress event.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Progress {
    /// The stage.
    pub stage: Stage,
    /// Blocks done.
    pub done: usize,
    /// Blocks in the model.
    pub total: usize,
    /// Mean loss of the block just finished (0 outside `Block`).
    pub loss: f64,
    /// Seconds since the start.
    pub elapsed: f64,
    /// Estimated seconds left for the remaining blocks.
    pub eta: f64,
}

/// The outcome for one linear layer.
#[derive(Clone, Debug, PartialEq, Serialize, serde::Deserialize)]
pub struct LayerStat {
    /// Block index.
    pub block: usize,
    /// Name inside the block (`self_attn.q_proj`, ...).
    pub name: String,
    /// The solver's loss (see `lowbit_solvers::LayerReport::loss`; for AWQ the group's mean
    /// squared output error).
    pub loss: f64,
    /// GPTQ: the damping used, relative to `mean(diag H)`.
    pub damping: Option<f64>,
    /// GPTQ: how often the damping had to be raised.
    pub damping_raises: u32,
    /// Inputs with a zero Hessian diagonal.
    pub dead_inputs: usize,
    /// AWQ: the chosen alpha (`None` where no scales were searched).
    pub alpha: Option<f32>,
    /// Seconds of the solve (shared layers: the group's).
    pub seconds: f64,
}

/// What [`crate::quantize_model`] did.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct QuantizeReport {
    /// The output directory.
    pub out: String,
    /// The method's parameters (also in the manifest).
    pub params: Value,
    /// Per linear layer, in block then layer order.
    pub layers: Vec<LayerStat>,
    /// SHA-256 of the calibration token ids (u32 little-endian), when calibrated.
    pub calib_sha256: Option<String>,
    /// Calibration tokens used.
    pub calib_tokens: usize,
    /// Seconds building calibration windows.
    pub calib_seconds: f64,
    /// Seconds in the blocks (this run; a resumed run counts only its own blocks).
    pub quantize_seconds: f64,
    /// Whole call, seconds.
    pub wall_seconds: f64,
    /// Peak resident memory of the process (VmHWM), bytes; `None` where unknown.
    pub peak_rss_bytes: Option<u64>,
    /// Bytes of the block linears before (as loaded, f32) and after quantization.
    pub linear_bytes_before: usize,
    /// Bytes after (codes + scales + zeros).
    pub linear_bytes_after: usize,
    /// Stored bits per block-linear weight after quantization.
    pub bits_per_weight: f64,
    /// Bytes of the written directory.
    pub out_bytes: u64,
    /// The first block this run computed (non-zero when resumed).
    pub resumed_from_block: usize,
    /// Caveats (e.g. AWQ o_proj scales skipped under GQA).
    pub notes: Vec<String>,
}

impl QuantizeReport {
    /// Mean of the per-layer losses.
    pub fn mean_loss(&self) -> f64 {
        self.layers.iter().map(|l| l.loss).sum::<f64>() / self.layers.len().max(1) as f64
    }
    /// The worst layer.
    pub fn worst_layer(&self) -> Option<&LayerStat> {
        self.layers.iter().max_by(|a, b| a.loss.total_cmp(&b.loss))
    }
}

/// Peak resident set size of this process (`VmHWM` in `/proc/self/status`), bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
