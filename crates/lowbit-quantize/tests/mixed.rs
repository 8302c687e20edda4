//! Mixed precision to a byte budget on a tiny random model: the stored bytes fit the budget and
//! are the allocation's prediction, the manifest records the allocation, the model loads packed
//! with each layer's own scheme and computes what its dequantized dense twin computes; bad
//! budgets are typed errors.

#[path = "../../lowbit-model/tests/common/mod.rs"]
mod common;

use common::*;
use lowbit_core::Granularity;
use lowbit_cpu::{Linear, WeightKind};
use lowbit_model::block::staged_logits;
use lowbit_model::Model;
use lowbit_quantize::mixed::Allocation;
use lowbit_quantize::{quantize_model, CalibSource, MethodConfig, QuantizeOptions, QuantizeReport};
use std::path::{Path, PathBuf};

fn tiny(tag: &str) -> PathBuf {
    let dir = temp_dir(tag);
    let mut cfg = tiny_config("LlamaForCausalLM", true);
    // Wide enough that the candidate group sizes (32, 64, 128, channel) differ in bytes.
    cfg["hidden_size"] = 128.into();
    cfg["intermediate_size"] = 256.into();
    write_tiny_model(&dir, &cfg, 11, Store::F32);
    dir
}

fn tokens(n: usize, seed: u64) -> Vec<u32> {
    let mut rng = lowbit_model::Rng::new(seed);
    (0..n).map(|_| (rng.next_u64() % 61) as u32).collect()
}

fn opts(method: &str) -> QuantizeOptions {
    QuantizeOptions {
        method: MethodConfig::from_name(method).unwrap(),
        calib: Some(CalibSource::Tokens(tokens(600, 3))),
        nsamples: 8,
        seqlen: 16,
        batch_tokens: 32,
        ..QuantizeOptions::default()
    }
}

fn run(model: &Path, out: &Path, o: &QuantizeOptions) -> lowbit_quantize::Result<QuantizeReport> {
    quantize_model(model, out, o, &mut lowbit_core::NoProgress)
}

/// The loaded model with every quantized linear replaced by its dequantized f32 matrix.
fn dense_twin(out: &Path) -> Model {
    let mut m = Model::load(out).unwrap();
    for layer in m.layers_mut() {
        for (_, lin) in layer.linears_mut() {
            let WeightKind::Quant(q) = lin.weight() else { panic!("not packed") };
            *lin = Linear::new(lin.rows(), lin.cols(), WeightKind::F32(q.dequantize())).unwrap();
        }
    }
    m
}

fn check_run(method: &str, target: f64) -> (QuantizeReport, Allocation) {
    let dir = tiny(&format!("mixed-{method}-{target}"));
    let out = dir.join("out");
    let rep = run(&dir, &out, &QuantizeOptions { target_bpw: Some(target), ..opts(method) }).unwrap();
    let alloc = rep.allocation.clone().expect("an allocation");
    assert_eq!(alloc.layers.len(), 2 * 7);
    // Within budget, and exactly the bytes the allocation predicted.
    assert!(rep.linear_bytes_after <= alloc.budget_bytes, "{} > {}", rep.linear_bytes_after, alloc.budget_bytes);
    assert_eq!(rep.linear_bytes_after, alloc.predicted_linear_bytes);
    assert!(rep.bits_per_weight <= target + 1e-12, "{} > {target}", rep.bits_per_weight);
    if alloc.budget_bytes <= lowbit_quantize::allocate::MAX_CELLS {
        assert_eq!(alloc.grid_unit_bytes, 1, "a budget under MAX_CELLS bytes is solved exactly");
    }
    // The manifest and config record it.
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("lowbit_manifest.json")).unwrap()).unwrap();
    let saved: Allocation = serde_json::from_value(manifest["allocation"].clone()).unwrap();
    // (serde_json's float parsing may move the predicted errors by an ulp.)
    let key = |a: &Allocation| {
        a.layers.iter().map(|l| (l.block, l.name.clone(), l.bits, l.group_size, l.bytes)).collect::<Vec<_>>()
    };
    assert_eq!(key(&saved), key(&alloc));
    assert!((saved.predicted_error - alloc.predicted_error).abs() <= 1e-9 * alloc.predicted_error);
    assert_eq!(manifest["parameters"]["target_bpw"], target);
    assert_eq!(manifest["parameters"]["bits"], "mixed");
    // Loaded packed, each layer with its own scheme.
    let q = Model::load(&out).unwrap();
    for (b, layer) in q.layers().iter().enumerate() {
        for (name, lin) in layer.linears() {
            let a = alloc.layers.iter().find(|l| l.block == b && l.name == name).unwrap();
            let WeightKind::Quant(qt) = lin.weight() else { panic!("block {b} {name} not packed") };
            let lowbit_core::Scheme::Int(s) = qt.scheme() else { panic!("not integer codes") };
            assert_eq!(s.bits.get(), a.bits, "block {b} {name}");
            let want = a.group_size.map_or(Granularity::PerChannel, Granularity::Group);
            assert_eq!(s.granularity, want, "block {b} {name}");
            assert_eq!(qt.nbytes(), a.bytes, "block {b} {name}");
        }
    }
    // The packed model computes what the dequantized dense one does.
    let toks = tokens(2 * 16, 7);
    let packed = staged_logits(&q, &toks, 16).unwrap();
    let dense = staged_logits(&dense_twin(&out), &toks, 16).unwrap();
    let scale = dense.iter().map(|v| v.abs()).fold(0f32, f32::max);
    for (a, b) in packed.iter().zip(&dense) {
        assert!((a - b).abs() <= 1e-4 * scale.max(1.0), "packed {a} vs dense {b}");
    }
    (rep, alloc)
}

