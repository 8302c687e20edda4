//! SpQR through the pipeline on a tiny model: the saved layers hold quantized statistics and
//! outliers, load packed, reload and save again bit for bit, the size report counts every byte,
//! and bad settings are refused.

#[path = "../../lowbit-model/tests/common/mod.rs"]
mod common;

use common::*;
use lowbit_core::QParams;
use lowbit_cpu::WeightKind;
use lowbit_model::block::staged_logits;
use lowbit_model::Model;
use lowbit_quantize::spec::OptionValue;
use lowbit_quantize::{quantize_model, CalibSource, QuantizeOptions, QuantizeReport};
use std::path::{Path, PathBuf};

fn tiny(tag: &str) -> PathBuf {
    let dir = temp_dir(tag);
    let cfg = tiny_config("LlamaForCausalLM", true);
    write_tiny_model(&dir, &cfg, 7, Store::F32);
    dir
}

fn tokens(n: usize, seed: u64) -> Vec<u32> {
    let mut rng = lowbit_model::Rng::new(seed);
    (0..n).map(|_| (rng.next_u64() % 61) as u32).collect()
}

fn opts(pairs: &[(&str, OptionValue)]) -> lowbit_quantize::Result<QuantizeOptions> {
    let mut all: Vec<(String, OptionValue)> = vec![("method".into(), OptionValue::Str("spqr".into()))];
    all.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let o = QuantizeOptions::from_pairs(&all)?;
    Ok(QuantizeOptions {
        calib: Some(CalibSource::Tokens(tokens(400, 1))),
        nsamples: 6,
        seqlen: 8,
        batch_tokens: 16,
        ..o
    })
}

fn run(model: &Path, out: &Path, o: &QuantizeOptions) -> lowbit_quantize::Result<QuantizeReport> {
    quantize_model(model, out, o, &mut lowbit_core::NoProgress)
}

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".safetensors"))
        .map(|n| (n.clone(), std::fs::read(dir.join(&n)).unwrap()))
        .collect();
    v.sort();
    v
}

#[test]
fn spqr_runs_loads_packed_and_reloads_bit_identically() {
    let dir = tiny("spqr");
    let out = dir.join("out");
    let o = opts(&[("bits", OptionValue::Int(3)), ("outlier_threshold", OptionValue::Float(0.1))]).unwrap();
    assert_eq!(o.group_size, Some(16), "spqr's default group");
    let rep = run(&dir, &out, &o).unwrap();
    assert_eq!(rep.layers.len(), 14);
    assert!(rep.layers.iter().all(|l| l.loss.is_finite()));

    let q = Model::load(&out).unwrap();
    let (mut bytes, mut params, mut outliers) = (0usize, 0usize, 0usize);
    for layer in q.layers() {
        for (name, lin) in layer.linears() {
            let WeightKind::Quant(t) = lin.weight() else { panic!("{name} did not load packed") };
            assert!(matches!(t.params(), QParams::IntStats(s) if s.bits.get() == 3 && s.group == 16), "{name}");
            bytes += t.nbytes();
            params += t.numel();
            outliers += t.outliers().map_or(0, |o| o.nnz());
        }
    }
    assert!(outliers > 0, "no outliers at threshold 0.1");
    // The report's block-linear size is every stored byte: codes, statistics, outliers.
    let bpw = bytes as f64 * 8.0 / params as f64;
    assert!((rep.bits_per_weight - bpw).abs() < 1e-9, "{} vs {bpw}", rep.bits_per_weight);
    assert!(bpw > 3.0 + 6.0 / 16.0, "{bpw}");
    let qc: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("config.json")).unwrap()).unwrap();
    let qc = &qc["quantization_config"];
    assert_eq!(qc["method"], "spqr");
    assert_eq!(qc["stats_bits"], 3);
    assert_eq!(qc["outlier_relative_threshold"], 0.1);
    assert!(qc.get("outlier_threshold").is_none(), "that key is LLM.int8()'s");
    assert_eq!(q.config().int8_outlier_threshold, None);

    // Saved again by lowbit, the tensors are the same bytes and the model the same function.
    let again = dir.join("again");
    q.save(&again).unwrap();
    let q2 = Model::load(&again).unwrap();
    let toks = tokens(16, 3);
    assert_eq!(staged_logits(&q2, &toks, 8).unwrap(), staged_logits(&q, &toks, 8).unwrap());
    let tensors = |m: &Model| -> Vec<lowbit_core::QTensor> {
        m.layers()
            .iter()
            .flat_map(|l| l.linears().into_iter().map(|(_, lin)| lin.weight().clone()))
            .map(|w| match w {
                WeightKind::Quant(t) => t,
                _ => panic!("not packed"),
            })
            .collect()
    };
    assert_eq!(tensors(&q2), tensors(&q));
    let again2 = dir.join("again2");
    q2.save(&again2).unwrap();
    assert_eq!(files(&again2), files(&again));

    // Outliers cost bytes and buy accuracy on the model's own function.
    let none = dir.join("none");
    let o = opts(&[("bits", OptionValue::Int(3)), ("outlier_threshold", OptionValue::Float(f64::INFINITY))]).unwrap();
    let rep_none = run(&dir, &none, &o).unwrap();
    assert!((rep_none.bits_per_weight - (3.0 + 6.0 / 16.0 + 4.0 * 16.0 / 256.0)).abs() < 0.01);
    assert!(rep_none.bits_per_weight < rep.bits_per_weight);
}

#[test]
fn bad_settings_are_refused() {
    let dir = tiny("spqr-bad");
    for (k, v, want) in [
        ("outlier_threshold", f64::NAN, "outlier_threshold"),
        ("outlier_threshold", -1.0, "outlier_threshold"),
        ("outlier_max_percent", 150.0, "outlier_max_percent"),
        ("outlier_max_percent", f64::NAN, "outlier_max_percent"),
    ] {
        let e = run(&dir, &dir.join("bad"), &opts(&[(k, OptionValue::Float(v))]).unwrap()).unwrap_err().to_string();
        assert!(e.contains(want), "{k}={v}: {e}");
        assert!(!dir.join("bad").exists());
    }
    for (k, v, want) in [
        ("sym", OptionValue::Bool(true), "asymmetric"),
        ("group_size", OptionValue::None, "group size"),
        ("stats_bits", OptionValue::Int(5), "stats_bits"),
        ("stats_group", OptionValue::Int(0), "stats_group"),
        ("format", OptionValue::Str("nf4".into()), "integer codes"),
    ] {
        let e = match opts(&[(k, v.clone())]) {
            Ok(o) => run(&dir, &dir.join("bad"), &o).unwrap_err().to_string(),
            Err(e) => e.to_string(),
        };
        assert!(e.contains(want), "{k}={v:?}: {e}");
    }
    let e = QuantizeOptions::from_pairs(&[
        ("method".into(), OptionValue::Str("gptq".into())),
        ("stats_bits".into(), OptionValue::Int(3)),
    ])
    .unwrap_err();
    assert!(e.to_string().contains("applies to spqr"), "{e}");
}
