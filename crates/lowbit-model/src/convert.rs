//! `convert`: any model lowbit reads (a lowbit directory, a Hugging Face f32/f16 directory, a
//! GGUF file, an HF GPTQ / AWQ / compressed-tensors directory) written in another format, with a
//! per-tensor report.
//!
//! Each format's exporter computes every tensor's route and measured difference before anything
//! is written (GGUF through [`GgufPlan`]; the HF formats refuse what they cannot store exactly; a lowbit
//! directory stores what was loaded as it is), so a lossy conversion is refused with nothing on
//! disk unless requantizing is allowed. Outputs are written atomically by the exporters.

use crate::gguf::{describe, ExportPath, GgmlType, GgufExportOptions, GgufPlan};
use crate::hf_quant::{export_hf, HfFormat};
use crate::load::LoadOptions;
use crate::model::Model;
use crate::{ModelError, Result};
use lowbit_cpu::{Linear, WeightKind};
use std::path::Path;

/// An output format of [`convert`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvertFormat {
    /// A lowbit directory (what `lowbit quantize` writes; `Model::save`).
    Lowbit,
    /// A llama GGUF file (see [`crate::gguf::export_gguf`]).
    Gguf,
    /// A Hugging Face quantized directory: GPTQ, AWQ GEMM or compressed-tensors (see
    /// [`export_hf`]).
    Hf(HfFormat),
}

impl ConvertFormat {
    /// Every format, by name.
    pub const ALL: [ConvertFormat; 5] = [
        ConvertFormat::Lowbit,
        ConvertFormat::Gguf,
        ConvertFormat::Hf(HfFormat::Gptq),
        ConvertFormat::Hf(HfFormat::Awq),
        ConvertFormat::Hf(HfFormat::CompressedTensors),
    ];

    /// `lowbit`, `gguf`, `gptq`, `awq` or `compressed-tensors`.
    pub fn name(self) -> &'static str {
        match self {
            ConvertFormat::Lowbit => "lowbit",
            ConvertFormat::Gguf => "gguf",
            ConvertFormat::Hf(f) => f.name(),
        }
    }

    /// The format called `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// Options of [`convert`].
#[derive(Clone, Debug)]
pub struct ConvertOptions {
    /// The output format.
    pub format: ConvertFormat,
    /// Write even when some tensor's values change (requantized, or Q4_1's rounded minimum).
    pub allow_requantize: bool,
    /// GGUF: the type dense weight matrices are requantized to (see [`GgufExportOptions`]).
    pub gguf: GgufExportOptions,
}

/// One tensor of a conversion.
#[derive(Clone, Debug)]
pub struct ConvertedTensor {
    /// Its name in the output.
    pub name: String,
    /// How lowbit held it after loading the input (`int4 g32 sym f16`, `f32`).
    pub source: String,
    /// What was written (`Q4_0`, `gptq int4 g64 v1`, `int4 g32 sym f16`, `F32`).
    pub target: String,
    /// The route it took.
    pub path: ExportPath,
    /// Largest |written - loaded| over the tensor, measured by decoding what was written.
    pub max_abs_diff: f32,
}

impl ConvertedTensor {
    /// Whether the written values differ from the loaded ones.
    pub fn lossy(&self) -> bool {
        matches!(self.path, ExportPath::Requantized | ExportPath::ImatrixRequantized) || self.max_abs_diff != 0.0
    }
}

/// What [`convert`] wrote.
#[derive(Clone, Debug)]
pub struct ConvertReport {
    /// Every tensor, in output order.
    pub tensors: Vec<ConvertedTensor>,
    /// Bytes written.
    pub bytes: u64,
    /// What the exporter wants the user to know (GPTQ's loader notes), and the input's load
    /// warnings.
    pub notes: Vec<String>,
}

