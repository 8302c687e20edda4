//! `export_gguf`: a model lowbit loads (a quantized output directory, a Hugging Face directory or
//! a GGUF) to a llama GGUF that llama.cpp runs.
//!
//! Each weight takes the first route that applies (layouts in `docs/format.md`):
//! * lowbit integer codes whose scales sit whole on 32-weight blocks (group a multiple of 32,
//!   per channel or per tensor, rows a multiple of 32) and are f16 values are repacked: symmetric
//!   4-bit to Q4_0 and symmetric 8-bit to Q8_0 exactly, asymmetric 4-bit to Q4_1 with one f16
//!   rounding of each group's minimum `m = -zero * scale`;
//! * other quantized weights are requantized from lowbit's dequantized values with llama.cpp's
//!   reference quantizers, as `llama-quantize --type Q4_K_M` picks: Q6_K for the embedding/LM
//!   head, Q8_0 for 8-bit sources, Q4_K otherwise, falling back as llama.cpp does when rows are
//!   not a multiple of 256 (Q6_K -> Q8_0, Q4_K -> Q5_0); with an importance matrix
//!   ([`crate::imatrix`]) a block linear is requantized by llama.cpp's importance-weighted
//!   quantizer instead, as `llama-quantize --imatrix` does (Q8_0 has none: llama.cpp ignores it);
//! * dense weights keep their dtype (F32/F16/BF16, exact) unless a type is asked for;
//! * norms and biases are F32.
//!
//! Every tensor written is read back through the block dequantizer and compared with lowbit's
//! own dequantized weights: the report's difference is measured, not assumed.

use super::tokenizer::{pre_name, TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED};
use super::{gguf_error, GgmlType, GgufValue, GgufValueType};
use crate::config::{Architecture, ModelConfig};
use crate::imatrix::Imatrix;
use crate::load::LoadOptions;
use crate::model::Model;
use crate::{ModelError, Result};
use half::f16;
use lowbit_core::{pack::unpack, Bits, Granularity, IntScheme, QTensor, ScaleDtype, Scheme};
use lowbit_cpu::WeightKind;
use lowbit_gguf::llama::{gguf_name, permute_rows};
use lowbit_gguf::{repack, GgufWriter};
use serde_json::Value;
use std::path::Path;

/// How a tensor reached its GGUF type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportPath {
    /// Stored exactly: lowbit's codes and scales repacked, or a dense tensor kept as it was.
    Exact,
    /// lowbit's codes and scales repacked, each group's minimum `-zero * scale` rounded to f16
    /// once (Q4_1).
    MinRounded,
    /// Requantized from lowbit's dequantized weights with llama.cpp's reference quantizer.
    Requantized,
    /// Requantized with llama.cpp's importance-weighted quantizer and the export's importance
    /// matrix.
    ImatrixRequantized,
}

impl ExportPath {
    /// `exact`, `min-rounded` or `requantized`.
    pub fn name(self) -> &'static str {
        match self {
            ExportPath::Exact => "exact",
            ExportPath::MinRounded => "min-rounded",
            ExportPath::Requantized => "requantized",
            ExportPath::ImatrixRequantized => "requantized-imatrix",
        }
    }
}

/// One tensor of an export.
#[derive(Clone, Debug)]
pub struct TensorExport {
    /// Its GGUF name (`blk.0.attn_q.weight`).
    pub name: String,
    /// How lowbit stored it (`int4 g32 sym f16`, `f32`).
    pub source: String,
    /// The GGUF type written.
    pub ty: GgmlType,
    /// The route it took.
    pub path: ExportPath,
    /// Largest |GGUF dequantized - lowbit dequantized| over the tensor, measured after writing
    /// the blocks (0 for every exact tensor).
    pub max_abs_diff: f32,
}

/// Options of [`export_gguf`].
#[derive(Clone, Debug, Default)]
pub struct GgufExportOptions {
    /// Requantize dense (f32/f16/bf16) weight matrices to this type (K-quants fall back as
    /// llama.cpp does); `None` keeps their dtype.
    pub dense_type: Option<GgmlType>,
    /// Weight the requantization of the layers it covers by this importance matrix
    /// ([`crate::collect_imatrix`]).
    pub imatrix: Option<Imatrix>,
}

