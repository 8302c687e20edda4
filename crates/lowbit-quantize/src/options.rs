//! What the user asks of the pipeline and what it reports back.

use crate::calib::CalibSource;
use crate::roles::TensorScheme;
use crate::{QuantizeError, Result};
use lowbit_core::{Bits, ClipSearch, Codebook, CodebookScheme, Granularity, IntScheme, ScaleDtype, Scheme};
use lowbit_solvers::{CalibShape, MethodConfig};
use serde::Serialize;
use serde_json::{json, Value};

/// What the block linears' codes are.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightFormat {
    /// Integer codes with group scales (and zero points).
    #[default]
    Int,
    /// QLoRA's NormalFloat-4 codebook, scaled by each block's absmax.
    Nf4,
    /// FP4 (E2M1), scaled by each block's absmax.
    Fp4,
}

impl WeightFormat {
    /// The names, as the option table lists them.
    pub const NAMES: &'static [&'static str] = &["int", "nf4", "fp4"];

    /// The lowercase name.
    pub fn name(self) -> &'static str {
        Self::NAMES[self as usize]
    }

    /// The format called `name`.
    pub fn from_name(name: &str) -> std::result::Result<Self, String> {
        match name {
            "int" => Ok(WeightFormat::Int),
            "nf4" => Ok(WeightFormat::Nf4),
            "fp4" => Ok(WeightFormat::Fp4),
            other => Err(format!("expected int, nf4 or fp4, got {other:?}")),
        }
    }
}

/// Options of [`crate::quantize_model`]: the common ones, and the method with its own settings.
/// Python and the CLI set them through the table in [`crate::spec`].
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizeOptions {
    /// The method and its settings (with `qat`: the method training starts from).
    pub method: MethodConfig,
    /// `method="qat"`: quantization-aware training (both stages on by default) from `method`'s
    /// result.
    pub qat: bool,
    /// Code width: 2, 3, 4 or 8 (SmoothQuant: 8).
    pub bits: u32,
    /// Group size along the input dimension; `None` = one scale per output channel.
    pub group_size: Option<usize>,
    /// Symmetric codes (no stored zero point).
    pub sym: bool,
    /// Integer codes, or a 4-bit codebook (NF4/FP4: `bits` must be 4 and `group_size` is the
    /// absmax block; RTN and GPTQ).
    pub format: WeightFormat,
    /// NF4/FP4: quantize the block absmax values to 8 bits in blocks of 256 (QLoRA's double
    /// quantization).
    pub double_quant: bool,
    /// Storage of the group scales (f16, as GPTQ/AWQ checkpoints; f32 doubles their bytes).
    pub scale_dtype: ScaleDtype,
    /// Storage of the token embedding (int8 per channel: a quarter of f32, near-lossless).
    pub embed: TensorScheme,
    /// Storage of the LM head; `None`: as the embedding. A tied model stores one tensor, by
    /// `embed`.
    pub lm_head: Option<TensorScheme>,
    /// Calibration data (ignored by RTN). `None` is an error for the calibrated methods.
    pub calib: Option<CalibSource>,
    /// Calibration windows (128).
    pub nsamples: usize,
    /// Tokens per window (512).
    pub seqlen: usize,
    /// Seed of the window offsets (and of data-free sampling); 0 is the protocol.
    pub seed: u64,
    /// Tokens per forward batch inside a block (bounds the temporaries).
    pub batch_tokens: usize,
    /// Continue from `<out>.partial/` when it holds a checkpoint of the same run.
    pub resume: bool,
    /// Testing and interruption hook: stop with an error after checkpointing this block
    /// (0-based), leaving the checkpoint for `resume`.
    pub stop_after_block: Option<usize>,
    /// Mixed precision: choose bits and group size per block linear so that the block linears
    /// take this many stored bits per weight (`bits` and `group_size` are then not used; see
    /// [`crate::mixed`]).
    pub target_bpw: Option<f64>,
    /// Mixed precision: as `target_bpw`, the whole output directory at most this many bytes.
    pub max_size: Option<u64>,
    /// Quantization-aware refinement of every block after the method solved it (`crate::qat`):
    /// passes over the calibration windows; `None` = off.
    pub qat_epochs: Option<usize>,
    /// Its AdamW peak learning rate (cosine decay).
    pub qat_lr: f32,
    /// Its calibration windows per AdamW step (both stages).
    pub qat_batch: usize,
    /// Its learning rate of the grids' scales and zero points (LSQ); 0 keeps the base method's.
    pub qat_scale_lr: f32,
    /// The end-to-end stage after every block is done (`crate::qat::distill`): passes over its
    /// windows, tuning only the scales towards the full-precision model's next-token
    /// distributions (KL); `None` = off.
    pub qat_distill_epochs: Option<usize>,
    /// Its AdamW peak learning rate (cosine decay).
    pub qat_distill_lr: f32,
    /// Its calibration windows (the first of the run's).
    pub qat_distill_windows: usize,
}

