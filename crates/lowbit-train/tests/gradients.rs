//! Every gradient against central finite differences of `loss = sum(y * r)` (random `r`), on a
//! tiny block with grouped-query attention and odd sizes. f32 throughout: a step of 1e-2 keeps
//! both the truncation error (step^2) and the rounding error (1e-7 / step) near 1e-4, far below
//! what a wrong formula would give.

use lowbit_core::{Bits, IntScheme};
use lowbit_train::block::{backward, forward, BlockConfig, BlockWeights};
use lowbit_train::grid::BlockGrids;
use lowbit_train::ops::{
    attention_backward, attention_forward, rms_norm_backward, rms_norm_forward, rope, rope_tables, swiglu_backward,
    swiglu_forward, AttentionShape,
};
use rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

fn rand(rng: &mut Xoshiro256PlusPlus, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| ((rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0) * scale).collect()
}

fn dot(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum()
}

/// Central differences of `loss` at each entry of `x`, compared with `grad`.
fn check_fd(what: &str, x: &mut [f32], grad: &[f32], loss: &mut dyn FnMut(&[f32]) -> f64) {
    const STEP: f32 = 1e-2;
    let mut worst = 0.0f64;
    for i in 0..x.len() {
        let keep = x[i];
        x[i] = keep + STEP;
        let up = loss(x);
        x[i] = keep - STEP;
        let down = loss(x);
        x[i] = keep;
        let fd = (up - down) / (2.0 * f64::from(STEP));
        let err = (fd - f64::from(grad[i])).abs() / (1e-2 + fd.abs().max(f64::from(grad[i].abs())));
        worst = worst.max(err);
        assert!(err < 2e-2, "{what}[{i}]: finite difference {fd}, backward {}", grad[i]);
    }
    assert!(worst.is_finite(), "{what}");
}

#[test]
fn rms_norm_gradients() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
    let (t, h) = (3, 7);
    let x = rand(&mut rng, t * h, 1.5);
    let mut g = rand(&mut rng, h, 1.0);
    let r = rand(&mut rng, t * h, 1.0);
    let (_, inv) = rms_norm_forward(&x, &g, 1e-5);
    let (dx, dg) = rms_norm_backward(&x, &g, &inv, &r);
    let g0 = g.clone();
    check_fd("rms dx", &mut x.clone(), &dx, &mut |x| dot(&rms_norm_forward(x, &g0, 1e-5).0, &r));
    check_fd("rms dg", &mut g, &dg, &mut |g| dot(&rms_norm_forward(&x, g, 1e-5).0, &r));
}

#[test]
fn rope_backward_is_the_inverse_rotation() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(2);
    let (t, heads, d) = (5, 3, 6);
    let (cos, sin) = rope_tables(t, d, 10000.0);
    let mut x = rand(&mut rng, t * heads * d, 1.0);
    let r = rand(&mut rng, t * heads * d, 1.0);
    let mut dx = r.clone();
    rope(&mut dx, d, &cos, &sin, true);
    let mut loss = |x: &[f32]| {
        let mut y = x.to_vec();
        rope(&mut y, d, &cos, &sin, false);
        dot(&y, &r)
    };
    check_fd("rope dx", &mut x, &dx, &mut loss);
}

#[test]
fn attention_gradients_with_grouped_heads() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
    let s = AttentionShape { tokens: 5, heads: 4, kv_heads: 2, head_dim: 3 };
    let (nq, nkv) = (s.tokens * s.heads * s.head_dim, s.tokens * s.kv_heads * s.head_dim);
    let (q, mut k, mut v) = (rand(&mut rng, nq, 1.5), rand(&mut rng, nkv, 1.5), rand(&mut rng, nkv, 1.0));
    let r = rand(&mut rng, nq, 1.0);
    let (_, probs) = attention_forward(&q, &k, &v, s);
    let (dq, dk, dv) = attention_backward(&q, &k, &v, &probs, &r, s);
    let (k0, v0) = (k.clone(), v.clone());
    check_fd("attn dq", &mut q.clone(), &dq, &mut |q| dot(&attention_forward(q, &k0, &v0, s).0, &r));
    let q0 = q.clone();
    check_fd("attn dk", &mut k, &dk, &mut |k| dot(&attention_forward(&q0, k, &v0, s).0, &r));
    check_fd("attn dv", &mut v, &dv, &mut |v| dot(&attention_forward(&q0, &k0, v, s).0, &r));
}

