//! LLM.int8() through the pipeline on a tiny model whose norms plant outlier columns in the block
//! inputs: with the decomposition, int8 activations cost far less than plain W8A8's, the saved model
//! reloads (and saves again) running it, and bad settings are refused.

#[path = "../../lowbit-model/tests/common/mod.rs"]
mod common;

use common::*;
use lowbit_model::block::staged_logits;
use lowbit_model::Model;
use lowbit_quantize::spec::OptionValue;
use lowbit_quantize::{quantize_model, MethodConfig, QuantizeOptions};
use std::path::{Path, PathBuf};

/// Input channels of both norms scaled by 40: the q/k/v and gate/up inputs get columns of
/// magnitude ~40, the others stay ~1.
const OUTLIER_CHANNELS: [usize; 2] = [3, 17];

fn tiny_with_outliers(tag: &str) -> PathBuf {
    let dir = temp_dir(tag);
    let cfg = tiny_config("LlamaForCausalLM", true);
    let mut w = tiny_weights(&cfg, 5);
    for (name, _, v) in &mut w {
        if name.ends_with("layernorm.weight") {
            for c in OUTLIER_CHANNELS {
                v[c] *= 40.0;
            }
        }
    }
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    write_safetensors(&dir.join("model.safetensors"), &w, Store::F32);
    dir
}

fn opts(pairs: &[(&str, OptionValue)]) -> lowbit_quantize::Result<QuantizeOptions> {
    let mut all: Vec<(String, OptionValue)> = vec![
        ("method".into(), OptionValue::Str("llm-int8".into())),
        ("bits".into(), OptionValue::Int(8)),
        ("group_size".into(), OptionValue::None),
        ("sym".into(), OptionValue::Bool(true)),
    ];
    all.extend(pairs.iter().map(|(k, v)| (k.to_string(), v.clone())));
    QuantizeOptions::from_pairs(&all)
}

fn run(model: &Path, out: &Path, o: &QuantizeOptions) -> lowbit_quantize::Result<()> {
    quantize_model(model, out, o, &mut lowbit_core::NoProgress).map(|_| ())
}

fn tokens(n: usize) -> Vec<u32> {
    let mut rng = lowbit_model::Rng::new(9);
    (0..n).map(|_| (rng.next_u64() % 61) as u32).collect()
}

/// Relative max-abs logit error against the f32 model.
fn drift(base: &[f32], q: &[f32]) -> f32 {
    let scale = base.iter().fold(0f32, |m, x| m.max(x.abs()));
    q.iter().zip(base).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale
}

