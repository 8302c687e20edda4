//! The method seam: what a whole-model pipeline needs from a quantization method, and the one
//! enum of the methods lowbit has.
//!
//! The pipeline walks a model's blocks and, in execution order, hands each method a [`Group`]:
//! the linear layers that read one input (q/k/v, o, gate/up, down). For each group it
//!
//! 1. asks the method for an empty [`Statistics`] accumulator ([`QuantMethod::statistics`]) and
//!    feeds it every calibration batch of the group's input (the activations already carry the
//!    upstream quantization error);
//! 2. calls [`QuantMethod::solve_group`], which returns the quantized layers and, for methods
//!    that migrate scale into the preceding operation (AWQ, SmoothQuant), the per-input-channel
//!    `s` to fold there ([`GroupSolution::fold`]): from then on that op must emit `x / s`.
//!
//! Methods that need no activations ([`QuantMethod::calibrated`] is false: RTN) get one layer
//! per group, [`FoldTarget::None`] and no statistics, and the pipeline skips the forward passes.
//! The pipeline holds no method policy: which layers are clipped, where scales may fold, which
//! layers run int8 activations all come from here.

use crate::awq::{AwqMethod, HeadTie};
use crate::gptq::GptqMethod;
use crate::hqq::HqqMethod;
use crate::llm_int8::LlmInt8Method;
use crate::report::LayerReport;
use crate::rtn::RtnMethod;
use crate::smoothquant::SmoothQuantMethod;
use crate::spqr::SpqrMethod;
use crate::squeezellm::SqueezeLlmMethod;
use crate::{Result, SolverError};
use lowbit_core::{IntScheme, QTensor, Scheme};
use serde_json::{Map, Value};
use std::any::Any;
use std::fmt::Debug;

/// The methods, each with its own settings (only the knobs it has, defaults as published).
///
/// **Adding a method** `foo`: write `foo.rs` with a `FooMethod` settings struct (`Default` =
/// the reference defaults) that implements [`QuantMethod`] (name, whether it needs calibration
/// activations, validation against the common scheme, manifest parameters, its statistics
/// accumulator, and the group solve); then add the arm `Foo(FooMethod)` here and list it in
/// [`MethodConfig::all`] and [`MethodConfig::solver`]. Its knobs reach Python and the CLI by
/// rows in the option table of `lowbit-quantize`.
#[derive(Clone, Debug, PartialEq)]
pub enum MethodConfig {
    /// Round-to-nearest (no calibration).
    Rtn(RtnMethod),
    /// GPTQ (Frantar et al. 2022), true-sequential.
    Gptq(GptqMethod),
    /// AWQ (Lin et al. 2023): activation-aware scales folded into the preceding op, clip + RTN.
    Awq(AwqMethod),
    /// SmoothQuant (Xiao et al. 2022) W8A8: smoothing folded into the norms, int8 per-channel
    /// weights (activations are quantized per token at run time).
    SmoothQuant(SmoothQuantMethod),
    /// LLM.int8() (Dettmers et al. 2022): vector-wise int8 weights, no calibration; the layers
    /// run per-token int8 activations with the mixed-precision decomposition of outlier columns.
    LlmInt8(LlmInt8Method),
    /// HQQ (Badri & Shaji 2023): calibration-free, float zero points optimized for an lp error.
    Hqq(HqqMethod),
    /// SpQR (Dettmers et al. 2023): GPTQ with small groups, quantized group statistics and
    /// sparse f16 outliers.
    Spqr(SpqrMethod),
    /// SqueezeLLM (Kim et al. 2023): per-row codebooks from sensitivity-weighted k-means (the
    /// Hessian diagonal standing in for the Fisher information), dense-and-sparse.
    SqueezeLlm(SqueezeLlmMethod),
}

impl Default for MethodConfig {
    fn default() -> Self {
        MethodConfig::Gptq(GptqMethod::default())
    }
}

impl MethodConfig {
    /// Every method with its default settings.
    pub fn all() -> Vec<MethodConfig> {
        vec![
            MethodConfig::Rtn(RtnMethod::default()),
            MethodConfig::Gptq(GptqMethod::default()),
            MethodConfig::Awq(AwqMethod::default()),
            MethodConfig::SmoothQuant(SmoothQuantMethod::default()),
            MethodConfig::LlmInt8(LlmInt8Method::default()),
            MethodConfig::Hqq(HqqMethod::default()),
            MethodConfig::Spqr(SpqrMethod::default()),
            MethodConfig::SqueezeLlm(SqueezeLlmMethod::default()),
        ]
    }