impl Default for QuantizeOptions {
    fn default() -> Self {
        QuantizeOptions {
            method: MethodConfig::default(),
            qat: false,
            bits: 4,
            group_size: Some(128),
            sym: false,
            format: WeightFormat::Int,
            double_quant: false,
            scale_dtype: ScaleDtype::F16,
            embed: TensorScheme::Int { bits: Bits::B8, group: None },
            lm_head: None,
            calib: None,
            nsamples: 128,
            seqlen: 512,
            seed: 0,
            batch_tokens: 4096,
            resume: false,
            stop_after_block: None,
            target_bpw: None,
            max_size: None,
            qat_epochs: None,
            qat_lr: 1e-4,
            qat_batch: 2,
            qat_scale_lr: 0.0,
            qat_distill_epochs: None,
            qat_distill_lr: 1.5e-4,
            qat_distill_windows: 128,
        }
    }
}

impl QuantizeOptions {
    /// The common scheme: integer codes (min-max ranges; the method adds its own range search)
    /// or a codebook.
    pub fn scheme(&self) -> Result<Scheme> {
        let bad = |r: String| Err(QuantizeError::input("quantize", r));
        let scheme = match (self.format, self.double_quant) {
            (WeightFormat::Int, true) => return bad("double_quant applies to the nf4 and fp4 formats".into()),
            (WeightFormat::Int, false) => Scheme::Int(self.int_scheme()?),
            (format, double_quant) => {
                if self.bits != 4 {
                    return bad(format!("{} is a 4-bit codebook: bits must be 4, got {}", format.name(), self.bits));
                }
                let Some(block_size) = self.group_size.filter(|&g| g > 0) else {
                    return bad(format!(
                        "{} scales blocks of weights by their absmax: give a block size as group_size (QLoRA uses 64)",
                        format.name()
                    ));
                };
                let codebook = if format == WeightFormat::Nf4 { Codebook::Nf4 } else { Codebook::Fp4 };
                Scheme::Codebook(CodebookScheme { codebook, block_size, double_quant })
            }
        };
        let scheme = self.method.solver().scheme(scheme);
        self.method.solver().validate(&scheme).map_err(|e| QuantizeError::input("quantize", e.to_string()))?;
        Ok(scheme)
    }

    /// The integer scheme of `bits`, `group_size`, `sym` and `scale_dtype`.
    fn int_scheme(&self) -> Result<IntScheme> {
        let bits = Bits::try_from(self.bits)?;
        let granularity = match self.group_size {
            None => Granularity::PerChannel,
            Some(0) => return Err(QuantizeError::input("quantize", "group_size must be positive")),
            Some(g) => Granularity::Group(g),
        };
        Ok(IntScheme {
            bits,
            symmetric: self.sym,
            granularity,
            scale_dtype: self.scale_dtype,
            clip: ClipSearch::MinMax,
        })
    }

    /// Whether the run needs calibration data: the method's, or quantization-aware refinement.
    pub fn calibrated(&self) -> bool {
        self.method.solver().calibrated() || self.qat_epochs.is_some() || self.qat_distill_epochs.is_some()
    }

