//! compressed-tensors' [`Writer`]: every block linear of a lowbit integer model (2, 4 or 8
//! bits) repacked exactly into `pack-quantized` ([`super::layout`]), with one `config_groups`
//! entry targeting `Linear` and `lm_head` ignored (kept dense, like the embedding).

use super::layout::{pack_rows, per_word, unpack_rows};
use crate::hf_quant::{
    dequantize, i32_bytes, marlin_shapes, transpose, Entry, HfTensorExport, LinearParts, Plan, Writer,
};
use crate::{ModelError, Result};
use lowbit_core::Bits;
use lowbit_cpu::Linear;
use safetensors::tensor::Dtype;
use serde_json::{json, Value};

/// compressed-tensors' side of [`crate::export_hf`].
pub(crate) struct CtWriter;

/// The compressed-tensors version whose layout and config this export follows (INTEROP.md §3).
const CT_VERSION: &str = "0.20.1";

impl Writer for CtWriter {
    const NAME: &'static str = "compressed-tensors";

    fn check(plan: &Plan, _: &[(String, &Linear)]) -> Result<()> {
        if plan.bits == Bits::B3 {
            return Err(ModelError::QuantUnsupported {
                format: Self::NAME,
                what: "3-bit: compressed-tensors packs 3-bit codes ten per word in older versions and as a dense bit stream since (0.20), so no one layout loads everywhere; use 2, 4 or 8 bits".into(),
            });
        }
        Ok(())
    }

    fn linear(prefix: &str, lin: &Linear, plan: &Plan) -> Result<(Vec<Entry>, HfTensorExport)> {
        let lp = LinearParts::of(Self::NAME, prefix, lin, plan, "vLLM's compressed-tensors kernels")?;
        let (out, inn, groups, bits) = (lp.out, lp.inn, lp.groups, plan.bits);
        let p = per_word(bits);
        // The offset codes q + 2^(b-1) are lowbit's unsigned codes (layout.rs).
        let packed = pack_rows(&lp.codes, inn, bits);
        let mut entries =
            vec![(format!("{prefix}.weight_packed"), Dtype::I32, vec![out, inn.div_ceil(p)], i32_bytes(&packed))];
        entries.push((
            format!("{prefix}.weight_scale"),
            Dtype::F16,
            vec![out, groups],
            bytemuck::cast_slice(&lp.scales).to_vec(),
        ));
        let mut zeros = vec![bits.symmetric_zero(); out * groups];
        if !plan.symmetric {
            // Packed along dim 0: pack the transposed [G, out] rows, then transpose the words.
            let zp = pack_rows(&transpose(&lp.zeros, out, groups), out, bits);
            let rows = out.div_ceil(p);
            entries.push((
                format!("{prefix}.weight_zero_point"),
                Dtype::I32,
                vec![rows, groups],
                i32_bytes(&transpose(&zp, groups, rows)),
            ));
            zeros = transpose(&unpack_rows(&zp, out, bits), groups, out);
        }
        let shape = [out as i64, inn as i64];
        entries.push((format!("{prefix}.weight_shape"), Dtype::I64, vec![2], bytemuck::cast_slice(&shape).to_vec()));
        // Decode what is written and compare with lowbit's weights.
        let s32: Vec<f32> = lp.scales.iter().map(|h| h.to_f32()).collect();
        let back = dequantize(&unpack_rows(&packed, inn, bits), &zeros, &s32, out, inn, lp.gs);
        let kind = if plan.symmetric { "sym" } else { "asym" };
        let dtype = format!("pack-quantized int{} g{} {kind}", bits.get(), plan.group_size());
        Ok((entries, lp.report(prefix, dtype, &back)))
    }

    /// INTEROP.md §3 (`quantization/quant_config.py`, `quant_args.py`).
    fn quantization_config(plan: &Plan) -> Value {
        let (strategy, group_size) = match plan.group {
            Some(g) => ("group", json!(g)),
            None => ("channel", Value::Null),
        };
        json!({
            "quant_method": "compressed-tensors",
            "format": "pack-quantized",
            "quantization_status": "compressed",
            "config_groups": {"group_0": {
                "targets": ["Linear"],
                "format": "pack-quantized",
                "weights": {
                    "num_bits": plan.bits.get(),
                    "type": "int",
                    "symmetric": plan.symmetric,
                    "strategy": strategy,
                    "group_size": group_size,
                    "dynamic": false,
                    "actorder": null,
                    "block_structure": null,
                    "observer": "minmax",
                    "observer_kwargs": {},
                },
                "input_activations": null,
                "output_activations": null,
            }},
            "ignore": ["lm_head"],
            "kv_cache_scheme": null,
            "global_compression_ratio": null,
            "sparsity_config": {},
            "version": CT_VERSION,
        })
    }

    fn label(_: &Plan) -> &'static str {
        "pack-quantized"
    }

    /// vLLM's `CompressedTensorsWNA16` runs on Marlin: 4 or 8 bits, its groups and shapes.
    fn notes(plan: &Plan, blocks: &[(String, &Linear)]) -> Vec<String> {
        let mut why = vec![];
        if !matches!(plan.bits, Bits::B4 | Bits::B8) {
            why.push(format!("{} bits (it takes 4 or 8)", plan.bits.get()));
        }
        if !matches!(plan.group_size(), -1 | 32 | 64 | 128) {
            why.push(format!("group size {} (Marlin takes channel, 32, 64, 128)", plan.group_size()));
        }
        why.extend(marlin_shapes(blocks));
        let mut notes = vec![];
        if !why.is_empty() {
            notes.push(format!("vLLM's CompressedTensorsWNA16 (Marlin) will refuse this export: {}", why.join("; ")));
        }
        if !plan.symmetric {
            notes.push("asymmetric: transformers' decompression of packed zero points depends on the compressed-tensors version (compressed-tensors #458, llm-compressor #2099)".into());
        }
        notes
    }
}
