//! What the Hugging Face quantized-checkpoint formats share: HF GPTQ ([`crate::gptq`]), AWQ GEMM
//! ([`crate::awq`]) and compressed-tensors `pack-quantized` ([`crate::compressed_tensors`]).
//!
//! Export: [`export_hf`] loads a lowbit quantized model, checks that every block linear has one
//! integer scheme the format can hold ([`Plan`]), lets the format repack each linear
//! ([`Writer::linear`]) and writes the directory the same way for all of them (dense embedding,
//! LM head, norms and biases; `config.json` with the format's `quantization_config`; tokenizer
//! files; temporary directory renamed into place, 0644 files) with a per-tensor report.
//!
//! Import: [`quantized_source`] picks the reader from `config.json`'s `quant_method`; the readers
//! share [`Warnings`], [`floats`] and [`int_tensor`] (lowbit's integer `QTensor` from unpacked
//! codes, zero points and scales).

use crate::gguf::ExportPath;
use crate::load::{write, write_dir_atomically, write_tokenizer_files, LoadOptions};
use crate::model::Model;
use crate::safetensors_source::SafetensorsSource;
use crate::tensors::{le_bf16, le_f16, le_f32, TensorSource};
use crate::{ModelError, Result};
use half::f16;
use lowbit_core::pack::{pack, unpack};
use lowbit_core::{Bits, ClipSearch, Granularity, IntScheme, QParams, QTensor, ScaleDtype, Scales, Scheme, ZeroPoints};
use lowbit_cpu::{Linear, WeightKind};
use safetensors::tensor::{Dtype, TensorView};
use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;

/// The error for a bad `quantization_config.{key}` in the `format` checkpoint at `dir`.
pub(crate) fn config_error(format: &'static str, dir: &Path, key: &str, reason: impl Into<String>) -> ModelError {
    ModelError::QuantCheckpoint {
        format,
        path: dir.display().to_string(),
        tensor: format!("quantization_config.{key}"),
        reason: reason.into(),
    }
}

/// The HF quantized formats lowbit exports and imports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HfFormat {
    /// HF GPTQ (`qweight` packed along inputs, `qzeros`, `scales`, `g_idx`).
    Gptq,
    /// AutoAWQ's GEMM layout (`qweight` packed along outputs with the `[0,2,4,6,1,3,5,7]` interleave).
    Awq,
    /// compressed-tensors `pack-quantized` (llm-compressor, vLLM).
    CompressedTensors,
}

impl HfFormat {
    /// Every format.
    pub const ALL: [HfFormat; 3] = [HfFormat::Gptq, HfFormat::Awq, HfFormat::CompressedTensors];

    /// Its `lowbit export --format` name: `gptq`, `awq`, `compressed-tensors`.
    pub fn name(self) -> &'static str {
        match self {
            HfFormat::Gptq => "gptq",
            HfFormat::Awq => "awq",
            HfFormat::CompressedTensors => "compressed-tensors",
        }
    }

    /// The format by its `lowbit export --format` name.
    pub fn from_name(name: &str) -> Option<HfFormat> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// One tensor of an HF quantized export.
#[derive(Clone, Debug)]
pub struct HfTensorExport {
    /// The module or tensor name (`model.layers.0.self_attn.q_proj`, `model.norm.weight`).
    pub name: String,
    /// How lowbit stored it (`int4 g64 sym f16`, `f32`).
    pub source: String,
    /// What was written: `gptq int4 g64 v1`, `awq int4 g64`, `pack-quantized int4 g64 sym`, `F32`.
    pub dtype: String,
    /// Always [`ExportPath::Exact`]: these exports refuse what they cannot store exactly.
    pub path: ExportPath,
    /// Largest |written - lowbit dequantized| over the tensor (decoded back from what was written).
    pub max_abs_diff: f32,
}