/// What [`export_gguf`] wrote.
#[derive(Clone, Debug)]
pub struct GgufExport {
    /// Every tensor, in file order.
    pub tensors: Vec<TensorExport>,
    /// Bytes of the file.
    pub bytes: u64,
}

/// A tensor ready to write: GGUF name, shape (PyTorch order), type, bytes, and its report.
struct Prepared {
    shape: Vec<usize>,
    bytes: Vec<u8>,
    report: TensorExport,
}

/// Exports the model at `model` (see [`Model::load`]) to the GGUF file `out`, written under a
/// temporary name and renamed into place, so a failed export leaves no file behind.
pub fn export_gguf(model: impl AsRef<Path>, out: impl AsRef<Path>, opts: &GgufExportOptions) -> Result<GgufExport> {
    let model_path = model.as_ref();
    let model = Model::load_with(model_path, &LoadOptions::default())?;
    GgufPlan::new(&model, model_path, opts)?.write(out.as_ref())
}

/// An export computed but not written: every tensor converted (and its difference measured), the
/// metadata gathered. [`GgufPlan::tensors`] is the report a dry run gives; [`GgufPlan::write`]
/// writes the file.
pub struct GgufPlan {
    kvs: Vec<(String, GgufValue)>,
    tensors: Vec<Prepared>,
}

impl GgufPlan {
    /// Converts every tensor of `model` (loaded from `model_path`, whose `tokenizer_config.json`
    /// is read when it is a directory) as [`export_gguf`] would.
    pub fn new(model: &Model, model_path: &Path, opts: &GgufExportOptions) -> Result<GgufPlan> {
        let config = model.config().clone();
        check_config(&config)?;
        let name = model_path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let tensors = prepare_tensors(model, opts)?;
        let mut kvs = model_kvs(&config, &name, &tensors);
        let tok_cfg = tokenizer_config(model_path)?;
        let tokenizer = model.tokenizer().ok_or(ModelError::NoTokenizer { op: "export to GGUF" })?;
        let template = tokenizer.chat_template();
        kvs.extend(tokenizer_kvs(tokenizer.to_json_string(), tok_cfg.as_ref(), template, &config)?);
        Ok(GgufPlan { kvs, tensors })
    }

    /// Every tensor's route and measured difference, in file order.
    pub fn tensors(&self) -> impl Iterator<Item = &TensorExport> {
        self.tensors.iter().map(|t| &t.report)
    }

    /// Writes the file (atomically: under a temporary name, then renamed).
    pub fn write(self, out: &Path) -> Result<GgufExport> {
        let mut w = GgufWriter::new();
        let werr = |e| gguf_error(out, e);
        for (k, v) in self.kvs {
            w.add_kv(k, v).map_err(werr)?;
        }
        for t in &self.tensors {
            w.add_tensor(t.report.name.clone(), t.report.ty, &t.shape).map_err(werr)?;
        }
        if let Some(dir) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| ModelError::io(dir, e))?;
        }
        let mut file = w.create(out).map_err(werr)?;
        for t in &self.tensors {
            file.write_tensor(&t.report.name, &t.bytes).map_err(werr)?;
        }
        file.finish().map_err(werr)?;
        let bytes = std::fs::metadata(out).map_err(|e| ModelError::io(out, e))?.len();
        Ok(GgufExport { tensors: self.tensors.into_iter().map(|t| t.report).collect(), bytes })
    }
}

fn check_config(c: &ModelConfig) -> Result<()> {
    let refuse = |what: &str| Err(ModelError::UnsupportedArchitecture { name: format!("GGUF export: {what}") });
    if c.arch != Architecture::Llama {
        return refuse(&format!("{:?} (lowbit writes the llama architecture only)", c.arch));
    }
    if c.rope_scaling.is_some() {
        return refuse("llama3 rope scaling (llama.cpp takes it as a rope_freqs tensor, which lowbit does not write)");
    }
    Ok(())
}