#[test]
fn decomposition_tracks_f32_where_plain_w8a8_does_not() {
    let dir = tiny_with_outliers("llmint8");
    let (dec, plain) = (dir.join("dec"), dir.join("plain"));
    run(&dir, &dec, &opts(&[]).unwrap()).unwrap();
    run(&dir, &plain, &opts(&[("outlier_threshold", OptionValue::Float(f64::INFINITY))]).unwrap()).unwrap();

    let qc = |d: &Path| -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(d.join("config.json")).unwrap()).unwrap();
        v["quantization_config"].clone()
    };
    assert_eq!(qc(&dec)["method"], "llm-int8");
    assert_eq!(qc(&dec)["outlier_threshold"], 6.0);
    assert!(qc(&plain)["outlier_threshold"].is_null());

    let m_dec = Model::load(&dec).unwrap();
    let m_plain = Model::load(&plain).unwrap();
    assert_eq!(m_dec.config().int8_outlier_threshold, Some(6.0));
    assert!(m_dec.layers().iter().all(|l| l.linears().iter().all(|(_, lin)| lin.outlier_threshold() == Some(6.0))));
    assert!(m_plain
        .layers()
        .iter()
        .all(|l| l.linears().iter().all(|(_, lin)| lin.int8_activations() && lin.outlier_threshold().is_none())));
    assert!(m_plain.outlier_counts().is_empty());

    // Against the same int8 weights with f32 activations (weight-only RTN W8), which isolates
    // what the activations' quantization costs (the planted norms make the tiny model too
    // chaotic for a comparison with f32 weights to say much).
    let w8 = dir.join("w8");
    run(&dir, &w8, &QuantizeOptions { method: MethodConfig::from_name("rtn").unwrap(), ..opts(&[]).unwrap() }).unwrap();
    let toks = tokens(32);
    let base = staged_logits(&Model::load(&w8).unwrap(), &toks, 16).unwrap();
    let e_dec = drift(&base, &staged_logits(&m_dec, &toks, 16).unwrap());
    let e_plain = drift(&base, &staged_logits(&m_plain, &toks, 16).unwrap());
    assert!(e_dec * 10.0 < e_plain && e_dec < 0.02, "logit drift: decomposed {e_dec}, plain W8A8 {e_plain}");

    // The planted columns were found in every batch of the q/k/v and gate/up inputs.
    let counts = m_dec.outlier_counts();
    assert_eq!(counts.len(), 14);
    for (name, c) in &counts {
        assert!(c.batches >= 1, "{name}: {c:?}");
        if name.ends_with("q_proj") || name.ends_with("up_proj") {
            assert!(c.outlier_columns >= 2 * c.batches, "{name}: {c:?}");
        }
    }
    m_dec.reset_outlier_counts();
    assert!(m_dec.outlier_counts().iter().all(|(_, c)| c.batches == 0));

    // Saved again by lowbit (no pipeline extras), the threshold survives.
    let again = dir.join("again");
    m_dec.save(&again).unwrap();
    let m_again = Model::load(&again).unwrap();
    assert_eq!(m_again.config().int8_outlier_threshold, Some(6.0));
    assert_eq!(staged_logits(&m_again, &toks, 16).unwrap(), staged_logits(&m_dec, &toks, 16).unwrap());
}

#[test]
fn bad_settings_are_refused() {
    let dir = tiny_with_outliers("llmint8-bad");
    for t in [f64::NAN, 0.0, -6.0] {
        let o = opts(&[("outlier_threshold", OptionValue::Float(t))]).unwrap();
        let e = run(&dir, &dir.join("bad"), &o).unwrap_err().to_string();
        assert!(e.contains("outlier_threshold"), "{t}: {e}");
    }
    // W4 and groups are not LLM.int8()
    let o = QuantizeOptions { method: MethodConfig::from_name("llm-int8").unwrap(), ..QuantizeOptions::default() };
    let e = run(&dir, &dir.join("w4"), &o).unwrap_err().to_string();
    assert!(e.contains("bits 8, per-channel"), "{e}");
    // the option belongs to llm-int8 only
    let e = QuantizeOptions::from_pairs(&[
        ("method".into(), OptionValue::Str("rtn".into())),
        ("outlier_threshold".into(), OptionValue::Float(6.0)),
    ])
    .unwrap_err();
    assert!(e.to_string().contains("applies to llm-int8"), "{e}");
    // aliases
    for name in ["llm_int8", "int8", "LLM-INT8"] {
        assert_eq!(MethodConfig::from_name(name).unwrap().name(), "llm-int8");
    }
}

#[test]
fn forged_thresholds_in_config_are_refused() {
    let dir = tiny_with_outliers("llmint8-cfg");
    let out = dir.join("dec");
    run(&dir, &out, &opts(&[]).unwrap()).unwrap();
    let path = out.join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    for bad in [serde_json::json!(-1.0), serde_json::json!(0), serde_json::json!("six"), serde_json::json!(1e300)] {
        v["quantization_config"]["outlier_threshold"] = bad.clone();
        std::fs::write(&path, v.to_string()).unwrap();
        let e = Model::load(&out).unwrap_err().to_string();
        assert!(e.contains("outlier_threshold"), "{bad}: {e}");
    }
}