/// What [`export_hf`] wrote.
#[derive(Clone, Debug)]
pub struct HfExport {
    /// Every linear module and dense tensor, in file order.
    pub tensors: Vec<HfTensorExport>,
    /// Bytes of every file in the directory.
    pub bytes: u64,
    /// The format's label: `gptq` (v1 zeros) or `gptq_v2`; `gemm` (AWQ); `pack-quantized`.
    pub checkpoint_format: &'static str,
    /// Loaders that will reject or fall back on this export, and tensors dequantized.
    pub notes: Vec<String>,
}

/// Tokenizer files copied from a source directory when present.
const TOKENIZER_FILES: [&str; 6] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
    "generation_config.json",
];

/// The integer scheme every block linear shares.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Plan {
    pub(crate) bits: Bits,
    /// `None` for one scale per output channel.
    pub(crate) group: Option<usize>,
    pub(crate) symmetric: bool,
}

impl Plan {
    /// The scheme of the block linears (`model.layers.*`), refused for `format` unless every one
    /// is integer-quantized with the same bits and group size.
    pub(crate) fn of(format: &'static str, mats: &[(String, &Linear)]) -> Result<Plan> {
        let refuse = |what: String| ModelError::QuantUnsupported { format, what };
        let mut plan: Option<(Bits, Option<usize>, String)> = None;
        let mut symmetric = true;
        for (name, lin) in mats.iter().filter(|(n, _)| is_block(n)) {
            let WeightKind::Quant(q) = lin.weight() else {
                return Err(refuse(format!(
                    "{name} is not quantized ({format} stores every block linear as integer codes): export a `lowbit quantize` output"
                )));
            };
            let Scheme::Int(s) = *q.scheme() else {
                return Err(refuse(format!(
                    "{name} is {} ({format} stores integer codes with scales; use --format gguf for codebook schemes)",
                    crate::gguf::describe(q)
                )));
            };
            let group = match s.granularity {
                Granularity::Group(g) => Some(g),
                Granularity::PerChannel | Granularity::PerTensor => None,
            };
            symmetric &= s.symmetric;
            match &plan {
                None => plan = Some((s.bits, group, name.clone())),
                Some((b, g, first)) if (*b, *g) != (s.bits, group) => {
                    let gname = |g: Option<usize>| g.map_or("channel".to_string(), |g| g.to_string());
                    return Err(refuse(format!(
                        "{name} has {} bits, group {} but {first} has {} bits, group {}: {format}'s config holds one bit width and group size",
                        s.bits.get(),
                        gname(group),
                        b.get(),
                        gname(*g)
                    )));
                }
                Some(_) => {}
            }
        }
        let (bits, group, _) = plan.ok_or_else(|| refuse("the model has no block linears".into()))?;
        Ok(Plan { bits, group, symmetric })
    }

    /// `group_size` as the configs write it: -1 for one group per row.
    pub(crate) fn group_size(&self) -> i64 {
        self.group.map_or(-1, |g| g as i64)
    }
}

/// Whether `name` is a block linear (the tensors the formats quantize).
pub(crate) fn is_block(name: &str) -> bool {
    name.starts_with("model.layers.")
}

/// The block linears whose shapes Marlin kernels (vLLM `marlin_utils.verify_marlin_supports_shape`)
/// refuse: `in % 128`, `out % 64`, the first of each.
pub(crate) fn marlin_shapes(blocks: &[(String, &Linear)]) -> Vec<String> {
    let mut why = vec![];
    if let Some((n, l)) = blocks.iter().find(|(_, l)| l.cols() % 128 != 0) {
        why.push(format!("{n}: in_features {} is not a multiple of 128", l.cols()));
    }
    if let Some((n, l)) = blocks.iter().find(|(_, l)| l.rows() % 64 != 0) {
        why.push(format!("{n}: out_features {} is not a multiple of 64", l.rows()));
    }
    why
}

/// A tensor to write: name, dtype, shape, little-endian bytes.
pub(crate) type Entry = (String, Dtype, Vec<usize>, Vec<u8>);