/// `llama.cpp`'s `llama_ftype` for the type most block weights got.
fn file_type(tensors: &[Prepared]) -> u32 {
    let mut counts = std::collections::BTreeMap::<u32, usize>::new();
    for t in tensors.iter().filter(|t| t.report.name.starts_with("blk.") && t.shape.len() == 2) {
        *counts.entry(t.report.ty.id()).or_default() += 1;
    }
    let top = counts.into_iter().max_by_key(|&(_, n)| n).map(|(id, _)| id);
    match top.and_then(GgmlType::from_id) {
        Some(GgmlType::F16) => 1,
        Some(GgmlType::Q4_0) => 2,
        Some(GgmlType::Q4_1) => 3,
        Some(GgmlType::Q8_0) => 7,
        Some(GgmlType::Q5_0) => 8,
        Some(GgmlType::Q5_1) => 9,
        Some(GgmlType::Q4K) => 15,
        Some(GgmlType::Q5K) => 17,
        Some(GgmlType::Q6K) => 18,
        Some(GgmlType::Bf16) => 32,
        _ => 0,
    }
}

/// The llama hyper-parameters, with the types llama.cpp checks exactly (u32, f32).
fn model_kvs(c: &ModelConfig, name: &str, tensors: &[Prepared]) -> Vec<(String, GgufValue)> {
    let u = |v: usize| GgufValue::U32(v as u32);
    let mut kv = vec![
        ("general.architecture".to_string(), GgufValue::Str("llama".into())),
        ("general.name".into(), GgufValue::Str(name.into())),
        ("general.file_type".into(), GgufValue::U32(file_type(tensors))),
        ("general.quantization_version".into(), GgufValue::U32(2)),
        ("llama.vocab_size".into(), u(c.vocab_size)),
        ("llama.context_length".into(), u(c.max_position_embeddings)),
        ("llama.embedding_length".into(), u(c.hidden_size)),
        ("llama.block_count".into(), u(c.num_hidden_layers)),
        ("llama.feed_forward_length".into(), u(c.intermediate_size)),
        ("llama.attention.head_count".into(), u(c.num_attention_heads)),
        ("llama.attention.head_count_kv".into(), u(c.num_key_value_heads)),
        ("llama.attention.layer_norm_rms_epsilon".into(), GgufValue::F32(c.rms_norm_eps)),
        ("llama.rope.freq_base".into(), GgufValue::F32(c.rope_theta)),
        ("llama.rope.dimension_count".into(), u(c.head_dim)),
    ];
    if c.head_dim * c.num_attention_heads != c.hidden_size {
        kv.push(("llama.attention.key_length".into(), u(c.head_dim)));
        kv.push(("llama.attention.value_length".into(), u(c.head_dim)));
    }
    kv
}

/// The source directory's `tokenizer_config.json` (special tokens beyond BOS/EOS, `add_bos_token`).
fn tokenizer_config(model: &Path) -> Result<Option<Value>> {
    let p = model.join("tokenizer_config.json");
    if !p.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&p).map_err(|e| ModelError::io(&p, e))?;
    serde_json::from_str(&text).map(Some).map_err(|e| ModelError::Tokenizer(format!("{}: {e}", p.display())))
}

fn strs(v: impl IntoIterator<Item = String>) -> GgufValue {
    GgufValue::Array(GgufValueType::Str, v.into_iter().map(GgufValue::Str).collect())
}