    /// What the method's statistics need to know about the calibration data.
    pub fn calib_shape(&self) -> CalibShape {
        CalibShape { nsamples: self.nsamples, seqlen: self.seqlen }
    }

    /// The mixed-precision budget, checked; `None`: one scheme for every layer.
    pub fn budget(&self) -> Result<Option<crate::mixed::Budget>> {
        let budget = crate::mixed::check_budget(self.target_bpw, self.max_size)?;
        if budget.is_some() {
            let bad = |r: String| Err(QuantizeError::input("mixed precision", r));
            if !matches!(self.method, MethodConfig::Rtn(_) | MethodConfig::Gptq(_)) {
                return bad(format!(
                    "target_bpw / max_size work with rtn and gptq (one scheme per layer), not {}",
                    self.method.name()
                ));
            }
            if self.format != WeightFormat::Int {
                return bad(format!("target_bpw / max_size choose integer schemes, not {}", self.format.name()));
            }
        }
        Ok(budget)
    }

    pub(crate) fn validate(&self) -> Result<()> {
        self.scheme()?;
        let bad = |r: String| Err(QuantizeError::input("quantize", r));
        if self.budget()?.is_some() {
            crate::mixed::require_calibration(self.calib.as_ref())?;
            if self.nsamples == 0 || self.seqlen == 0 {
                return bad(format!("nsamples and seqlen must be positive, got {} x {}", self.nsamples, self.seqlen));
            }
        }
        if self.qat_epochs.is_some() || self.qat_distill_epochs.is_some() {
            if self.qat_epochs == Some(0) || self.qat_distill_epochs == Some(0) {
                return bad(
                    "qat_epochs and qat_distill_epochs must be at least 1 (leave them unset for no training)".into()
                );
            }
            for (name, lr) in [("qat_lr", self.qat_lr), ("qat_distill_lr", self.qat_distill_lr)] {
                if !(lr.is_finite() && lr > 0.0) {
                    return bad(format!("{name} must be a positive number, got {lr}"));
                }
            }
            if !(self.qat_scale_lr.is_finite() && self.qat_scale_lr >= 0.0) {
                return bad(format!("qat_scale_lr must be 0 or a positive number, got {}", self.qat_scale_lr));
            }
            if self.qat_distill_windows == 0 {
                return bad("qat_distill_windows must be at least 1".into());
            }
            if self.qat_batch == 0 {
                return bad("qat_batch must be at least 1".into());
            }
            if !matches!(self.scheme()?, Scheme::Int(_)) {
                return bad("qat trains integer codes: use format int".into());
            }
        }
        if self.calibrated() {
            if self.nsamples == 0 || self.seqlen == 0 {
                return bad(format!("nsamples and seqlen must be positive, got {} x {}", self.nsamples, self.seqlen));
            }
            if self.calib.is_none() {
                let who = if self.method.solver().calibrated() { self.method.name() } else { "qat" };
                return bad(format!("{who} needs calibration data (a file, token ids, or data-free)"));
            }
        }
        if self.batch_tokens == 0 {
            return bad("batch_tokens must be positive".into());
        }
        Ok(())
    }

