//! The staged decoder block (what the quantization pipeline runs) against `Model::forward`.

mod common;

use common::*;
use lowbit_model::block::staged_logits;
use lowbit_model::{LogitsMode, Model};

/// Largest |staged - forward| relative to the largest |logit| (same f32 arithmetic, only the
/// batching of the weight products differs).
const STAGED_FORWARD_TOL: f32 = 1e-5;

fn tokens(n: usize, seed: u64) -> Vec<u32> {
    let mut rng = lowbit_model::Rng::new(seed);
    (0..n).map(|_| (rng.next_u64() % 61) as u32).collect()
}

#[test]
fn staged_forward_equals_model_forward() {
    for kv in [2, 4] {
        let dir = temp_dir(&format!("staged-{kv}"));
        let mut cfg = tiny_config("LlamaForCausalLM", true);
        cfg["num_key_value_heads"] = kv.into();
        write_tiny_model(&dir, &cfg, 7, Store::F32);
        let model = Model::load(&dir).unwrap();
        let seqlen = 9;
        let toks = tokens(3 * seqlen, 5);
        let staged = staged_logits(&model, &toks, seqlen).unwrap();
        let mut want = vec![];
        for s in toks.chunks(seqlen) {
            want.extend(model.forward(s, &mut model.new_cache(), LogitsMode::All).unwrap().data);
        }
        let scale = want.iter().fold(1e-6f32, |m, x| m.max(x.abs()));
        let diff = staged.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs())) / scale;
        assert!(diff <= STAGED_FORWARD_TOL, "kv {kv}: staged vs forward {diff}");
    }
}

/// A checkpoint whose embedding is stored quantized runs through the one embedding lookup (rows
/// dequantized on demand) in both the runtime and the staged path, and equals the same model with
/// that embedding dequantized up front.
#[test]
fn quantized_embedding_is_looked_up_by_rows() {
    use lowbit_core::{rtn, Bits, IntScheme};
    let cfg = tiny_config("LlamaForCausalLM", false);
    let mut weights = tiny_weights(&cfg, 11);
    let (dir_q, dir_f) = (temp_dir("embed-q"), temp_dir("embed-f"));
    let ei = weights.iter().position(|(n, _, _)| n == "model.embed_tokens.weight").unwrap();
    let (name, shape, vals) = weights.remove(ei);
    let q = rtn::quantize(&vals, &shape, IntScheme::group(Bits::B4, 16)).unwrap();

    for d in [&dir_q, &dir_f] {
        std::fs::write(d.join("config.json"), cfg.to_string()).unwrap();
    }
    write_safetensors(&dir_q.join("model-00001-of-00002.safetensors"), &weights, Store::F32);
    let qbytes = lowbit_core::io::to_bytes([(name.as_str(), &q)], &Default::default()).unwrap();
    std::fs::write(dir_q.join("model-00002-of-00002.safetensors"), qbytes).unwrap();
    let mut map = serde_json::Map::new();
    for (n, _, _) in &weights {
        map.insert(n.clone(), "model-00001-of-00002.safetensors".into());
    }
    map.insert(name.clone(), "model-00002-of-00002.safetensors".into());
    let index = serde_json::json!({"metadata": {}, "weight_map": map});
    std::fs::write(dir_q.join("model.safetensors.index.json"), index.to_string()).unwrap();
    weights.push((name, shape, q.dequantize()));
    write_safetensors(&dir_f.join("model.safetensors"), &weights, Store::F32);

    let (mq, mf) = (Model::load(&dir_q).unwrap(), Model::load(&dir_f).unwrap());
    assert!(matches!(mq.embedding().weight(), lowbit_cpu::WeightKind::Quant(_)), "the embedding stays packed");
    let toks = tokens(12, 3);
    let want = mf.forward(&toks, &mut mf.new_cache(), LogitsMode::All).unwrap();
    let got = mq.forward(&toks, &mut mq.new_cache(), LogitsMode::All).unwrap();
    assert_eq!(got, want);
    assert_eq!(staged_logits(&mq, &toks, 6).unwrap(), staged_logits(&mf, &toks, 6).unwrap());
}