/// The `tokenizer.*` metadata of a byte-level BPE `tokenizer.json`, as `convert_hf_to_gguf.py`
/// writes it (`_set_vocab_gpt2`): tokens padded with `[PAD{i}]` to the vocabulary size, token
/// types (control for special added tokens, user-defined for other added tokens, unused for
/// padding), merges as `"a b"`, special ids and the chat template. `cfg` is the source
/// directory's `tokenizer_config.json` (a GGUF source has none: its template comes with the
/// tokenizer).
pub(crate) fn tokenizer_kvs(
    json: &str,
    cfg: Option<&Value>,
    chat_template: Option<&str>,
    c: &ModelConfig,
) -> Result<Vec<(String, GgufValue)>> {
    const NORMAL: i32 = 1;
    const UNUSED: i32 = 5;
    let bad = |what: String| ModelError::Tokenizer(format!("GGUF export: {what}"));
    let tj: Value = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
    let model = &tj["model"];
    if model["type"].as_str() != Some("BPE") {
        return Err(bad(format!("tokenizer model {} (llama.cpp's gpt2 vocabulary is byte-level BPE)", model["type"])));
    }
    let pre = pre_name(&tj["pre_tokenizer"]).ok_or_else(|| {
        bad(format!(
            "no llama.cpp pre-tokenizer name for {} (lowbit maps smollm, gpt2, llama-bpe, qwen2)",
            tj["pre_tokenizer"]
        ))
    })?;
    let mut tokens: Vec<Option<(String, i32)>> = vec![None; c.vocab_size];
    let mut put = |id: u64, tok: &str, ty: i32| -> Result<()> {
        let slot = tokens
            .get_mut(id as usize)
            .ok_or_else(|| bad(format!("token {tok:?} has id {id}, beyond the vocabulary of {}", c.vocab_size)))?;
        *slot = Some((tok.to_string(), ty));
        Ok(())
    };
    for (tok, id) in model["vocab"].as_object().ok_or_else(|| bad("model.vocab is not an object".into()))? {
        put(id.as_u64().ok_or_else(|| bad(format!("vocab id of {tok:?}")))?, tok, NORMAL)?;
    }
    for a in tj["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(tok)) = (a["id"].as_u64(), a["content"].as_str()) else {
            return Err(bad(format!("added token {a}")));
        };
        let ty = if a["special"].as_bool() == Some(true) { TOKEN_TYPE_CONTROL } else { TOKEN_TYPE_USER_DEFINED };
        put(id, tok, ty as i32)?;
    }
    let (toks, types): (Vec<String>, Vec<GgufValue>) = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let (tok, ty) = t.unwrap_or_else(|| (format!("[PAD{i}]"), UNUSED));
            (tok, GgufValue::I32(ty))
        })
        .unzip();
    let merges = model["merges"]
        .as_array()
        .ok_or_else(|| bad("model.merges is missing (llama.cpp needs them)".into()))?
        .iter()
        .map(|m| match m {
            Value::String(s) => Ok(s.clone()),
            Value::Array(p) if p.len() == 2 && p.iter().all(Value::is_string) => {
                Ok(format!("{} {}", p[0].as_str().unwrap_or(""), p[1].as_str().unwrap_or("")))
            }
            other => Err(bad(format!("merge {other}"))),
        })
        .collect::<Result<Vec<_>>>()?;
    let id_of = |tok: &str| toks.iter().position(|t| t == tok).map(|i| GgufValue::U32(i as u32));
    let cfg_tok = |field: &str| -> Option<String> {
        let v = cfg?.get(field)?;
        v.as_str().or_else(|| v.get("content").and_then(Value::as_str)).map(str::to_string)
    };
    let mut kv = vec![
        ("tokenizer.ggml.model".to_string(), GgufValue::Str("gpt2".into())),
        ("tokenizer.ggml.pre".into(), GgufValue::Str(pre.into())),
        ("tokenizer.ggml.tokens".into(), strs(toks.iter().cloned())),
        ("tokenizer.ggml.token_type".into(), GgufValue::Array(GgufValueType::I32, types)),
        ("tokenizer.ggml.merges".into(), strs(merges)),
    ];
    let bos = c.bos_token_id.map(GgufValue::U32).or_else(|| cfg_tok("bos_token").and_then(|t| id_of(&t)));
    let eos =
        c.eos_token_ids.first().copied().map(GgufValue::U32).or_else(|| cfg_tok("eos_token").and_then(|t| id_of(&t)));
    for (key, v) in [
        ("bos_token_id", bos),
        ("eos_token_id", eos),
        ("unknown_token_id", cfg_tok("unk_token").and_then(|t| id_of(&t))),
        ("padding_token_id", cfg_tok("pad_token").and_then(|t| id_of(&t))),
    ] {
        if let Some(v) = v {
            kv.push((format!("tokenizer.ggml.{key}"), v));
        }
    }
    let add_bos = cfg.and_then(|c| c.get("add_bos_token")).and_then(Value::as_bool).unwrap_or(false);
    kv.push(("tokenizer.ggml.add_bos_token".into(), GgufValue::Bool(add_bos)));
    kv.push(("tokenizer.ggml.add_space_prefix".into(), GgufValue::Bool(false)));
    if let Some(t) = chat_template {
        kv.push(("tokenizer.chat_template".into(), GgufValue::Str(t.into())));
    }
    Ok(kv)
}

