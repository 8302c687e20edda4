//! Hugging Face GPTQ checkpoints (AutoGPTQ / GPTQModel / optimum / vLLM): export of a lowbit
//! quantized model ([`export_gptq`]) and loading of GPTQ directories through [`crate::Model::load`]
//! (v1 and v2 zero points, checked against the stored values). The layout is in [`layout`]'s
//! doc comment and `docs/format.md`.

mod export;
pub(crate) mod import;
mod layout;

pub use export::export_gptq;
pub(crate) use export::GptqWriter;

#[cfg(test)]
mod tests {
    use super::export::export_linear;
    use super::import::{GptqConfig, GptqSource};
    use crate::hf_quant::Plan;
    use crate::safetensors_source::SafetensorsSource;
    use crate::tensors::{TensorData, TensorSource};
    use lowbit_core::{rtn, Bits, Granularity, IntScheme};
    use lowbit_cpu::{Linear, WeightKind};
    use proptest::prelude::*;
    use safetensors::tensor::TensorView;

    /// lowbit tensor -> GPTQ parts (as `export_gptq` writes them) -> safetensors bytes -> the
    /// GPTQ source's tensor.
    fn round_trip(q: &lowbit_core::QTensor, plan: Plan, label_v2: bool) -> crate::Result<TensorData> {
        let (rows, cols) = q.matrix_dims();
        let lin = Linear::new(rows, cols, WeightKind::Quant(q.clone())).unwrap();
        let cfg = GptqConfig { bits: plan.bits, group: plan.group, sym: plan.symmetric, v2: label_v2 };
        let (entries, report) = export_linear("m", &lin, &plan)?;
        assert_eq!(report.max_abs_diff, 0.0);
        let views: Vec<_> =
            entries.iter().map(|(n, dt, s, b)| (n.clone(), TensorView::new(*dt, s.clone(), b).unwrap())).collect();
        let bytes = safetensors::serialize(views, None).unwrap();
        let src = SafetensorsSource::from_bytes("m.safetensors".into(), bytes)?;
        Ok(GptqSource::new(src, cfg).take("m.weight")?.expect("present").data)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn export_then_import_is_bit_exact(
            b in 0usize..3, sym: bool, g in 0usize..3, out_16 in 1usize..4, in_32 in 1usize..4, seed: u64,
        ) {
            let bits = [Bits::B2, Bits::B4, Bits::B8][b];
            let (out, inn) = (out_16 * 16, in_32 * 32);
            let granularity = [Granularity::Group(16), Granularity::Group(32), Granularity::PerChannel][g];
            let scheme = IntScheme { symmetric: sym, granularity, ..IntScheme::group(bits, 16) };
            let mut s = seed;
            let w: Vec<f32> = (0..out * inn)
                .map(|_| { s = s.wrapping_mul(6364136223846793005).wrapping_add(1); ((s >> 40) as f32 / 8388608.0) - 1.0 })
                .collect();
            let q = rtn::quantize(&w, &[out, inn], scheme).unwrap();
            let group = match granularity { Granularity::Group(g) => Some(g), _ => None };
            let plan = Plan { bits, group, symmetric: sym };
            let back = round_trip(&q, plan, !sym).unwrap();
            match back {
                TensorData::Quant(b) if sym || q.params() != b.params() => {
                    // An asymmetric tensor whose zeros all happen to be 2^(b-1) comes back symmetric.
                    prop_assert_eq!(b.codes(), q.codes());
                    prop_assert_eq!(b.dequantize(), q.dequantize());
                    if sym { prop_assert_eq!(&b, &q); }
                }
                TensorData::Quant(b) => prop_assert_eq!(&b, &q),
                other => prop_assert!(false, "dequantized: {other:?}"),
            }
        }
    }

    #[test]
    fn mislabelled_zeros_are_detected() {
        let w: Vec<f32> = (0..32 * 32).map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0).collect();
        let sym = IntScheme { symmetric: true, ..IntScheme::group(Bits::B4, 32) };
        let q = rtn::quantize(&w, &[32, 32], sym).unwrap();
        // v1 values under a v2 label: read as v1 (a warning), still exact.
        let plan = || Plan { bits: Bits::B4, group: Some(32), symmetric: true };
        assert!(matches!(round_trip(&q, plan(), true).unwrap(), TensorData::Quant(b) if b == q));
        // An asymmetric tensor with a zero of 15, written v2 and read under the v1 label: refused.
        let asym = IntScheme::group(Bits::B4, 32);
        let mut neg = w.clone();
        neg[..32].iter_mut().for_each(|x| *x = -x.abs() - 0.1);
        let q = rtn::quantize(&neg, &[32, 32], asym).unwrap();
        assert!(q.group_params().unwrap().iter().any(|p| p.zero == 15));
        let err = round_trip(&q, Plan { bits: Bits::B4, group: Some(32), symmetric: false }, false).unwrap_err();
        assert!(err.to_string().contains("m.qzeros") && err.to_string().contains("mislabelled"), "{err}");
    }
}
