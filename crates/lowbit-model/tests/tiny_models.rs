//! Tiny random models of every architecture against the numpy reference
//! (`tests/reference/model_ref.py`), plus KV-cache, batching and quantized-checkpoint checks.

mod common;

use common::*;
use lowbit_core::{rtn, Bits, IntScheme};
use lowbit_cpu::{Linear, WeightKind};
use lowbit_model::{LogitsMode, Model};
use serde_json::json;
use std::path::PathBuf;
use std::process::Command;

/// Largest |rust - numpy| allowed on tiny-model logits, relative to the largest |logit|
/// (f32 activations against a float64 reference).
const TINY_MODEL_LOGIT_TOL: f32 = 1e-4;
/// Largest difference between one full-sequence pass and prefill + one-token decode steps.
const CACHE_CONSISTENCY_TOL: f32 = 1e-4;

const PROMPTS: [&[u32]; 2] = [&[3, 17, 5, 60, 0, 9, 9, 41, 22, 7, 13], &[1, 2, 58, 33, 4, 4, 31]];

fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(1e-6f32, |m, x| m.max(x.abs()));
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

fn all_logits(model: &Model) -> Vec<f32> {
    let mut out = vec![];
    for p in PROMPTS {
        let mut cache = model.new_cache();
        out.extend(model.forward(p, &mut cache, LogitsMode::All).unwrap().data);
    }
    out
}

/// A tiny model of `arch` written to a fresh directory and loaded.
fn tiny_model(arch: &str, tied: bool, store: Store) -> (PathBuf, Model) {
    let dir = temp_dir(&format!("{arch}-{tied}-{store:?}"));
    write_tiny_model(&dir, &tiny_config(arch, tied), 42, store);
    let model = Model::load(&dir).unwrap();
    (dir, model)
}

/// Every architecture and storage format the tests cover: (architecture, tied embeddings, dtype).
const CASES: [(&str, bool, Store); 7] = [
    ("LlamaForCausalLM", true, Store::F32),
    ("LlamaForCausalLM", false, Store::F32),
    ("MistralForCausalLM", false, Store::F32),
    ("Qwen2ForCausalLM", true, Store::F32),
    ("Qwen3ForCausalLM", false, Store::F32),
    ("LlamaForCausalLM", true, Store::F16),
    ("Qwen2ForCausalLM", false, Store::Bf16),
];