#[test]
fn attention_is_causal() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(4);
    let s = AttentionShape { tokens: 4, heads: 2, kv_heads: 1, head_dim: 2 };
    let q = rand(&mut rng, 16, 1.0);
    let (k, mut v) = (rand(&mut rng, 8, 1.0), rand(&mut rng, 8, 1.0));
    let (a, _) = attention_forward(&q, &k, &v, s);
    v[6] += 5.0; // the last token's value: earlier outputs must not move
    let (b, _) = attention_forward(&q, &k, &v, s);
    assert_eq!(a[..12], b[..12]);
    assert_ne!(a[12..], b[12..]);
}

#[test]
fn swiglu_gradients() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(5);
    let (g, mut u) = (rand(&mut rng, 11, 3.0), rand(&mut rng, 11, 2.0));
    let r = rand(&mut rng, 11, 1.0);
    let (dg, du) = swiglu_backward(&g, &u, &r);
    let u0 = u.clone();
    check_fd("swiglu dgate", &mut g.clone(), &dg, &mut |g| dot(&swiglu_forward(g, &u0), &r));
    let g0 = g.clone();
    check_fd("swiglu dup", &mut u, &du, &mut |u| dot(&swiglu_forward(&g0, u), &r));
}

fn tiny() -> BlockConfig {
    BlockConfig { hidden: 8, ffn: 12, heads: 4, kv_heads: 2, head_dim: 2, rope_theta: 10000.0, eps: 1e-5 }
}

fn random_block(rng: &mut Xoshiro256PlusPlus, c: &BlockConfig, scale: f32) -> BlockWeights {
    let mut w = BlockWeights::zeros(c);
    w.attn_norm = rand(rng, c.hidden, 0.3).iter().map(|v| 1.0 + v).collect();
    w.mlp_norm = rand(rng, c.hidden, 0.3).iter().map(|v| 1.0 + v).collect();
    for buf in [&mut w.q, &mut w.k, &mut w.v, &mut w.o, &mut w.gate, &mut w.up, &mut w.down] {
        let n = buf.len();
        *buf = rand(rng, n, scale);
    }
    w
}

#[test]
fn block_gradients_match_finite_differences() {
    let c = tiny();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(6);
    let w = random_block(&mut rng, &c, 0.6);
    let t = 5;
    let mut x = rand(&mut rng, t * c.hidden, 1.0);
    let r = rand(&mut rng, t * c.hidden, 1.0);
    let (_, tape) = forward(&c, &w, &x).unwrap();
    let (dx, g) = backward(&c, &w, &tape, &r).unwrap();
    let w0 = w.clone();
    check_fd("block dx", &mut x, &dx, &mut |x| dot(&forward(&c, &w0, x).unwrap().0, &r));
    type Field = fn(&mut BlockWeights) -> &mut Vec<f32>;
    let fields: [(&str, Field); 9] = [
        ("attn_norm", |w| &mut w.attn_norm),
        ("q", |w| &mut w.q),
        ("k", |w| &mut w.k),
        ("v", |w| &mut w.v),
        ("o", |w| &mut w.o),
        ("mlp_norm", |w| &mut w.mlp_norm),
        ("gate", |w| &mut w.gate),
        ("up", |w| &mut w.up),
        ("down", |w| &mut w.down),
    ];
    let mut gg = g.clone();
    for (name, field) in fields {
        let grad = field(&mut gg).clone();
        let mut p = field(&mut w.clone()).clone();
        let mut loss = |p: &[f32]| {
            let mut wp = w.clone();
            *field(&mut wp) = p.to_vec();
            dot(&forward(&c, &wp, &x).unwrap().0, &r)
        };
        check_fd(name, &mut p, &grad, &mut loss);
    }
}

#[test]
fn fake_quantized_weights_are_what_lowbit_stores() {
    let c = tiny();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
    let w = random_block(&mut rng, &c, 0.6);
    for scheme in [IntScheme::group(Bits::B4, 4), IntScheme::group(Bits::B3, 8), IntScheme::per_channel_sym(Bits::B2)] {
        let grids = BlockGrids::fit(&c, &w, scheme).unwrap();
        let fq = w.on_grids(&c, &grids).unwrap();
        let rtn = lowbit_core::rtn::quantize(w.down.as_slice(), &[c.hidden, c.ffn], scheme).unwrap();
        assert_eq!(fq.down, rtn.dequantize());
        assert_eq!(grids.0[6].qtensor(&w.down).unwrap(), rtn);
        assert_ne!(fq.down, w.down);
        assert_eq!(fq.attn_norm, w.attn_norm);
        // Moved weights keep the grid: their QTensor dequantizes to what the forward pass used.
        let moved: Vec<f32> = w.down.iter().map(|v| v * 0.9 + 0.01).collect();
        assert_eq!(grids.0[6].qtensor(&moved).unwrap().dequantize(), grids.0[6].fake(&moved));
    }
    // Bad shapes and weights are refused.
    let scheme = IntScheme::group(Bits::B4, 4);
    let mut bad = w.clone();
    bad.q.pop();
    assert!(BlockGrids::fit(&c, &bad, scheme).is_err());
    let mut nan = w;
    nan.up[3] = f32::NAN;
    assert!(BlockGrids::fit(&c, &nan, scheme).is_err());
}