#[test]
fn gptq_and_rtn_fit_the_budget_and_load_packed_per_layer() {
    for method in ["gptq", "rtn"] {
        let (_, alloc) = check_run(method, 3.5);
        let distinct: std::collections::BTreeSet<_> = alloc.layers.iter().map(|l| (l.bits, l.group_size)).collect();
        assert!(distinct.len() > 1, "{method}: a mixed budget gives mixed schemes: {distinct:?}");
        // Every layer can have 3 bits at 3.5 bits per weight: no 2-bit codes then.
        assert!(alloc.layers.iter().all(|l| l.bits >= 3), "{method}: {distinct:?}");
    }
}

#[test]
fn more_bits_never_predict_more_error() {
    let (_, lo) = check_run("gptq", 2.6);
    let (_, hi) = check_run("gptq", 5.0);
    assert!(hi.predicted_error <= lo.predicted_error, "{} > {}", hi.predicted_error, lo.predicted_error);
    assert!(hi.predicted_linear_bytes > lo.predicted_linear_bytes);
    // 2.6 bits per weight is below every layer at 3 bits: 2-bit codes are back in the set.
    assert!(lo.layers.iter().any(|l| l.bits == 2));
}

#[test]
fn max_size_bounds_the_whole_directory() {
    let dir = tiny("mixed-max-size");
    // The uniform W4 g128 directory's size, plus the margin max_size holds back for headers and
    // manifest rows (a large share of so small a directory): the mixed one must fit it.
    let uniform = run(&dir, &dir.join("uniform"), &opts("gptq")).unwrap();
    let max = uniform.out_bytes + 90_000;
    let rep = run(&dir, &dir.join("mixed"), &QuantizeOptions { max_size: Some(max), ..opts("gptq") }).unwrap();
    assert!(rep.out_bytes <= max, "{} > {max}", rep.out_bytes);
    let a = rep.allocation.unwrap();
    assert_eq!(a.max_size, Some(max));
    assert!(a.other_bytes_estimate.unwrap() + a.budget_bytes as u64 <= max);
}

#[test]
fn bad_budgets_are_clear_errors() {
    let dir = tiny("mixed-bad");
    let err = |o: QuantizeOptions| run(&dir, &dir.join("x"), &o).unwrap_err().to_string();
    let e = err(QuantizeOptions { target_bpw: Some(1.0), ..opts("gptq") });
    assert!(e.contains("below the smallest allocation"), "{e}");
    let e = err(QuantizeOptions { target_bpw: Some(12.0), ..opts("gptq") });
    assert!(e.contains("above the largest allocation"), "{e}");
    let e = err(QuantizeOptions { target_bpw: Some(f64::NAN), ..opts("gptq") });
    assert!(e.contains("target_bpw must be a positive number"), "{e}");
    let e = err(QuantizeOptions { target_bpw: Some(3.5), max_size: Some(1 << 20), ..opts("gptq") });
    assert!(e.contains("not both"), "{e}");
    let e = err(QuantizeOptions { max_size: Some(1000), ..opts("gptq") });
    assert!(e.contains("leaves nothing for the block linears"), "{e}");
    let e = err(QuantizeOptions { target_bpw: Some(3.5), ..opts("awq") });
    assert!(e.contains("rtn and gptq"), "{e}");
    let e = err(QuantizeOptions { target_bpw: Some(3.5), calib: None, ..opts("rtn") });
    assert!(e.contains("calibration data"), "{e}");
    assert!(!dir.join("x").exists());
}

#[test]
fn hf_exporters_refuse_a_mixed_model() {
    let dir = tiny("mixed-export");
    let out = dir.join("out");
    let rep = run(&dir, &out, &QuantizeOptions { target_bpw: Some(3.5), ..opts("gptq") }).unwrap();
    let schemes: std::collections::BTreeSet<_> =
        rep.allocation.unwrap().layers.iter().map(|l| (l.bits, l.group_size)).collect();
    assert!(schemes.len() > 1);
    // (The GGUF export, which picks a block type per tensor, needs a tokenizer: tested from Python.)
    // The HF formats hold one bit width and group size in their config: a clear refusal.
    for format in [lowbit_model::HfFormat::Gptq, lowbit_model::HfFormat::Awq, lowbit_model::HfFormat::CompressedTensors]
    {
        let e = lowbit_model::export_hf(&out, dir.join(format!("{format:?}")), format).unwrap_err().to_string();
        assert!(e.contains("one bit width and group size"), "{format:?}: {e}");
    }
}

#[test]
fn resume_recomputes_the_same_allocation() {
    let dir = tiny("mixed-resume");
    let o = QuantizeOptions { target_bpw: Some(3.5), ..opts("gptq") };
    let whole = run(&dir, &dir.join("whole"), &o).unwrap();
    let out = dir.join("resumed");
    run(&dir, &out, &QuantizeOptions { stop_after_block: Some(0), ..o.clone() }).unwrap_err();
    let resumed = run(&dir, &out, &QuantizeOptions { resume: true, ..o }).unwrap();
    assert_eq!(resumed.resumed_from_block, 1);
    let key = |r: &QuantizeReport| {
        r.allocation.as_ref().unwrap().layers.iter().map(|l| (l.bits, l.group_size, l.bytes)).collect::<Vec<_>>()
    };
    assert_eq!(key(&whole), key(&resumed));
    for f in ["model-00002-of-00002.safetensors", "config.json"] {
        assert_eq!(std::fs::read(dir.join("whole").join(f)).unwrap(), std::fs::read(out.join(f)).unwrap(), "{f}");
    }
}