/// The bytes of int32 words.
pub(crate) fn i32_bytes(v: &[i32]) -> Vec<u8> {
    bytemuck::cast_slice::<i32, u8>(v).to_vec()
}

/// A block linear as every format starts from it, in lowbit's orientation.
pub(crate) struct LinearParts<'a> {
    pub(crate) q: &'a QTensor,
    pub(crate) out: usize,
    pub(crate) inn: usize,
    /// Group size (`inn` for per-channel) and groups per row.
    pub(crate) gs: usize,
    pub(crate) groups: usize,
    /// Unpacked codes `[out, inn]`.
    pub(crate) codes: Vec<u8>,
    /// True zero points and f16 scales, `[out, groups]`.
    pub(crate) zeros: Vec<u8>,
    pub(crate) scales: Vec<f16>,
}

impl LinearParts<'_> {
    /// `prefix`'s codes, zeros and scales, refused for `format` unless its groups tile the row
    /// (`whole_groups`: what needs them) and its scales are f16 values.
    pub(crate) fn of<'a>(
        format: &'static str,
        prefix: &str,
        lin: &'a Linear,
        plan: &Plan,
        whole_groups: &str,
    ) -> Result<LinearParts<'a>> {
        let refuse = |what: String| ModelError::QuantUnsupported { format, what };
        let WeightKind::Quant(q) = lin.weight() else { unreachable!("Plan::of checked every block linear") };
        let Scheme::Int(s) = *q.scheme() else { unreachable!("Plan::of checked every block linear") };
        let (out, inn) = (lin.rows(), lin.cols());
        let gs = plan.group.unwrap_or(inn);
        if inn % gs != 0 {
            return Err(refuse(format!(
                "{prefix}: in_features {inn} is not a multiple of group size {gs}: {whole_groups} need whole groups; requantize with --group-size 64 or 32"
            )));
        }
        let groups = inn / gs;
        let params = q.group_params().ok_or_else(|| {
            refuse(format!(
                "{prefix}: float zero points (HQQ) have no exact {format} form, which stores integer zeros: quantize with --method rtn, gptq or awq to export to {format}"
            ))
        })?;
        let (mut scales, mut zeros) = (Vec::with_capacity(out * groups), Vec::with_capacity(out * groups));
        for n in 0..out {
            for g in 0..groups {
                let gp = params[s.granularity.param_index(inn, n * inn + g * gs)];
                let h = f16::from_f32(gp.scale);
                if h.to_f32() != gp.scale {
                    return Err(refuse(format!(
                        "{prefix}: scale {} is not an f16 value ({format} stores f16 scales): quantize with --scale-dtype f16",
                        gp.scale
                    )));
                }
                scales.push(h);
                zeros.push(gp.zero);
            }
        }
        let codes = unpack(q.codes(), plan.bits, out * inn)?;
        Ok(LinearParts { q, out, inn, gs, groups, codes, zeros, scales })
    }

    /// Largest |`back` - lowbit's dequantized weights| (`back` `[out, inn]`, decoded from what
    /// the format wrote).
    pub(crate) fn max_abs_diff(&self, back: &[f32]) -> f32 {
        back.iter().zip(self.q.dequantize()).fold(0f32, |m, (a, b)| m.max((a - b).abs()))
    }

    /// The report row of this linear written as `dtype`.
    pub(crate) fn report(&self, prefix: &str, dtype: String, back: &[f32]) -> HfTensorExport {
        HfTensorExport {
            name: prefix.into(),
            source: crate::gguf::describe(self.q),
            dtype,
            path: ExportPath::Exact,
            max_abs_diff: self.max_abs_diff(back),
        }
    }
}

/// Transposes a row-major `[rows, cols]` matrix.
pub(crate) fn transpose<T: Copy>(m: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut t = Vec::with_capacity(m.len());
    for c in 0..cols {
        t.extend((0..rows).map(|r| m[r * cols + c]));
    }
    t
}