/// Every tensor of the model, converted, in the order `convert_hf_to_gguf.py` writes them.
fn prepare_tensors(model: &Model, opts: &GgufExportOptions) -> Result<Vec<Prepared>> {
    let c = model.config();
    let (mats, vecs) = model.named_tensors();
    let mut out = Vec::with_capacity(mats.len() + vecs.len());
    for (hf, lin) in mats {
        let name =
            gguf_name(&hf).ok_or_else(|| ModelError::input("export to GGUF", format!("no GGUF name for {hf}")))?;
        let head = matches!(hf.as_str(), "model.embed_tokens.weight" | "lm_head.weight");
        let rows = lin.rows();
        let importance = opts.imatrix.as_ref().and_then(|m| m.get(&hf));
        let (bytes, mut reference, ty, path, source) =
            convert_matrix(&name, lin.weight(), rows, lin.cols(), head, opts, importance)?;
        let mut bytes = bytes;
        if let Some(n_head) = qk_heads(&name, c) {
            bytes = permute_rows(&bytes, n_head, bytes.len() / rows);
            reference = permute_rows(&reference, n_head, lin.cols());
        }
        let max_abs_diff = measured_diff(ty, &bytes, &reference, &name)?;
        let report = TensorExport { name, source, ty, path, max_abs_diff };
        out.push(Prepared { shape: vec![rows, lin.cols()], bytes, report });
    }
    for (hf, v) in vecs {
        let name = gguf_name(&hf).ok_or_else(|| {
            ModelError::input("export to GGUF", format!("no GGUF name for {hf} (llama has no such tensor)"))
        })?;
        lowbit_core::check_finite(v).map_err(|e| tensor_err(&name, e))?;
        let v = match qk_heads(&name, c) {
            Some(n_head) => permute_rows(v, n_head, 1),
            None => v.to_vec(),
        };
        let report =
            TensorExport { name, source: "f32".into(), ty: GgmlType::F32, path: ExportPath::Exact, max_abs_diff: 0.0 };
        out.push(Prepared { shape: vec![v.len()], bytes: bytemuck::cast_slice(&v).to_vec(), report });
    }
    Ok(out)
}

/// The head count whose q/k row permutation llama.cpp's converter applies to `name`.
fn qk_heads(name: &str, c: &ModelConfig) -> Option<usize> {
    if name.contains(".attn_q.") {
        Some(c.num_attention_heads)
    } else if name.contains(".attn_k.") {
        Some(c.num_key_value_heads)
    } else {
        None
    }
}

fn tensor_err(name: &str, e: lowbit_core::CoreError) -> ModelError {
    match e {
        // The index alone would not say which tensor.
        lowbit_core::CoreError::NonFinite { index, value } => {
            ModelError::input("export to GGUF", format!("{name}: weight {index} is {value} (weights must be finite)"))
        }
        e => e.into(),
    }
}

/// Largest |dequantized GGUF - lowbit|, reading the bytes back as llama.cpp will.
fn measured_diff(ty: GgmlType, bytes: &[u8], reference: &[f32], name: &str) -> Result<f32> {
    let back = lowbit_gguf::dequantize_to_vec(ty, bytes, reference.len())
        .map_err(|e| ModelError::input("export to GGUF", format!("{name}: {e}")))?;
    Ok(back.iter().zip(reference).fold(0f32, |m, (a, b)| m.max((a - b).abs())))
}

