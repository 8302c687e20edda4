//! AutoAWQ "GEMM" checkpoints (transformers via GPTQModel, vLLM `awq` / `awq_marlin`): export of
//! a lowbit 4-bit model ([`crate::export_hf`] with [`crate::HfFormat::Awq`]) and loading of AWQ
//! directories through [`crate::Model::load`]. The layout is in [`layout`]'s doc comment and
//! `docs/format.md`.

mod export;
pub(crate) mod import;
mod layout;

pub(crate) use export::AwqWriter;

#[cfg(test)]
mod tests {
    use super::import::{AwqConfig, AwqSource};
    use super::AwqWriter;
    use crate::hf_quant::{Plan, Writer};
    use crate::safetensors_source::SafetensorsSource;
    use crate::tensors::{TensorData, TensorSource};
    use lowbit_core::{rtn, Bits, Granularity, IntScheme};
    use lowbit_cpu::{Linear, WeightKind};
    use proptest::prelude::*;
    use safetensors::tensor::TensorView;

    /// lowbit tensor -> AWQ parts -> safetensors bytes -> the AWQ source's tensor.
    pub(crate) fn round_trip(q: &lowbit_core::QTensor, plan: Plan) -> crate::Result<TensorData> {
        let (rows, cols) = q.matrix_dims();
        let lin = Linear::new(rows, cols, WeightKind::Quant(q.clone())).unwrap();
        let (entries, report) = AwqWriter::linear("m", &lin, &plan)?;
        assert_eq!(report.max_abs_diff, 0.0);
        let views: Vec<_> =
            entries.iter().map(|(n, dt, s, b)| (n.clone(), TensorView::new(*dt, s.clone(), b).unwrap())).collect();
        let bytes = safetensors::serialize(views, None).unwrap();
        let src = SafetensorsSource::from_bytes("m.safetensors".into(), bytes)?;
        let cfg = AwqConfig { group: plan.group };
        Ok(AwqSource::new(src, cfg).take("m.weight")?.expect("present").data)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        #[test]
        fn export_then_import_is_bit_exact(
            sym: bool, g in 0usize..3, out_8 in 1usize..5, in_32 in 1usize..4, seed: u64,
        ) {
            let (out, inn) = (out_8 * 8, in_32 * 32);
            let granularity = [Granularity::Group(16), Granularity::Group(32), Granularity::PerChannel][g];
            let scheme = IntScheme { symmetric: sym, granularity, ..IntScheme::group(Bits::B4, 16) };
            let mut s = seed;
            let w: Vec<f32> = (0..out * inn)
                .map(|_| { s = s.wrapping_mul(6364136223846793005).wrapping_add(1); ((s >> 40) as f32 / 8388608.0) - 1.0 })
                .collect();
            let q = rtn::quantize(&w, &[out, inn], scheme).unwrap();
            let group = match granularity { Granularity::Group(g) => Some(g), _ => None };
            let back = round_trip(&q, Plan { bits: Bits::B4, group, symmetric: sym }).unwrap();
            match back {
                // Zeros are stored explicitly: an asymmetric tensor whose zeros all happen to be
                // 8 comes back symmetric, with the same codes and values.
                TensorData::Quant(b) if !sym && q.params() != b.params() => {
                    prop_assert_eq!(b.codes(), q.codes());
                    prop_assert_eq!(b.dequantize(), q.dequantize());
                }
                TensorData::Quant(b) => prop_assert_eq!(&b, &q),
                other => prop_assert!(false, "dequantized: {other:?}"),
            }
        }
    }
}