/// `(q - z) * s` for codes `[out, inn]`, zeros and scales `[out, groups]` (group `i / gs`).
pub(crate) fn dequantize(codes: &[u8], zeros: &[u8], scales: &[f32], out: usize, inn: usize, gs: usize) -> Vec<f32> {
    let groups = inn.div_ceil(gs.max(1));
    let mut w = vec![0f32; out * inn];
    for n in 0..out {
        for i in 0..inn {
            let k = n * groups + i / gs;
            w[n * inn + i] = (f32::from(codes[n * inn + i]) - f32::from(zeros[k])) * scales[k];
        }
    }
    w
}

/// One HF quantized format's writing side.
pub(crate) trait Writer {
    /// The format's name in messages (`GPTQ`, `AWQ`, `compressed-tensors`).
    const NAME: &'static str;
    /// Refuses a plan or a shape the format (or its loaders' kernels) cannot hold, naming the
    /// constraint.
    fn check(plan: &Plan, blocks: &[(String, &Linear)]) -> Result<()>;
    /// One block linear's tensors and its report row.
    fn linear(prefix: &str, lin: &Linear, plan: &Plan) -> Result<(Vec<Entry>, HfTensorExport)>;
    /// `config.json["quantization_config"]`.
    fn quantization_config(plan: &Plan) -> Value;
    /// Further JSON files with the config (GPTQ's `quantize_config.json`).
    fn extra_files(_qc: &Value) -> Vec<(&'static str, Value)> {
        vec![]
    }
    /// [`HfExport::checkpoint_format`].
    fn label(plan: &Plan) -> &'static str;
    /// What loaders will refuse or fall back on.
    fn notes(plan: &Plan, blocks: &[(String, &Linear)]) -> Vec<String>;
}

/// Exports the lowbit quantized model at `model` (anything [`Model::load`] reads) to the HF
/// directory `out` in `format` (which must not exist or be empty), written in a temporary sibling
/// and renamed into place, so a refusal or failure leaves nothing behind.
pub fn export_hf(model: impl AsRef<Path>, out: impl AsRef<Path>, format: HfFormat) -> Result<HfExport> {
    let (model, out) = (model.as_ref(), out.as_ref());
    match format {
        HfFormat::Gptq => export::<crate::gptq::GptqWriter>(model, out),
        HfFormat::Awq => export::<crate::awq::AwqWriter>(model, out),
        HfFormat::CompressedTensors => export::<crate::compressed_tensors::CtWriter>(model, out),
    }
}

fn export<W: Writer>(model_path: &Path, out: &Path) -> Result<HfExport> {
    let model = Model::load_with(model_path, &LoadOptions::default())?;
    let (mats, vecs) = model.named_tensors();
    let plan = Plan::of(W::NAME, &mats)?;
    let blocks: Vec<_> = mats.iter().filter(|(n, _)| is_block(n)).cloned().collect();
    W::check(&plan, &blocks)?;
    let mut notes = W::notes(&plan, &blocks);
    let (mut entries, mut tensors) = (Vec::<Entry>::new(), Vec::new());
    for (name, lin) in &mats {
        if is_block(name) {
            let prefix = name.strip_suffix(".weight").unwrap_or(name);
            let (parts, report) = W::linear(prefix, lin, &plan)?;
            entries.extend(parts);
            tensors.push(report);
        } else {
            let (entry, report) = dense_matrix(name, lin);
            if report.source != report.dtype.to_lowercase() {
                notes.push(format!(
                    "{name}: lowbit's {} dequantized to {} ({} keeps embeddings and the LM head dense; exact values)",
                    report.source,
                    report.dtype,
                    W::NAME
                ));
            }
            entries.push(entry);
            tensors.push(report);
        }
    }
    for (name, v) in vecs {
        lowbit_core::check_finite(v).map_err(|_| {
            ModelError::input("export to an HF quantized format", format!("{name} has a non-finite value"))
        })?;
        entries.push((name.clone(), Dtype::F32, vec![v.len()], bytemuck::cast_slice(v).to_vec()));
        tensors.push(dense_report(&name, "f32", "F32"));
    }
    let qc = W::quantization_config(&plan);
    let mut config = model.config().to_hf_json();
    // vLLM's gptq/awq kernels take half only; the scales are f16.
    config["torch_dtype"] = "float16".into();
    config["quantization_config"] = qc.clone();
    let mut files = vec![("config.json", config)];
    files.extend(W::extra_files(&qc));
    let bytes = write_export(model_path, &model, out, &entries, &files)?;
    Ok(HfExport { tensors, bytes, checkpoint_format: W::label(&plan), notes })
}