    /// The method's implementation of the seam.
    pub fn solver(&self) -> &dyn QuantMethod {
        match self {
            MethodConfig::Rtn(m) => m,
            MethodConfig::Gptq(m) => m,
            MethodConfig::Awq(m) => m,
            MethodConfig::SmoothQuant(m) => m,
            MethodConfig::LlmInt8(m) => m,
            MethodConfig::Hqq(m) => m,
            MethodConfig::Spqr(m) => m,
            MethodConfig::SqueezeLlm(m) => m,
        }
    }

    /// The method called `name` (case-insensitive, or one of its aliases), default settings.
    pub fn from_name(name: &str) -> Result<Self> {
        let lower = name.to_ascii_lowercase();
        Self::all()
            .into_iter()
            .find(|m| m.name() == lower || m.solver().aliases().contains(&lower.as_str()))
            .ok_or_else(|| {
                SolverError::param(
                    "method",
                    format!("{name:?}"),
                    "use rtn, gptq, awq, smoothquant, llm-int8, hqq, spqr or squeezellm",
                )
            })
    }

    /// The lowercase name (`rtn`, `gptq`, `awq`, `smoothquant`, `llm-int8`, `hqq`, `spqr`,
    /// `squeezellm`).
    pub fn name(&self) -> &'static str {
        self.solver().name()
    }
}

/// What the pipeline knows about its calibration data when it builds statistics and manifests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CalibShape {
    /// Calibration windows.
    pub nsamples: usize,
    /// Tokens per window.
    pub seqlen: usize,
}

/// The role of a linear layer in a decoder block (methods may treat roles differently: llm-awq
/// does not clip q and k).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `self_attn.q_proj`.
    Query,
    /// `self_attn.k_proj`.
    Key,
    /// `self_attn.v_proj`.
    Value,
    /// `self_attn.o_proj`.
    AttnOut,
    /// `mlp.gate_proj`.
    Gate,
    /// `mlp.up_proj`.
    Up,
    /// `mlp.down_proj`.
    Down,
}

/// Where a group's per-input-channel scales could be folded, so that its input becomes `x / s`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FoldTarget {
    /// The RMSNorm weight right before the group.
    Norm,
    /// The output rows of the linear layer that produces the group's input (v for o, up for down).
    Rows,
    /// v_proj's rows feeding o_proj under grouped-query attention: a scale reaches every query
    /// head of its KV head, so o's scales must be tied across them (see [`HeadTie`]).
    TiedHeadRows(HeadTie),
    /// Nowhere (a layer solved alone).
    None,
}

/// A weight matrix that reads a shared input: row-major `w[rows, cols]`, `cols` the input's width.
#[derive(Clone, Copy, Debug)]
pub struct LayerWeight<'a> {
    /// The weight.
    pub w: &'a [f32],
    /// Output features.
    pub rows: usize,
}

/// One linear layer of a group: row-major `w[rows, cols]` (f32, as loaded or dequantized).
#[derive(Clone, Copy, Debug)]
pub struct GroupLayer<'a> {
    /// What the layer is in the block.
    pub role: Role,
    /// The weight.
    pub w: &'a [f32],
    /// Output features.
    pub rows: usize,
}

/// Linear layers that share one input of `cols` channels.
#[derive(Clone, Debug)]
pub struct Group<'a> {
    /// The layers, in execution order.
    pub layers: Vec<GroupLayer<'a>>,
    /// Input channels.
    pub cols: usize,
    /// Where scales could be folded.
    pub fold: FoldTarget,
    /// The common scheme: integer codes (bits, symmetric, groups, scale dtype; each method adds
    /// its own range search or overrides it, SmoothQuant is int8 per channel) or a 4-bit
    /// codebook (NF4/FP4 with block absmax; RTN and GPTQ only).
    pub scheme: Scheme,
}

/// The integer scheme of `scheme`, or the error of a method that only produces integer codes.
pub(crate) fn int_scheme(scheme: &Scheme, method: &'static str) -> Result<IntScheme> {
    match scheme {
        Scheme::Int(s) => Ok(*s),
        Scheme::Codebook(c) => Err(SolverError::param(
            "format",
            format!("{} with method {method}", format!("{:?}", c.codebook).to_lowercase()),
            "this method produces integer codes; nf4 and fp4 work with rtn and gptq",
        )),
        Scheme::RowLut(_) => Err(no_row_codebooks(method)),
    }
}

