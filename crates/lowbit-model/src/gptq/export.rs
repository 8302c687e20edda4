//! `export_gptq`: a lowbit quantized model to a Hugging Face GPTQ directory (the layout in
//! [`super::layout`] and `docs/format.md`), loadable by transformers (optimum + GPTQModel),
//! AutoGPTQ and vLLM.
//!
//! Every block linear is repacked exactly: lowbit's codes, its f16 scales and its zero points
//! become `qweight` / `scales` / `qzeros`, with `g_idx = i / group_size` and `desc_act: false`
//! (lowbit's groups are runs of consecutive original columns even with act-order, so its models
//! are GPTQ's static-groups layout). Symmetric models are written as v1 (`z - 1` stored),
//! asymmetric ones as `gptq_v2` (v1 cannot store a zero of 0). The embedding, LM head, norms and
//! biases stay dense; a quantized embedding or head is dequantized to f32 (exact values), which
//! the report says. Each linear written is decoded back from its GPTQ tensors and compared with
//! lowbit's dequantized weights, so the report's difference is measured.

use super::layout::{dequantize, pack_qweight, pack_qzeros, per_word, unpack_qweight, unpack_qzeros};
use crate::gguf::ExportPath;
use crate::load::{write, write_dir_atomically, write_tokenizer_files, LoadOptions};
use crate::model::Model;
use crate::{ModelError, Result};
use half::f16;
use lowbit_core::{pack::unpack, Bits, Granularity, Scheme};
use lowbit_cpu::{Linear, WeightKind};
use safetensors::tensor::{Dtype, TensorView};
use serde_json::{json, Value};
use std::path::Path;

/// One tensor of a GPTQ export.
#[derive(Clone, Debug)]
pub struct GptqTensorExport {
    /// The module or tensor name (`model.layers.0.self_attn.q_proj`, `model.norm.weight`).
    pub name: String,
    /// How lowbit stored it (`int4 g64 sym f16`, `f32`).
    pub source: String,
    /// What was written: `gptq int4 g64 v1`, `F32`, `F16`, `BF16`.
    pub dtype: String,
    /// Always [`ExportPath::Exact`]: GPTQ export refuses what it cannot store exactly.
    pub path: ExportPath,
    /// Largest |written - lowbit dequantized| over the tensor (decoded back from the GPTQ tensors).
    pub max_abs_diff: f32,
}

/// What [`export_gptq`] wrote.
#[derive(Clone, Debug)]
pub struct GptqExport {
    /// Every linear module and dense tensor, in file order.
    pub tensors: Vec<GptqTensorExport>,
    /// Bytes of every file in the directory.
    pub bytes: u64,
    /// `gptq` (v1 zeros) or `gptq_v2`.
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

fn refuse(what: impl Into<String>) -> ModelError {
    ModelError::GptqUnsupported { what: what.into() }
}

/// The GPTQ parameters every block linear shares.
pub(super) struct Plan {
    pub(super) bits: Bits,
    /// `None` for one scale per output channel (`group_size: -1`).
    pub(super) group: Option<usize>,
    pub(super) symmetric: bool,
}

impl Plan {
    fn of(mats: &[(String, &Linear)]) -> Result<Plan> {
        let mut plan: Option<(Bits, Option<usize>, String)> = None;
        let mut symmetric = true;
        for (name, lin) in mats.iter().filter(|(n, _)| n.starts_with("model.layers.")) {
            let q = match lin.weight() {
                WeightKind::Quant(q) => q,
                _ => {
                    return Err(refuse(format!(
                        "{name} is not quantized (GPTQ stores every block linear as integer codes): export a `lowbit quantize` output"
                    )))
                }
            };
            let Scheme::Int(s) = *q.scheme() else {
                return Err(refuse(format!(
                    "{name} is {} (GPTQ stores integer codes with scales; use --format gguf for codebook schemes)",
                    crate::gguf::describe(q)
                )));
            };
            if s.bits == Bits::B3 {
                return Err(refuse(
                    "3-bit: GPTQ's 3-bit qweight packs codes across word boundaries, which lowbit does not write; use 2, 4 or 8 bits, or --format gguf",
                ));
            }
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
                        "{name} has {} bits, group {} but {first} has {} bits, group {}: GPTQ's config holds one bit width and group size",
                        s.bits.get(),
                        gname(group),
                        b.get(),
                        gname(*g)
                    )));
                }
                Some(_) => {}
            }
        }
        let (bits, group, _) = plan.ok_or_else(|| refuse("the model has no block linears"))?;
        Ok(Plan { bits, group, symmetric })
    }

    fn group_size(&self) -> i64 {
        self.group.map_or(-1, |g| g as i64)
    }

    fn format(&self) -> &'static str {
        if self.symmetric {
            "gptq"
        } else {
            "gptq_v2"
        }
    }
}

/// A tensor to write: name, dtype, shape, little-endian bytes.
pub(super) type Entry = (String, Dtype, Vec<usize>, Vec<u8>);