/// llama.cpp's fallback for a type whose blocks do not tile a row of `cols` (`llama-quant.cpp`).
fn fallback(ty: GgmlType, cols: usize) -> GgmlType {
    if cols % ty.block_len() == 0 {
        return ty;
    }
    match ty {
        GgmlType::Q2K | GgmlType::Q3K => GgmlType::Q4_0,
        GgmlType::Q4K => GgmlType::Q5_0,
        GgmlType::Q5K => GgmlType::Q5_1,
        GgmlType::Q6K => GgmlType::Q8_0,
        t => t,
    }
}

/// A converted matrix: GGUF bytes (HF row order), lowbit's f32 values, type, route, source.
type Converted = (Vec<u8>, Vec<f32>, GgmlType, ExportPath, String);

#[allow(clippy::too_many_arguments)]
fn convert_matrix(
    name: &str,
    w: &WeightKind,
    rows: usize,
    cols: usize,
    head: bool,
    opts: &GgufExportOptions,
    importance: Option<&[f32]>,
) -> Result<Converted> {
    let q = match w {
        WeightKind::Quant(q) => q,
        dense => {
            let (keep, source, reference): (GgmlType, &str, Vec<f32>) = match dense {
                WeightKind::F32(v) => (GgmlType::F32, "f32", v.clone()),
                WeightKind::F16(v) => (GgmlType::F16, "f16", v.iter().map(|x| x.to_f32()).collect()),
                WeightKind::Bf16(v) => (GgmlType::Bf16, "bf16", v.iter().map(|x| x.to_f32()).collect()),
                WeightKind::Quant(_) => unreachable!("matched above"),
            };
            lowbit_core::check_finite(&reference).map_err(|e| tensor_err(name, e))?;
            let target = opts.dense_type.map(|t| fallback(t, cols)).filter(|t| cols % t.block_len() == 0);
            return Ok(match target {
                // F32 holds every f16/bf16 value.
                Some(t) if t != keep && t != GgmlType::F32 => {
                    let (bytes, path) = requantize(name, t, &reference, importance)?;
                    (bytes, reference, t, path, source.into())
                }
                t => {
                    let ty = t.unwrap_or(keep);
                    (quantize(ty, &reference)?, reference, ty, ExportPath::Exact, source.into())
                }
            });
        }
    };
    let reference = q.dequantize();
    let source = describe(q);
    if let Some((ty, bytes, path)) = repack_int(q, rows, cols)? {
        return Ok((bytes, reference, ty, path, source));
    }
    let bits8 = matches!(q.scheme(), Scheme::Int(s) if s.bits == Bits::B8);
    let want = if head {
        GgmlType::Q6K
    } else if bits8 {
        GgmlType::Q8_0
    } else {
        GgmlType::Q4K
    };
    let ty = fallback(want, cols);
    if cols % ty.block_len() != 0 {
        // No ggml block tiles the row: f32 holds lowbit's values exactly.
        return Ok((quantize(GgmlType::F32, &reference)?, reference, GgmlType::F32, ExportPath::Exact, source));
    }
    let (bytes, path) = requantize(name, ty, &reference, importance)?;
    Ok((bytes, reference, ty, path, source))
}

/// `v` as `ty`, by the importance-weighted quantizer when there are importances and `ty` has
/// one (one importance per column of `v`'s rows), else by the reference quantizer.
fn requantize(name: &str, ty: GgmlType, v: &[f32], importance: Option<&[f32]>) -> Result<(Vec<u8>, ExportPath)> {
    match importance.filter(|_| ty.traits().quantize_weighted.is_some()) {
        Some(qw) => lowbit_gguf::quantize_weighted(ty, v, qw)
            .map(|b| (b, ExportPath::ImatrixRequantized))
            .map_err(|e| ModelError::input("export to GGUF", format!("{name}: importance matrix: {e}"))),
        None => Ok((quantize(ty, v)?, ExportPath::Requantized)),
    }
}

