//! AWQ's [`Writer`]: every block linear of a lowbit 4-bit model repacked exactly into AutoAWQ's
//! GEMM layout ([`super::layout`]); symmetric models store their zero point 8 explicitly
//! (`zero_point: true`), so readers need no convention for it.

use super::layout::{pack, unpack};
use crate::hf_quant::marlin_shapes;
use crate::hf_quant::{dequantize, i32_bytes, transpose, Entry, HfTensorExport, LinearParts, Plan, Writer};
use crate::{ModelError, Result};
use lowbit_core::Bits;
use lowbit_cpu::Linear;
use safetensors::tensor::Dtype;
use serde_json::{json, Value};

/// AWQ GEMM's side of [`crate::export_hf`].
pub(crate) struct AwqWriter;

impl Writer for AwqWriter {
    const NAME: &'static str = "AWQ";

    fn check(plan: &Plan, blocks: &[(String, &Linear)]) -> Result<()> {
        let refuse = |what: String| ModelError::QuantUnsupported { format: Self::NAME, what };
        if plan.bits != Bits::B4 {
            return Err(refuse(format!(
                "{}-bit codes: AWQ's GEMM layout holds 4-bit codes only; quantize with --bits 4, or export with --format gptq or compressed-tensors",
                plan.bits.get()
            )));
        }
        if let Some((n, l)) = blocks.iter().find(|(_, l)| l.rows() % 8 != 0) {
            return Err(refuse(format!(
                "{n}: out_features {} is not a multiple of 8 (AWQ packs eight 4-bit codes per int32 along the outputs)",
                l.rows()
            )));
        }
        Ok(())
    }

    fn linear(prefix: &str, lin: &Linear, plan: &Plan) -> Result<(Vec<Entry>, HfTensorExport)> {
        let lp = LinearParts::of(
            Self::NAME,
            prefix,
            lin,
            plan,
            "AutoAWQ (`assert in_features % group_size == 0`) and vLLM's AWQ kernels",
        )?;
        let (out, inn, groups) = (lp.out, lp.inn, lp.groups);
        let qweight = pack(&transpose(&lp.codes, out, inn));
        let qzeros = pack(&transpose(&lp.zeros, out, groups));
        let scales = transpose(&lp.scales, out, groups);
        // Decode what is written, as AutoAWQ's reader does, and compare with lowbit's weights.
        let codes = transpose(&unpack(&qweight), inn, out);
        let zeros = transpose(&unpack(&qzeros), groups, out);
        let s32: Vec<f32> = transpose(&scales, groups, out).iter().map(|h| h.to_f32()).collect();
        let back = dequantize(&codes, &zeros, &s32, out, inn, lp.gs);
        let entries = vec![
            (format!("{prefix}.qweight"), Dtype::I32, vec![inn, out / 8], i32_bytes(&qweight)),
            (format!("{prefix}.qzeros"), Dtype::I32, vec![groups, out / 8], i32_bytes(&qzeros)),
            (format!("{prefix}.scales"), Dtype::F16, vec![groups, out], bytemuck::cast_slice(&scales).to_vec()),
        ];
        Ok((entries, lp.report(prefix, format!("awq int4 g{}", plan.group_size()), &back)))
    }

    /// AutoAWQ's `to_transformers_dict` (`awq/models/_config.py`), INTEROP.md §2.
    fn quantization_config(plan: &Plan) -> Value {
        json!({
            "quant_method": "awq",
            "bits": 4,
            "group_size": plan.group_size(),
            "zero_point": true,
            "version": "gemm",
            "modules_to_not_convert": null,
        })
    }

    fn label(_: &Plan) -> &'static str {
        "gemm"
    }

    /// vLLM picks `awq_marlin` only for Marlin's groups and shapes, else its fp16-only `awq`.
    fn notes(plan: &Plan, blocks: &[(String, &Linear)]) -> Vec<String> {
        let mut why = vec![];
        if !matches!(plan.group_size(), -1 | 32 | 64 | 128) {
            why.push(format!("group size {} (Marlin takes -1, 32, 64, 128)", plan.group_size()));
        }
        why.extend(marlin_shapes(blocks));
        if why.is_empty() {
            return vec![];
        }
        vec![format!(
            "vLLM will not pick awq_marlin ({}); it falls back to its awq kernel (float16 only)",
            why.join("; ")
        )]
    }
}