/// Writes `model.safetensors` from `entries`, the JSON `files` and the tokenizer (copied from
/// `model_path` when it is a directory holding the files, else lowbit's) into `out`, atomically.
/// Returns the bytes written.
fn write_export(
    model_path: &Path,
    model: &Model,
    out: &Path,
    entries: &[Entry],
    files: &[(&str, Value)],
) -> Result<u64> {
    let mut bytes = 0u64;
    write_dir_atomically(out, |tmp| {
        let st = tmp.join("model.safetensors");
        let st_err = |e: safetensors::SafeTensorError| ModelError::Safetensors {
            path: st.display().to_string(),
            reason: e.to_string(),
        };
        let views = entries
            .iter()
            .map(|(n, dt, shape, data)| TensorView::new(*dt, shape.clone(), data).map(|v| (n.clone(), v)))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(st_err)?;
        // transformers refuses safetensors files without `format` metadata.
        let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::serialize_to_file(views, Some(meta), &st).map_err(st_err)?;
        for (name, v) in files {
            write(&tmp.join(name), (serde_json::to_string_pretty(v).unwrap_or_default() + "\n").as_bytes())?;
        }
        let mut copied = false;
        for f in TOKENIZER_FILES.iter().map(|f| model_path.join(f)).filter(|p| model_path.is_dir() && p.is_file()) {
            let to = tmp.join(f.file_name().unwrap_or_default());
            std::fs::copy(&f, &to).map_err(|e| ModelError::io(&f, e))?;
            copied = true;
        }
        if let (false, Some(t)) = (copied, model.tokenizer()) {
            write_tokenizer_files(tmp, t)?;
        }
        for e in std::fs::read_dir(tmp).map_err(|e| ModelError::io(tmp, e))? {
            let p = e.map_err(|e| ModelError::io(tmp, e))?.path();
            set_mode_0644(&p)?;
            bytes += std::fs::metadata(&p).map_err(|e| ModelError::io(&p, e))?.len();
        }
        Ok(())
    })?;
    Ok(bytes)
}

/// safetensors writes through a private temporary file; every file gets 0644.
fn set_mode_0644(p: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).map_err(|e| ModelError::io(p, e))?;
    }
    #[cfg(not(unix))]
    let _ = p;
    Ok(())
}

fn dense_report(name: &str, source: &str, dtype: &str) -> HfTensorExport {
    HfTensorExport {
        name: name.into(),
        source: source.into(),
        dtype: dtype.into(),
        path: ExportPath::Exact,
        max_abs_diff: 0.0,
    }
}

/// The embedding or LM head, dense: kept in its dtype, or lowbit's quantized one dequantized to f32.
fn dense_matrix(name: &str, lin: &Linear) -> (Entry, HfTensorExport) {
    let shape = vec![lin.rows(), lin.cols()];
    let (dt, source, dtype, bytes) = match lin.weight() {
        WeightKind::F32(v) => (Dtype::F32, "f32".to_string(), "F32", bytemuck::cast_slice(v).to_vec()),
        WeightKind::F16(v) => (Dtype::F16, "f16".into(), "F16", bytemuck::cast_slice(v).to_vec()),
        WeightKind::Bf16(v) => (Dtype::BF16, "bf16".into(), "BF16", bytemuck::cast_slice(v).to_vec()),
        WeightKind::Quant(q) => {
            (Dtype::F32, crate::gguf::describe(q), "F32", bytemuck::cast_slice(&q.dequantize()).to_vec())
        }
    };
    ((name.into(), dt, shape, bytes), dense_report(name, &source, dtype))
}