/// The error of a method that cannot produce per-row codebooks (only squeezellm does).
pub(crate) fn no_row_codebooks(method: &'static str) -> SolverError {
    SolverError::param("format", format!("row codebooks with method {method}"), "row codebooks come from squeezellm")
}

/// One solved layer.
#[derive(Clone, Debug)]
pub struct SolvedLayer {
    /// The quantized weight, original column order.
    pub qtensor: QTensor,
    /// The solver's report (shared by the layers of a group where they were solved together).
    pub report: LayerReport,
    /// The alpha chosen (AWQ) or used (SmoothQuant) for this layer's scales.
    pub alpha: Option<f32>,
}

/// What solving a group produced.
#[derive(Clone, Debug)]
pub struct GroupSolution {
    /// Per layer of the group, in order.
    pub layers: Vec<SolvedLayer>,
    /// `s` per input channel to fold into the [`Group::fold`] target (divide it by `s`); the
    /// quantized layers already hold `W diag(s)`.
    pub fold: Option<Vec<f32>>,
    /// The layers run with per-token int8 activations (W8A8) from now on.
    pub int8_activations: bool,
}

/// A method's accumulator of a group's input activations, fed batch by batch.
pub trait Statistics: AsAny + Send {
    /// Adds a row-major batch `x[tokens, cols]`; rejects NaN/Inf, naming the first.
    fn add_batch(&mut self, x: &[f32], tokens: usize) -> Result<()>;
}

/// `&dyn Any` of a [`Statistics`], for the method's own solve to recover its concrete type;
/// implemented for every type.
pub trait AsAny {
    /// `self` as `&dyn Any`.
    fn as_any(&self) -> &dyn Any;
}

impl<T: Any> AsAny for T {
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The accumulator of methods that need no activations.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoStatistics;

impl Statistics for NoStatistics {
    fn add_batch(&mut self, _x: &[f32], _tokens: usize) -> Result<()> {
        Ok(())
    }
}

/// What is fixed about a method, whatever its settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MethodInfo {
    /// Lowercase name, as in manifests, Python and the CLI.
    pub name: &'static str,
    /// Other accepted spellings of the name.
    pub aliases: &'static [&'static str],
    /// Whether the method needs calibration activations.
    pub calibrated: bool,
}

/// What a quantization method implements (see [`MethodConfig`] for adding one).
pub trait QuantMethod: Debug + Send + Sync {
    /// The method's name, aliases and need for calibration.
    fn info(&self) -> MethodInfo;
    /// Lowercase name, as in manifests, Python and the CLI.
    fn name(&self) -> &'static str {
        self.info().name
    }
    /// Other accepted spellings of the name.
    fn aliases(&self) -> &'static [&'static str] {
        self.info().aliases
    }
    /// Whether the method needs calibration activations.
    fn calibrated(&self) -> bool {
        self.info().calibrated
    }
    /// The scheme the method stores, given the common one the options describe (integer codes
    /// or NF4/FP4): the same by default; squeezellm stores per-row codebooks of its code width.
    fn scheme(&self, common: Scheme) -> Scheme {
        common
    }
    /// Checks the method's settings and the scheme it is asked to produce
    /// ([`QuantMethod::scheme`] of the common one).
    fn validate(&self, scheme: &Scheme) -> Result<()>;
    /// The method's parameters for the manifest and `quantization_config` (beyond the common
    /// bits, group size, symmetry, scale dtype and calibration).
    fn params(&self, calib: CalibShape) -> Map<String, Value>;
    /// An empty accumulator for a group input of `cols` channels.
    fn statistics(&self, cols: usize, calib: CalibShape) -> Box<dyn Statistics>;
    /// Quantizes a group from the statistics of its input (built by [`QuantMethod::statistics`]).
    fn solve_group(&self, group: &Group, stats: &dyn Statistics) -> Result<GroupSolution>;
    /// For layers with [`GroupSolution::int8_activations`]: the threshold of LLM.int8()'s
    /// mixed-precision decomposition (input columns with any `|x| >= t` in a batch run in
    /// floating point); `None`: plain W8A8.
    fn int8_outlier_threshold(&self) -> Option<f32> {
        None
    }
}

/// The concrete statistics a method built, or a typed error if the pipeline mixed them up.
pub(crate) fn downcast<'a, T: 'static>(stats: &'a dyn Statistics, method: &'static str) -> Result<&'a T> {
    // Through the trait object's vtable: the concrete statistics, not the reference.
    AsAny::as_any(stats).downcast_ref::<T>().ok_or_else(|| {
        SolverError::shape("statistics", format!("the statistics {method} builds"), "another method's statistics")
    })
}