#[test]
fn block_reconstruction_beats_round_to_nearest_on_held_out_windows() {
    use lowbit_train::train::{mse, reconstruct_block, ReconstructOptions};
    let c = BlockConfig { hidden: 16, ffn: 24, heads: 4, kv_heads: 2, head_dim: 4, rope_theta: 10000.0, eps: 1e-5 };
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(8);
    let fp = random_block(&mut rng, &c, 0.3);
    let windows = |rng: &mut Xoshiro256PlusPlus, n: usize| -> Vec<Vec<f32>> {
        (0..n).map(|_| rand(rng, 12 * c.hidden, 1.0)).collect()
    };
    let (train_x, held_x) = (windows(&mut rng, 64), windows(&mut rng, 8));
    let target = |xs: &[Vec<f32>]| -> Vec<Vec<f32>> { xs.iter().map(|x| forward(&c, &fp, x).unwrap().0).collect() };
    let (train_y, held_y) = (target(&train_x), target(&held_x));
    let scheme = IntScheme::group(Bits::B3, 8);
    let held_loss = |w: &BlockWeights, grids: &BlockGrids| -> f64 {
        let fq = w.on_grids(&c, grids).unwrap();
        held_x.iter().zip(&held_y).map(|(x, y)| mse(&forward(&c, &fq, x).unwrap().0, y)).sum::<f64>() / 8.0
    };
    let opts = ReconstructOptions { epochs: 8, lr: 1e-4, weight_decay: 0.0, grid_lr: None, batch: 1 };
    let fitted = BlockGrids::fit(&c, &fp, scheme).unwrap();
    let mut grids = fitted.clone();
    let (trained, losses) = reconstruct_block(&c, &fp, &mut grids, &train_x, &train_y, &opts).unwrap();
    assert_eq!(grids, fitted, "grid_lr None keeps the grids");
    let (rtn, after) = (held_loss(&fp, &grids), held_loss(&trained, &grids));
    assert!(losses.last().unwrap() < &(0.9 * losses[0]), "training loss {losses:?}");
    assert!(after < 0.9 * rtn, "held-out: RTN {rtn}, trained {after}");
    // Training the scales and zeros too (LSQ) does better still.
    let mut moved = fitted.clone();
    let with_grids = ReconstructOptions { grid_lr: Some(3e-4), ..opts };
    let (trained_ap, losses_ap) = reconstruct_block(&c, &fp, &mut moved, &train_x, &train_y, &with_grids).unwrap();
    assert_ne!(moved, fitted);
    let after_ap = held_loss(&trained_ap, &moved);
    assert!(losses_ap.last() < losses.last(), "training loss: weights only {losses:?}, with grids {losses_ap:?}");
    assert!(after_ap < after, "held-out: weights only {after}, weights and grids {after_ap}");
    eprintln!("held-out mse: RTN {rtn:.5}, block reconstruction {after:.5}, with grids {after_ap:.5}");
    // Deterministic: the same inputs give the same weights, with batches computed side by side
    // in any thread count.
    let mut again = fitted.clone();
    assert_eq!(reconstruct_block(&c, &fp, &mut again, &train_x, &train_y, &with_grids).unwrap().0, trained_ap);
    assert_eq!(again, moved);
    let batched = ReconstructOptions { batch: 4, ..with_grids };
    let once = reconstruct_block(&c, &fp, &mut fitted.clone(), &train_x, &train_y, &batched).unwrap().0;
    let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
    let threaded = pool.install(|| reconstruct_block(&c, &fp, &mut fitted.clone(), &train_x, &train_y, &batched));
    assert_eq!(threaded.unwrap().0, once);
    // Mismatched windows are refused.
    assert!(reconstruct_block(&c, &fp, &mut grids, &train_x, &train_y[1..], &opts).is_err());
}