/// Converts the model at `input` to `out` in `opts.format`. A conversion that changes any
/// tensor's values is refused before anything is written ([`ModelError::Lossy`], naming the
/// first such tensors and why) unless `opts.allow_requantize`.
pub fn convert(input: impl AsRef<Path>, out: impl AsRef<Path>, opts: &ConvertOptions) -> Result<ConvertReport> {
    let (input, out) = (input.as_ref(), out.as_ref());
    let model = Model::load_with(input, &LoadOptions::default())?;
    let mut notes = model.load_warnings().to_vec();
    let (tensors, bytes) = match opts.format {
        ConvertFormat::Gguf => {
            let plan = GgufPlan::new(&model, input, &opts.gguf)?;
            let rows: Vec<_> = plan
                .tensors()
                .map(|t| ConvertedTensor {
                    name: t.name.clone(),
                    source: t.source.clone(),
                    target: t.ty.name().to_string(),
                    path: t.path,
                    max_abs_diff: t.max_abs_diff,
                })
                .collect();
            refuse_lossy(opts, &rows)?;
            drop(model);
            let written = plan.write(out)?;
            (rows, written.bytes)
        }
        ConvertFormat::Hf(format) => {
            drop(model);
            // The HF exports refuse whatever they cannot store exactly: no dry run needed.
            let g = export_hf(input, out, format)?;
            notes.extend(g.notes);
            let rows = g
                .tensors
                .into_iter()
                .map(|t| ConvertedTensor {
                    name: t.name,
                    source: t.source,
                    target: t.dtype,
                    path: t.path,
                    max_abs_diff: t.max_abs_diff,
                })
                .collect();
            (rows, g.bytes)
        }
        ConvertFormat::Lowbit => {
            if opts.gguf.dense_type.is_some() {
                return Err(ModelError::input("convert", "a GGUF type applies to --format gguf only"));
            }
            let bytes = model.save_with(out, &Default::default())?;
            // Measured, not assumed: the directory is loaded back and compared.
            let back = Model::load_with(out, &LoadOptions::default())?;
            let rows = matrices(&model)
                .into_iter()
                .zip(matrices(&back))
                .map(|((name, a), (_, b))| {
                    let (x, y) = (a.weight().to_f32(), b.weight().to_f32());
                    let max_abs_diff = x.iter().zip(&y).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
                    ConvertedTensor {
                        name,
                        source: storage(a),
                        target: storage(b),
                        path: ExportPath::Exact,
                        max_abs_diff,
                    }
                })
                .collect();
            (rows, bytes)
        }
    };
    Ok(ConvertReport { tensors, bytes, notes })
}

/// The refusal of a lossy conversion, naming the first few lossy tensors.
fn refuse_lossy(opts: &ConvertOptions, rows: &[ConvertedTensor]) -> Result<()> {
    let lossy: Vec<&ConvertedTensor> = rows.iter().filter(|t| t.lossy()).collect();
    if opts.allow_requantize || lossy.is_empty() {
        return Ok(());
    }
    let first = lossy
        .iter()
        .take(3)
        .map(|t| {
            format!("{} ({} -> {}, {}, max |diff| {:.3e})", t.name, t.source, t.target, t.path.name(), t.max_abs_diff)
        })
        .collect::<Vec<_>>()
        .join("; ");
    Err(ModelError::Lossy { format: opts.format.name().into(), count: lossy.len(), first })
}

/// The model's weight matrices by HF name (embedding, LM head when untied, block linears).
fn matrices(m: &Model) -> Vec<(String, &Linear)> {
    m.named_tensors().0
}

/// `int4 g32 sym f16`, `f32`, `f16`, `bf16`.
fn storage(l: &Linear) -> String {
    match l.weight() {
        WeightKind::Quant(q) => describe(q),
        WeightKind::F32(_) => "f32".into(),
        WeightKind::F16(_) => "f16".into(),
        WeightKind::Bf16(_) => "bf16".into(),
    }
}

/// The GGUF type named `name` (case-insensitive), for options given as text.
pub fn ggml_type(name: &str) -> Option<GgmlType> {
    GgmlType::from_name(&name.to_uppercase())
}
