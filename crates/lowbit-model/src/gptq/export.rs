//! GPTQ's [`Writer`]: a lowbit quantized model to a Hugging Face GPTQ directory (the layout in
//! [`super::layout`] and `docs/format.md`), loadable by transformers (optimum + GPTQModel),
//! AutoGPTQ and vLLM; [`crate::hf_quant::export_hf`] drives it.
//!
//! Every block linear is repacked exactly: lowbit's codes, its f16 scales and its zero points
//! become `qweight` / `scales` / `qzeros`, with `g_idx = i / group_size` and `desc_act: false`
//! (lowbit's groups are runs of consecutive original columns even with act-order, so its models
//! are GPTQ's static-groups layout). Symmetric models are written as v1 (`z - 1` stored),
//! asymmetric ones as `gptq_v2` (v1 cannot store a zero of 0). Each linear written is decoded
//! back from its GPTQ tensors and compared with lowbit's dequantized weights, so the report's
//! difference is measured.

use super::layout::{dequantize, pack_qweight, pack_qzeros, per_word, transpose, unpack_qweight, unpack_qzeros};
use crate::hf_quant::{
    export_hf, i32_bytes, marlin_shapes, Entry, HfExport, HfFormat, HfTensorExport, LinearParts, Plan, Writer,
};
use crate::{ModelError, Result};
use lowbit_core::Bits;
use lowbit_cpu::Linear;
use safetensors::tensor::Dtype;
use serde_json::{json, Value};
use std::path::Path;

/// Exports the lowbit quantized model at `model` to the HF GPTQ directory `out`:
/// [`export_hf`] with [`HfFormat::Gptq`].
pub fn export_gptq(model: impl AsRef<Path>, out: impl AsRef<Path>) -> Result<HfExport> {
    export_hf(model, out, HfFormat::Gptq)
}

/// HF GPTQ's side of [`export_hf`].
pub(crate) struct GptqWriter;

fn format(plan: &Plan) -> &'static str {
    if plan.symmetric {
        "gptq"
    } else {
        "gptq_v2"
    }
}

impl Writer for GptqWriter {
    const NAME: &'static str = "GPTQ";

    fn check(plan: &Plan, _: &[(String, &Linear)]) -> Result<()> {
        if plan.bits == Bits::B3 {
            return Err(ModelError::QuantUnsupported {
                format: Self::NAME,
                what: "3-bit: GPTQ's 3-bit qweight packs codes across word boundaries, which lowbit does not write; use 2, 4 or 8 bits, or --format gguf".into(),
            });
        }
        Ok(())
    }

    fn linear(prefix: &str, lin: &Linear, plan: &Plan) -> Result<(Vec<Entry>, HfTensorExport)> {
        export_linear(prefix, lin, plan)
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
            "checkpoint_format": format(plan),
            "format": format(plan),
            "pack_dtype": "int32",
            "lm_head": false,
            "meta": {"quantizer": [format!("lowbit:{}", env!("CARGO_PKG_VERSION"))]},
        })
    }

    fn extra_files(qc: &Value) -> Vec<(&'static str, Value)> {
        vec![("quantize_config.json", qc.clone())]
    }

    fn label(plan: &Plan) -> &'static str {
        format(plan)
    }

    /// What vLLM and AutoGPTQ will do with this export (INTEROP.md §1 "What loaders accept").
    fn notes(plan: &Plan, blocks: &[(String, &Linear)]) -> Vec<String> {
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
        why.extend(marlin_shapes(blocks));
        if !why.is_empty() {
            notes
                .push(format!("vLLM will not pick gptq_marlin ({}); it falls back to its gptq kernel", why.join("; ")));
        }
        if !plan.symmetric {
            notes.push(
                "asymmetric: written as gptq_v2 (v1 cannot store a zero of 0); transformers/GPTQModel and vLLM >= PR #26092 read it, AutoGPTQ does not"
                    .into(),
            );
        }
        notes
    }
}

/// One block linear as `qweight`, `qzeros`, `scales`, `g_idx`.
pub(super) fn export_linear(prefix: &str, lin: &Linear, plan: &Plan) -> Result<(Vec<Entry>, HfTensorExport)> {
    let (out, inn, bits) = (lin.rows(), lin.cols(), plan.bits);
    let p = per_word(bits);
    if inn % p != 0 || out % p != 0 {
        return Err(ModelError::QuantUnsupported {
            format: GptqWriter::NAME,
            what: format!(
                "{prefix}: shape [{out}, {inn}]: GPTQ packs {p} {}-bit codes per int32 along in_features (qweight) and out_features (qzeros), so both must be multiples of {p}",
                bits.get()
            ),
        });
    }
    let lp = LinearParts::of(
        GptqWriter::NAME,
        prefix,
        lin,
        plan,
        "GPTQ loaders (vLLM's `in % group_size == 0`, GPTQModel)",
    )?;
    let groups = lp.groups;
    // GPTQ's [G, out] order; v1 stores z - 1 (only symmetric models, z = 2^(b-1), are v1).
    let scales = transpose(&lp.scales, out, groups);
    let stored: Vec<u8> = transpose(&lp.zeros, out, groups).iter().map(|&z| z - u8::from(plan.symmetric)).collect();
    let qweight = pack_qweight(&lp.codes, out, inn, bits);
    let qzeros = pack_qzeros(&stored, bits);
    let g_idx: Vec<i32> = (0..inn).map(|i| (i / lp.gs) as i32).collect();
    // Decode what is written, as a GPTQ reader does, and compare with lowbit's weights.
    let back_zeros: Vec<u8> = unpack_qzeros(&qzeros, bits).iter().map(|&z| z + u8::from(plan.symmetric)).collect();
    let scales32: Vec<f32> = scales.iter().map(|h| h.to_f32()).collect();
    let gi: Vec<usize> = g_idx.iter().map(|&g| g as usize).collect();
    let back = dequantize(&unpack_qweight(&qweight, out, inn, bits), &back_zeros, &scales32, &gi, out);
    let entries = vec![
        (format!("{prefix}.qweight"), Dtype::I32, vec![inn / p, out], i32_bytes(&qweight)),
        (format!("{prefix}.qzeros"), Dtype::I32, vec![groups, out / p], i32_bytes(&qzeros)),
        (format!("{prefix}.scales"), Dtype::F16, vec![groups, out], bytemuck::cast_slice(&scales).to_vec()),
        (format!("{prefix}.g_idx"), Dtype::I32, vec![inn], i32_bytes(&g_idx)),
    ];
    let dtype = format!("gptq int{} g{} {}", bits.get(), plan.group_size(), if plan.symmetric { "v1" } else { "v2" });
    Ok((entries, lp.report(prefix, dtype, &back)))
}