/// Exports the lowbit quantized model at `model` (anything [`Model::load`] reads) to the HF GPTQ
/// directory `out` (which must not exist or be empty), written in a temporary sibling and
/// renamed into place, so a refusal or failure leaves nothing behind.
pub fn export_gptq(model: impl AsRef<Path>, out: impl AsRef<Path>) -> Result<GptqExport> {
    let (model_path, out) = (model.as_ref(), out.as_ref());
    let model = Model::load_with(model_path, &LoadOptions::default())?;
    let (mats, vecs) = model.named_tensors();
    let plan = Plan::of(&mats)?;
    let mut notes = loader_notes(&plan, &mats);
    let (mut entries, mut tensors) = (Vec::<Entry>::new(), Vec::new());
    for (name, lin) in &mats {
        if name.starts_with("model.layers.") {
            let prefix = name.strip_suffix(".weight").unwrap_or(name);
            let (parts, report) = export_linear(prefix, lin, &plan)?;
            entries.extend(parts);
            tensors.push(report);
        } else {
            let (entry, report) = dense_matrix(name, lin);
            if report.source != report.dtype.to_lowercase() {
                notes.push(format!(
                    "{name}: lowbit's {} dequantized to {} (GPTQ keeps embeddings and the LM head dense; exact values)",
                    report.source, report.dtype
                ));
            }
            entries.push(entry);
            tensors.push(report);
        }
    }
    for (name, v) in vecs {
        lowbit_core::check_finite(v)
            .map_err(|_| ModelError::input("export to GPTQ", format!("{name} has a non-finite value")))?;
        entries.push((name.clone(), Dtype::F32, vec![v.len()], bytemuck::cast_slice(v).to_vec()));
        tensors.push(dense_report(&name, "f32", "F32"));
    }
    let qc = quantization_config(&plan);
    let mut config = model.config().to_hf_json();
    config["torch_dtype"] = "float16".into();
    config["quantization_config"] = qc.clone();
    let mut bytes = 0u64;
    write_dir_atomically(out, |tmp| {
        let st = tmp.join("model.safetensors");
        let views = entries
            .iter()
            .map(|(n, dt, shape, data)| TensorView::new(*dt, shape.clone(), data).map(|v| (n.clone(), v)))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| ModelError::Safetensors { path: st.display().to_string(), reason: e.to_string() })?;
        // transformers refuses safetensors files without `format` metadata.
        let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
        safetensors::serialize_to_file(views, Some(meta), &st)
            .map_err(|e| ModelError::Safetensors { path: st.display().to_string(), reason: e.to_string() })?;
        write(&tmp.join("config.json"), pretty(&config).as_bytes())?;
        write(&tmp.join("quantize_config.json"), pretty(&qc).as_bytes())?;
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
    Ok(GptqExport { tensors, bytes, checkpoint_format: plan.format(), notes })
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default() + "\n"
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

/// The dict written to `config.json["quantization_config"]` and `quantize_config.json`
/// (INTEROP.md §1: AutoGPTQ reads `checkpoint_format`, GPTQModel `format`).
fn quantization_config(plan: &Plan) -> Value {
    json!({
        "quant_method": "gptq",
        "bits": plan.bits.get(),
        "group_size": plan.group_size(),
        "desc_act": false,
        "static_groups": false,
        "sym": plan.symmetric,
        "true_sequential": true,
        "damp_percent": 0.01,
        "checkpoint_format": plan.format(),
        "format": plan.format(),
        "pack_dtype": "int32",
        "lm_head": false,
        "meta": {"quantizer": [format!("lowbit:{}", env!("CARGO_PKG_VERSION"))]},
    })
}

/// What vLLM and AutoGPTQ will do with this export (INTEROP.md §1 "What loaders accept").
fn loader_notes(plan: &Plan, mats: &[(String, &Linear)]) -> Vec<String> {
    let mut notes = vec![];
    let mut why = vec![];
    if !matches!(plan.bits, Bits::B4 | Bits::B8) {
        why.push(format!("{} bits (Marlin takes 4 or 8)", plan.bits.get()));
    }
    if !plan.symmetric {
        why.push("asymmetric zeros (Marlin assumes zero = 2^(b-1))".to_string());
    }
    if !matches!(plan.group_size(), -1 | 32 | 64 | 128) {
        why.push(format!("group size {} (Marlin takes -1, 32, 64, 128)", plan.group_size()));
    }
    let blocks = mats.iter().filter(|(n, _)| n.starts_with("model.layers."));
    if let Some((n, l)) = blocks.clone().find(|(_, l)| l.cols() % 128 != 0) {
        why.push(format!("{n}: in_features {} is not a multiple of 128", l.cols()));
    }
    if let Some((n, l)) = blocks.clone().find(|(_, l)| l.rows() % 64 != 0) {
        why.push(format!("{n}: out_features {} is not a multiple of 64", l.rows()));
    }
    if !why.is_empty() {
        notes.push(format!("vLLM will not pick gptq_marlin ({}); it falls back to its gptq kernel", why.join("; ")));
    }
    if !plan.symmetric {
        notes.push(
            "asymmetric: written as gptq_v2 (v1 cannot store a zero of 0); transformers/GPTQModel and vLLM >= PR #26092 read it, AutoGPTQ does not"
                .into(),
        );
    }
    notes
}

fn dense_report(name: &str, source: &str, dtype: &str) -> GptqTensorExport {
    GptqTensorExport {
        name: name.into(),
        source: source.into(),
        dtype: dtype.into(),
        path: ExportPath::Exact,
        max_abs_diff: 0.0,
    }
}

/// The embedding or LM head, dense: kept in its dtype, or lowbit's quantized one dequantized to f32.
fn dense_matrix(name: &str, lin: &Linear) -> (Entry, GptqTensorExport) {
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

/// One block linear as `qweight`, `qzeros`, `scales`, `g_idx`.
pub(super) fn export_linear(prefix: &str, lin: &Linear, plan: &Plan) -> Result<(Vec<Entry>, GptqTensorExport)> {
    let WeightKind::Quant(q) = lin.weight() else { unreachable!("Plan::of checked every block linear") };
    let Scheme::Int(s) = *q.scheme() else { unreachable!("Plan::of checked every block linear") };
    let (out, inn, bits) = (lin.rows(), lin.cols(), plan.bits);
    let p = per_word(bits);
    if inn % p != 0 || out % p != 0 {
        return Err(refuse(format!(
            "{prefix}: shape [{out}, {inn}]: GPTQ packs {p} {}-bit codes per int32 along in_features (qweight) and out_features (qzeros), so both must be multiples of {p}",
            bits.get()
        )));
    }
    let gs = plan.group.unwrap_or(inn);
    if inn % gs != 0 {
        return Err(refuse(format!(
            "{prefix}: in_features {inn} is not a multiple of group size {gs}: GPTQ loaders (vLLM's `in % group_size == 0`, GPTQModel) need whole groups; requantize with --group-size 64 or 32"
        )));
    }
    let groups = inn / gs;
    let params = q.group_params().unwrap_or_default();
    let codes = unpack(q.codes(), bits, out * inn)?;
    // GPTQ's [G, out] order: scales and stored zeros.
    let (mut scales, mut stored) = (vec![], vec![]);
    for g in 0..groups {
        for n in 0..out {
            let gp = params[s.granularity.param_index(inn, n * inn + g * gs)];
            let h = f16::from_f32(gp.scale);
            if h.to_f32() != gp.scale {
                return Err(refuse(format!(
                    "{prefix}: scale {} is not an f16 value (GPTQ stores f16 scales): quantize with --scale-dtype f16",
                    gp.scale
                )));
            }
            scales.push(h);
            // v1 stores z - 1; only symmetric models (z = 2^(b-1)) are written as v1.
            stored.push(if plan.symmetric { gp.zero - 1 } else { gp.zero });
        }
    }
    let qweight = pack_qweight(&codes, out, inn, bits);
    let qzeros = pack_qzeros(&stored, bits);
    let g_idx: Vec<i32> = (0..inn).map(|i| (i / gs) as i32).collect();
    // Decode what is written, as a GPTQ reader does, and compare with lowbit's weights.
    let back_zeros: Vec<u8> = unpack_qzeros(&qzeros, bits).iter().map(|&z| z + u8::from(plan.symmetric)).collect();
    let scales32: Vec<f32> = scales.iter().map(|h| h.to_f32()).collect();
    let gi: Vec<usize> = g_idx.iter().map(|&g| g as usize).collect();
    let back = dequantize(&unpack_qweight(&qweight, out, inn, bits), &back_zeros, &scales32, &gi, out);
    let max_abs_diff = back.iter().zip(q.dequantize()).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    let i32s = |v: &[i32]| bytemuck::cast_slice::<i32, u8>(v).to_vec();
    let entries = vec![
        (format!("{prefix}.qweight"), Dtype::I32, vec![inn / p, out], i32s(&qweight)),
        (format!("{prefix}.qzeros"), Dtype::I32, vec![groups, out / p], i32s(&qzeros)),
        (format!("{prefix}.scales"), Dtype::F16, vec![groups, out], bytemuck::cast_slice(&scales).to_vec()),
        (format!("{prefix}.g_idx"), Dtype::I32, vec![inn], i32s(&g_idx)),
    ];
    let report = GptqTensorExport {
        name: prefix.into(),
        source: crate::gguf::describe(q),
        dtype: format!("gptq int{} g{} {}", bits.get(), plan.group_size(), if plan.symmetric { "v1" } else { "v2" }),
        path: ExportPath::Exact,
        max_abs_diff,
    };
    Ok((entries, report))
}