#[test]
fn decode_steps_and_batches_match_one_pass() {
    for (arch, tied, store) in CASES {
        let (dir, model) = tiny_model(arch, tied, store);
        let ours = all_logits(&model);

        // Prefill of a prefix then one-token decode steps give the same logits as one pass.
        let p = PROMPTS[0];
        let mut cache = model.new_cache();
        let mut stepwise = model.forward(&p[..4], &mut cache, LogitsMode::All).unwrap().data;
        for &t in &p[4..] {
            stepwise.extend(model.forward(&[t], &mut cache, LogitsMode::All).unwrap().data);
        }
        let d = max_rel_diff(&stepwise, &ours[..stepwise.len()]);
        assert!(d < CACHE_CONSISTENCY_TOL, "{arch} {store:?}: decode vs prefill differ by {d}");

        // A batch of both sequences gives each its own logits.
        let (mut c0, mut c1) = (model.new_cache(), model.new_cache());
        let batch = model.forward_batch(&mut [(PROMPTS[0], &mut c0), (PROMPTS[1], &mut c1)], LogitsMode::All).unwrap();
        let batched: Vec<f32> = batch.into_iter().flat_map(|l| l.data).collect();
        let d = max_rel_diff(&batched, &ours);
        assert!(d < CACHE_CONSISTENCY_TOL, "{arch} {store:?}: batched vs single differ by {d}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Our logits against `tests/reference/model_ref.py` (float64 numpy) on the same checkpoint.
fn check_numpy(arch: &str, tied: bool, store: Store) {
    let py = python(&["numpy"]);
    let (dir, model) = tiny_model(arch, tied, store);
    let ours = all_logits(&model);
    std::fs::write(dir.join("prompt.json"), json!({"tokens": PROMPTS}).to_string()).unwrap();
    let script = repo_root().join("tests/reference/model_ref.py");
    let out = Command::new(py).arg(&script).arg(&dir).output().unwrap();
    assert!(out.status.success(), "model_ref.py failed: {}", String::from_utf8_lossy(&out.stderr));
    let bytes = std::fs::read(dir.join("ref_logits.f32")).unwrap();
    let reference: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let d = max_rel_diff(&ours, &reference);
    println!("{arch} tied={tied} {store:?}: max relative logit difference to numpy {d:.2e}");
    assert!(d < TINY_MODEL_LOGIT_TOL, "{arch} {store:?}: logits differ from numpy by {d}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// One test per row, each a list of (architecture, tied embeddings, storage) checked against
/// numpy.
macro_rules! numpy_tests {
    ($($name:ident: $(($arch:literal, $tied:literal, $store:ident)),+;)*) => {$(
        #[test]
        #[ignore = "reference: python3 with numpy (make test-rust runs it)"]
        fn $name() {
            $(check_numpy($arch, $tied, Store::$store);)+
        }
    )*};
}

numpy_tests! {
    llama_tied_matches_numpy: ("LlamaForCausalLM", true, F32);
    llama_untied_llama3_rope_matches_numpy: ("LlamaForCausalLM", false, F32);
    mistral_sliding_window_matches_numpy: ("MistralForCausalLM", false, F32);
    qwen2_biases_match_numpy: ("Qwen2ForCausalLM", true, F32);
    qwen3_qk_norm_matches_numpy: ("Qwen3ForCausalLM", false, F32);
    f16_and_bf16_checkpoints_match_numpy: ("LlamaForCausalLM", true, F16), ("Qwen2ForCausalLM", false, Bf16);
}

#[test]
fn sharded_checkpoint_loads() {
    let dir = temp_dir("sharded");
    let cfg = tiny_config("LlamaForCausalLM", true);
    let w = tiny_weights(&cfg, 3);
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let (a, b) = w.split_at(w.len() / 2);
    write_safetensors(&dir.join("model-00001-of-00002.safetensors"), a, Store::F32);
    write_safetensors(&dir.join("model-00002-of-00002.safetensors"), b, Store::F32);
    let mut map = serde_json::Map::new();
    for (n, _, _) in a {
        map.insert(n.clone(), "model-00001-of-00002.safetensors".into());
    }
    for (n, _, _) in b {
        map.insert(n.clone(), "model-00002-of-00002.safetensors".into());
    }
    std::fs::write(dir.join("model.safetensors.index.json"), json!({"weight_map": map}).to_string()).unwrap();
    let sharded = all_logits(&Model::load(&dir).unwrap());
    let single_dir = temp_dir("single");
    std::fs::write(single_dir.join("config.json"), cfg.to_string()).unwrap();
    write_safetensors(&single_dir.join("model.safetensors"), &w, Store::F32);
    assert_eq!(sharded, all_logits(&Model::load(&single_dir).unwrap()));

    // A shard that the index names but that is gone.
    std::fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
    let e = Model::load(&dir).unwrap_err();
    assert!(e.to_string().contains("model-00002-of-00002.safetensors"), "{e}");
}

/// Quantizes every block linear with RTN, saves a lowbit checkpoint, reloads it: the linears are
/// packed `WeightKind::Quant`, and the logits equal the same weights dequantized to f32.
#[test]
fn quantized_checkpoint_runs_packed() {
    let dir = temp_dir("quant-src");
    let cfg = tiny_config("Qwen2ForCausalLM", false);
    write_tiny_model(&dir, &cfg, 9, Store::F32);
    let mut packed = Model::load(&dir).unwrap();
    let mut dequant = packed.clone();
    for (lp, ld) in packed.layers_mut().iter_mut().zip(dequant.layers_mut().iter_mut()) {
        for ((_, a), (_, b)) in lp.linears_mut().into_iter().zip(ld.linears_mut()) {
            let (rows, cols) = (a.rows(), a.cols());
            let WeightKind::F32(w) = a.weight() else { panic!("f32 expected") };
            let q = rtn::quantize(w, &[rows, cols], IntScheme::group(Bits::B4, 16)).unwrap();
            *b = Linear::new(rows, cols, WeightKind::F32(q.dequantize())).unwrap();
            *a = Linear::new(rows, cols, WeightKind::Quant(q)).unwrap();
        }
    }
    let out = temp_dir("quant-out").join("ckpt");
    packed.save(&out).unwrap();
    let loaded = Model::load(&out).unwrap();
    for l in loaded.layers() {
        for (name, lin) in l.linears() {
            assert!(matches!(lin.weight(), WeightKind::Quant(_)), "{name} was not loaded packed");
        }
    }
    let (a, b) = (all_logits(&loaded), all_logits(&dequant));
    let d = max_rel_diff(&a, &b);
    assert!(d < 1e-5, "packed vs dequantized logits differ by {d}");
    assert_eq!(a, all_logits(&packed));
}

/// Decode steps with int8-quantized activations (lowbit-cpu's default for one-token products
/// with 4/8-bit weights at the AVX2/AVX-512 levels) against the same weights dequantized to f32,
/// relative to the largest logit: 32-value blocks of int8 carry about 0.4% error per value.
const INT8_ACTIVATION_LOGIT_TOL: f32 = 2e-2;

#[test]
fn int8_activation_decode_stays_close_to_f32() {
    for (arch, tied, store) in CASES.into_iter().filter(|c| matches!(c.2, Store::F32)) {
        let (dir, mut packed) = tiny_model(arch, tied, store);
        let mut dequant = packed.clone();
        for (lp, ld) in packed.layers_mut().iter_mut().zip(dequant.layers_mut().iter_mut()) {
            for (i, ((_, a), (_, b))) in lp.linears_mut().into_iter().zip(ld.linears_mut()).enumerate() {
                let (rows, cols) = (a.rows(), a.cols());
                let WeightKind::F32(w) = a.weight() else { panic!("f32 expected") };
                // int4 groups, int8 per channel, and an asymmetric 8-bit group on o_proj
                let scheme = match i {
                    3 => IntScheme::group(Bits::B8, 32),
                    4 | 5 => IntScheme { symmetric: true, ..IntScheme::group(Bits::B4, 32) },
                    _ => IntScheme::group(Bits::B4, 32),
                };
                let q = rtn::quantize(w, &[rows, cols], scheme).unwrap();
                *b = Linear::new(rows, cols, WeightKind::F32(q.dequantize())).unwrap();
                *a = Linear::new(rows, cols, WeightKind::Quant(q)).unwrap();
            }
        }
        let steps = |model: &Model| {
            let mut cache = model.new_cache();
            let mut out = vec![];
            for &t in PROMPTS[0] {
                out.extend(model.forward(&[t], &mut cache, LogitsMode::All).unwrap().data);
            }
            out
        };
        let d = max_rel_diff(&steps(&packed), &steps(&dequant));
        println!("{arch}: {d:e}");
        assert!(d < INT8_ACTIVATION_LOGIT_TOL, "{arch}: int8-activation decode differs from f32 by {d}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn bad_inputs_are_clear_errors() {
    let dir = temp_dir("bad");
    // Missing config.
    let e = Model::load(&dir).unwrap_err();
    assert!(e.to_string().contains("config.json"), "{e}");
    // Missing weights.
    let cfg = tiny_config("LlamaForCausalLM", true);
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let e = Model::load(&dir).unwrap_err();
    assert!(e.to_string().contains("model.safetensors"), "{e}");
    // Missing path altogether.
    assert!(Model::load(dir.join("nope")).unwrap_err().to_string().contains("nope"));
    // Unknown architecture.
    let mut other = cfg.clone();
    other["architectures"] = json!(["GPT2LMHeadModel"]);
    std::fs::write(dir.join("config.json"), other.to_string()).unwrap();
    let e = Model::load(&dir).unwrap_err();
    assert!(e.to_string().contains("GPT2LMHeadModel"), "{e}");
    // Mismatched shape: the config says 3 layers of width 32 but q_proj is [16, 32].
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let mut w = tiny_weights(&cfg, 1);
    let q = w.iter_mut().find(|t| t.0 == "model.layers.1.self_attn.q_proj.weight").unwrap();
    q.1 = vec![16, 32];
    q.2.truncate(16 * 32);
    write_safetensors(&dir.join("model.safetensors"), &w, Store::F32);
    let e = Model::load(&dir).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("q_proj") && msg.contains("[16, 32]") && msg.contains("[32, 32]"), "{msg}");
    // Missing tensor.
    let w: Vec<_> = tiny_weights(&cfg, 1).into_iter().filter(|t| t.0 != "model.norm.weight").collect();
    write_safetensors(&dir.join("model.safetensors"), &w, Store::F32);
    assert!(Model::load(&dir).unwrap_err().to_string().contains("model.norm.weight"));
    // Truncated and corrupt safetensors.
    write_safetensors(&dir.join("model.safetensors"), &tiny_weights(&cfg, 1), Store::F32);
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    for cut in [0, 5, 100, bytes.len() / 2, bytes.len() - 1] {
        std::fs::write(dir.join("model.safetensors"), &bytes[..cut]).unwrap();
        let e = Model::load(&dir).unwrap_err();
        assert!(e.to_string().contains("safetensors"), "cut at {cut}: {e}");
    }
    let mut garbled = bytes.clone();
    garbled[8] = b'x'; // the header JSON no longer parses
    std::fs::write(dir.join("model.safetensors"), &garbled).unwrap();
    let e = Model::load(&dir).unwrap_err();
    assert!(e.to_string().contains("corrupt"), "{e}");
    // Token ids outside the vocabulary.
    write_safetensors(&dir.join("model.safetensors"), &tiny_weights(&cfg, 1), Store::F32);
    let model = Model::load(&dir).unwrap();
    let e = model.forward(&[1000], &mut model.new_cache(), LogitsMode::Last).unwrap_err();
    assert!(e.to_string().contains("1000"), "{e}");
    // A CUDA device in a CPU-only build.
    let e = Model::load_with(
        &dir,
        &lowbit_model::LoadOptions { device: lowbit_model::Device::Cuda(0), ..Default::default() },
    )
    .unwrap_err();
    assert!(e.to_string().contains("cuda"), "{e}");
}

/// Sampling several sequences as one batch gives each the tokens it gets alone with the same
/// seed: greedy, plain temperature and filtered sampling; prompts of different lengths; sequences
/// that stop at different steps (end of sequence, the token budget, a full context).
#[test]
fn batched_generation_matches_one_at_a_time() {
    use lowbit_model::{BatchPrompt, GenerateOptions, StopReason};
    let long: Vec<u32> = (0..120).map(|i| (i * 7 % 61) as u32).collect();
    let prompts = [PROMPTS[0].to_vec(), PROMPTS[1].to_vec(), vec![5], long];
    let samplers = [
        GenerateOptions::default(),
        GenerateOptions { temperature: 1.0, ..GenerateOptions::default() },
        GenerateOptions {
            temperature: 0.9,
            top_k: 7,
            top_p: 0.8,
            repetition_penalty: 1.3,
            ..GenerateOptions::default()
        },
    ];
    let mut seen = std::collections::HashSet::new();
    for (arch, tied, store) in [CASES[0], CASES[2], CASES[4]] {
        let (dir, model) = tiny_model(arch, tied, store);
        for base in &samplers {
            for stop_on_eos in [true, false] {
                let opts = GenerateOptions { max_new_tokens: 24, stop_on_eos, ..base.clone() };
                let batch: Vec<BatchPrompt> = prompts
                    .iter()
                    .enumerate()
                    .map(|(i, p)| BatchPrompt { prompt: p.clone(), seed: 100 + i as u64 })
                    .collect();
                let together = model.generate_batch(&batch, &opts, &mut lowbit_core::NoProgress).unwrap();
                assert_eq!(together.len(), prompts.len());
                for (p, g) in batch.iter().zip(&together) {
                    let alone = model
                        .generate_tokens(
                            &p.prompt,
                            &GenerateOptions { seed: p.seed, ..opts.clone() },
                            &mut |_| true,
                            &mut lowbit_core::NoProgress,
                        )
                        .unwrap();
                    assert_eq!(g.tokens, alone.tokens, "{arch} {opts:?} seed {}", p.seed);
                    assert_eq!(g.stop_reason, alone.stop_reason, "{arch} {opts:?} seed {}", p.seed);
                    assert_eq!(g.prompt_tokens, p.prompt.len());
                    seen.insert(format!("{:?}", g.stop_reason));
                }
                // The 120-token prompt fills the 128-token context before its budget (the 9th
                // token comes from the logits at position 127), unless it ends first.
                let g = &together[3];
                let full = g.stop_reason == StopReason::ContextFull && g.tokens.len() == 9;
                assert!(full || (g.stop_reason == StopReason::Eos && g.tokens.len() < 9), "{g:?}");
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    // Sequences of one batch did finish at different steps, for every reason.
    assert_eq!(seen.len(), 3, "{seen:?}");
}

#[test]
fn batched_generation_checks_its_input() {
    use lowbit_model::{BatchPrompt, GenerateOptions};
    let (dir, model) = tiny_model(CASES[0].0, CASES[0].1, CASES[0].2);
    let none = &mut lowbit_core::NoProgress;
    let ok = BatchPrompt { prompt: vec![3, 4], seed: 0 };
    let empty = BatchPrompt { prompt: vec![], seed: 0 };
    assert!(model.generate_batch(&[ok.clone(), empty], &GenerateOptions::default(), none).is_err());
    let stops = GenerateOptions { stop_strings: vec!["x".into()], ..GenerateOptions::default() };
    assert!(model.generate_batch(std::slice::from_ref(&ok), &stops, none).is_err());
    let oov = BatchPrompt { prompt: vec![61], seed: 0 };
    assert!(model.generate_batch(&[ok.clone(), oov], &GenerateOptions::default(), none).is_err());
    // No prompts, no work; no new tokens, no steps.
    assert!(model.generate_batch(&[], &GenerateOptions::default(), none).unwrap().is_empty());
    let zero = GenerateOptions { max_new_tokens: 0, ..GenerateOptions::default() };
    assert!(model.generate_batch(&[ok], &zero, none).unwrap()[0].tokens.is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}