    /// The method's parameters as JSON (manifest, `quantization_config`, resume fingerprint).
    pub fn params_json(&self) -> Value {
        let mut v = json!({
            "method": if self.qat { "qat" } else { self.method.name() },
            "bits": self.bits,
            "group_size": self.group_size.map_or(-1, |g| g as i64),
            "sym": self.sym,
            "scale_dtype": match self.scale_dtype {
                ScaleDtype::F16 => "f16",
                ScaleDtype::F32 => "f32",
            },
            "embed": self.embed.name(),
            "lm_head": self.lm_head.map_or("embed", TensorScheme::name),
        });
        if self.qat_epochs.is_some() || self.qat_distill_epochs.is_some() {
            v["qat"] = json!({
                "init": self.method.name(),
                "block_epochs": self.qat_epochs,
                "lr": self.qat_lr,
                "scale_lr": self.qat_scale_lr,
                "batch": self.qat_batch,
                "distill_epochs": self.qat_distill_epochs,
                "distill_lr": self.qat_distill_lr,
                "distill_windows": self.qat_distill_windows,
            });
        }
        if self.format != WeightFormat::Int {
            // Only where set: integer runs keep the manifests (and resume fingerprints) they had.
            v["weight_format"] = self.format.name().into();
            v["double_quant"] = self.double_quant.into();
        }
        let solver = self.method.solver();
        for (k, val) in solver.params(self.calib_shape()) {
            v[k] = val;
        }
        if let (WeightFormat::Nf4 | WeightFormat::Fp4, Some(params)) = (self.format, v.as_object_mut()) {
            // A codebook has an absmax per block (group_size), no zero point, scale dtype or
            // range search: leave out the integer knobs rather than record ones that did nothing.
            for k in ["sym", "scale_dtype", "clip"] {
                params.remove(k);
            }
        }
        if let (Ok(Scheme::RowLut(_)), Some(params)) = (self.scheme(), v.as_object_mut()) {
            // One codebook per row: no groups, zero points or scales.
            for k in ["group_size", "sym", "scale_dtype"] {
                params.remove(k);
            }
            params.insert("weight_format".into(), "rowlut".into());
        }
        if let Some(t) = self.target_bpw {
            v["target_bpw"] = t.into();
        }
        if let Some(m) = self.max_size {
            v["max_size"] = m.into();
        }
        if self.target_bpw.is_some() || self.max_size.is_some() {
            // Per layer in the allocation: the common bits and group size were not used.
            v["bits"] = "mixed".into();
            v["group_size"] = "mixed".into();
        }
        if solver.calibrated() || self.target_bpw.is_some() || self.max_size.is_some() {
            v["nsamples"] = self.nsamples.into();
            v["seqlen"] = self.seqlen.into();
            v["seed"] = self.seed.into();
            v["calibration"] = self.calib.as_ref().map(|c| c.describe()).into();
        }
        v
    }
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
    /// Stored bits per block-linear weight after quantization (the block linears only).
    pub bits_per_weight: f64,
    /// Every byte of every file of the written directory (tensors, safetensors headers, index,
    /// config, tokenizer, manifest).
    pub out_bytes: u64,
    /// Bytes of the model read (the file, or every file of the directory).
    pub input_bytes: u64,
    /// Parameters of every tensor written: embedding, LM head when untied, block linears, norms.
    pub num_params: usize,
    /// Bytes of every tensor as stored, without file headers (llama.cpp's "model size").
    pub tensor_bytes: usize,
    /// Stored bits per parameter over every tensor (`tensor_bytes * 8 / num_params`, as
    /// llama.cpp's BPW).
    pub bits_per_weight_all: f64,
    /// Bytes of the token embedding as stored.
    pub embed_bytes: usize,
    /// Bytes of the LM head as stored; `None` when tied (the embedding is the head).
    pub lm_head_bytes: Option<usize>,
    /// The first block this run computed (non-zero when resumed).
    pub resumed_from_block: usize,
    /// Caveats (e.g. AWQ o_proj scales skipped under GQA).
    pub notes: Vec<String>,
    /// Mixed precision (`target_bpw` / `max_size`): the budget and the scheme of every layer.
    pub allocation: Option<crate::mixed::Allocation>,
}

impl QuantizeReport {
    /// Mean of the per-layer losses.
    pub fn mean_loss(&self) -> f64 {
        self.layers.iter().map(|l| l.loss).sum::<f64>() / self.layers.len().max(1) as f64
    }
    /// Bits per parameter of the whole directory, every file counted (`out_bytes * 8 /
    /// num_params`).
    pub fn file_bits_per_weight(&self) -> f64 {
        self.out_bytes as f64 * 8.0 / self.num_params.max(1) as f64
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
