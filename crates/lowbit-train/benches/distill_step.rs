//! One end-to-end distillation step (`scale_gradients`: two 512-token windows through every
//! block forward and back, the 49152-word head for student and teacher) at SmolLM2-135M's shapes
//! on random weights quantized to W3 g128. Blocks: `LOWBIT_BENCH_BLOCKS` (default 30, the model's).
//!
//! `cargo bench -p lowbit-train --bench distill_step`; one step takes seconds, so this times a
//! few steps by hand instead of running a statistics harness.

use lowbit_core::{Bits, IntScheme};
use lowbit_train::block::{BlockConfig, BlockWeights};
use lowbit_train::distill::{scale_gradients, Head, QuantBlock, TAPE_BUDGET};
use lowbit_train::grid::BlockGrids;
use rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use std::time::Instant;

fn rand(rng: &mut Xoshiro256PlusPlus, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| ((rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0) * scale).collect()
}

fn main() {
    let blocks: usize = std::env::var("LOWBIT_BENCH_BLOCKS").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
    let c = BlockConfig { hidden: 576, ffn: 1536, heads: 9, kv_heads: 3, head_dim: 64, rope_theta: 1e5, eps: 1e-5 };
    let (h, f, qd, kvd, vocab, tokens) = (576, 1536, 576, 192, 49152, 512);
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
    let model: Vec<QuantBlock> = (0..blocks)
        .map(|_| {
            let w = BlockWeights {
                attn_norm: vec![1.0; h],
                q: rand(&mut rng, qd * h, 0.05),
                k: rand(&mut rng, kvd * h, 0.05),
                v: rand(&mut rng, kvd * h, 0.05),
                o: rand(&mut rng, h * qd, 0.05),
                mlp_norm: vec![1.0; h],
                gate: rand(&mut rng, f * h, 0.05),
                up: rand(&mut rng, f * h, 0.05),
                down: rand(&mut rng, h * f, 0.05),
            };
            let grids = BlockGrids::fit(&c, &w, IntScheme::group(Bits::B3, 128)).expect("grids");
            let linears = [&w.q, &w.k, &w.v, &w.o, &w.gate, &w.up, &w.down];
            let codes = std::array::from_fn(|i| grids.0[i].codes(linears[i]));
            QuantBlock { codes, grids, attn_norm: w.attn_norm, mlp_norm: w.mlp_norm }
        })
        .collect();
    let (norm, weight) = (vec![1.0; h], rand(&mut rng, vocab * h, 0.05));
    let head = Head { norm: &norm, weight: &weight, vocab };
    let inputs: Vec<Vec<f32>> = (0..2).map(|_| rand(&mut rng, tokens * h, 1.0)).collect();
    let teacher: Vec<Vec<f32>> = (0..2).map(|_| rand(&mut rng, tokens * h, 1.0)).collect();
    let threads = rayon::current_num_threads();
    for step in 0..3 {
        let start = Instant::now();
        scale_gradients(&c, &model, &head, &inputs, &teacher, TAPE_BUDGET).expect("step");
        println!(
            "distill step {step}: {blocks} blocks, 2 x {tokens} tokens, {threads} threads: {:.2} s",
            start.elapsed().as_secs_f64()
        );
    }
}