fn quantize(ty: GgmlType, v: &[f32]) -> Result<Vec<u8>> {
    lowbit_gguf::quantize(ty, v).map_err(|e| ModelError::input("export to GGUF", e.to_string()))
}

/// `int4 g32 sym f16`, `int8 channel sym f16`, `nf4 b64 dq`.
pub(crate) fn describe(q: &QTensor) -> String {
    match q.scheme() {
        Scheme::Int(s) => {
            let g = match s.granularity {
                Granularity::PerTensor => "tensor".to_string(),
                Granularity::PerChannel => "channel".to_string(),
                Granularity::Group(g) => format!("g{g}"),
            };
            let dt = if s.scale_dtype == ScaleDtype::F16 { "f16" } else { "f32" };
            format!("int{} {g} {} {dt}", s.bits.get(), if s.symmetric { "sym" } else { "asym" })
        }
        Scheme::Codebook(c) => {
            format!("{:?} b{}{}", c.codebook, c.block_size, if c.double_quant { " dq" } else { "" }).to_lowercase()
        }
        Scheme::RowLut(s) => format!("rowlut{}", s.bits.get()),
    }
}

/// lowbit's codes and scales as Q4_0 / Q8_0 / Q4_1 blocks, when every 32-weight block lies in one
/// group whose scale is an f16 value (and whose Q4_1 minimum is finite in f16).
fn repack_int(q: &QTensor, rows: usize, cols: usize) -> Result<Option<(GgmlType, Vec<u8>, ExportPath)>> {
    let Scheme::Int(s) = *q.scheme() else { return Ok(None) };
    let Some((d, zeros)) = block_params(q, s, rows, cols) else { return Ok(None) };
    let codes = unpack(q.codes(), s.bits, rows * cols).map_err(ModelError::from)?;
    let gg = |e| ModelError::input("export to GGUF", format!("repack: {e}"));
    Ok(match (s.bits, s.symmetric) {
        // lowbit: (q - 8) * s; ggml Q4_0: (n - 8) * d.
        (Bits::B4, true) => Some((GgmlType::Q4_0, repack::pack_q4_0(&codes, &d).map_err(gg)?, ExportPath::Exact)),
        // lowbit: (q - 128) * s; ggml Q8_0: n * d with n = q - 128 as i8.
        (Bits::B8, true) => {
            let n: Vec<i8> = codes.iter().map(|&c| (i16::from(c) - 128) as i8).collect();
            Some((GgmlType::Q8_0, repack::pack_q8_0(&n, &d).map_err(gg)?, ExportPath::Exact))
        }
        // lowbit: (q - z) * s; ggml Q4_1: n * d + m, with m = -z * s rounded to f16 once.
        (Bits::B4, false) => {
            let m: Vec<f16> = d.iter().zip(&zeros).map(|(d, &z)| f16::from_f32(-f32::from(z) * d.to_f32())).collect();
            if m.iter().any(|m| !m.is_finite()) {
                return Ok(None);
            }
            Some((GgmlType::Q4_1, repack::pack_q4_1(&codes, &d, &m).map_err(gg)?, ExportPath::MinRounded))
        }
        _ => None,
    })
}

/// One (f16 scale, zero) per 32-weight block, row-major, or `None` when a block would straddle
/// two groups, rows are not whole blocks, or a scale is not an f16 value.
fn block_params(q: &QTensor, s: IntScheme, rows: usize, cols: usize) -> Option<(Vec<f16>, Vec<u8>)> {
    const QK: usize = 32;
    if cols % QK != 0 || matches!(s.granularity, Granularity::Group(g) if g % QK != 0) {
        return None;
    }
    let params = q.group_params()?;
    let nb = rows * cols / QK;
    let (mut d, mut z) = (Vec::with_capacity(nb), Vec::with_capacity(nb));
    for b in 0..nb {
        let p = params[s.granularity.param_index(cols, b * QK)];
        let h = f16::from_f32(p.scale);
        if h.to_f32() != p.scale {
            return None;
        }
        d.push(h);
        z.push(p.zero);
    }
    Some((d, z))
}