// --- import ---------------------------------------------------------------------------------

/// The tensor source for the HF directory `dir` whose `config.json` is `config`: a GPTQ, AWQ or
/// compressed-tensors reader over `src` when its `quantization_config` names one, else `src`.
pub(crate) fn quantized_source(dir: &Path, config: &Value, src: SafetensorsSource) -> Result<Box<dyn TensorSource>> {
    if let Some(cfg) = crate::awq::import::detect(dir, config)? {
        return Ok(Box::new(crate::awq::import::AwqSource::new(src, cfg)));
    }
    if let Some(cfg) = crate::compressed_tensors::import::detect(dir, config)? {
        return Ok(Box::new(crate::compressed_tensors::import::CtSource::new(src, cfg)));
    }
    Ok(match crate::gptq::import::detect(dir, config)? {
        Some(cfg) => Box::new(crate::gptq::import::GptqSource::new(src, cfg)),
        None => Box::new(src),
    })
}

/// One warning per kind of finding per load, naming the first module; the model keeps them
/// ([`crate::Model::load_warnings`], through [`TensorSource::warnings`]).
#[derive(Default)]
pub(crate) struct Warnings {
    kinds: BTreeSet<&'static str>,
    messages: Vec<String>,
}

impl Warnings {
    pub(crate) fn warn(&mut self, kind: &'static str, msg: String) {
        if self.kinds.insert(kind) {
            self.messages.push(format!("{msg} (further modules with the same finding are not listed)"));
        }
    }

    pub(crate) fn messages(&self) -> Vec<String> {
        self.messages.clone()
    }
}

/// Little-endian floats of dtype `dt` as f32, `None` for other dtypes.
pub(crate) fn floats(dt: Dtype, bytes: &[u8]) -> Option<Vec<f32>> {
    match dt {
        Dtype::F16 => Some(le_f16(bytes).iter().map(|h| h.to_f32()).collect()),
        Dtype::BF16 => Some(le_bf16(bytes).iter().map(|h| h.to_f32()).collect()),
        Dtype::F32 => Some(le_f32(bytes)),
        _ => None,
    }
}

/// lowbit's integer tensor `[out, inn]` from unpacked `codes` `[out, inn]`, true `zeros` and
/// `scales` `[out, groups]` (`group` `None`: one per row), exactly: f16 scales stay f16, others
/// are held as f32 (bf16 exactly); symmetric when every zero is `2^(b-1)`.
pub(crate) fn int_tensor(
    (out, inn): (usize, usize),
    bits: Bits,
    group: Option<usize>,
    codes: &[u8],
    zeros: Vec<u8>,
    scales: Vec<f32>,
    scale_dt: Dtype,
) -> lowbit_core::Result<QTensor> {
    let symmetric = zeros.iter().all(|&z| z == bits.symmetric_zero());
    let granularity = group.map_or(Granularity::PerChannel, Granularity::Group);
    let (scale_dtype, scales) = match scale_dt {
        Dtype::F16 => (ScaleDtype::F16, Scales::F16(scales.into_iter().map(f16::from_f32).collect())),
        _ => (ScaleDtype::F32, Scales::F32(scales)),
    };
    let scheme = IntScheme { bits, symmetric, granularity, scale_dtype, clip: ClipSearch::MinMax };
    let params = QParams::Int { scales, zeros: (!symmetric).then_some(ZeroPoints::Codes(zeros)) };
    QTensor::from_parts(vec![out, inn], Scheme::Int(scheme), pack(codes, bits)?, params)
}
