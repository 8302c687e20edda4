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
