//! The trainable grids' straight-through gradients against their definitions, and the
//! end-to-end distillation stage: its scale gradients against finite differences of the KL
//! (smooth in the scales once the codes are fixed), its progress, and exact resumption.

use lowbit_core::{Bits, IntScheme, ScaleDtype};
use lowbit_train::block::{forward, BlockConfig, BlockWeights};
use lowbit_train::distill::{
    distill_loss, distill_scales, scale_gradients, DistillOptions, Head, QuantBlock, TAPE_BUDGET,
};
use lowbit_train::grid::{BlockGrids, LinearGrid};
use lowbit_train::TrainError;
use rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

fn rand(rng: &mut Xoshiro256PlusPlus, n: usize, scale: f32) -> Vec<f32> {
    (0..n).map(|_| ((rng.next_u32() >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0) * scale).collect()
}

fn f32_scales(bits: Bits, group: usize, symmetric: bool) -> IntScheme {
    IntScheme { symmetric, scale_dtype: ScaleDtype::F32, ..IntScheme::group(bits, group) }
}

#[test]
fn grid_gradients_follow_the_straight_through_definition() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(11);
    for scheme in [IntScheme::group(Bits::B3, 8), f32_scales(Bits::B4, 6, true), IntScheme::group(Bits::B2, 5)] {
        let (rows, cols) = (3, 12);
        let fit_w = rand(&mut rng, rows * cols, 1.0);
        let grid = LinearGrid::fit(&fit_w, rows, cols, scheme).unwrap();
        // Moved weights: some now fall outside their group's range.
        let w: Vec<f32> = fit_w.iter().map(|v| v * 1.3).collect();
        let g = rand(&mut rng, rows * cols, 1.0);
        let got = grid.backward(&w, &g);
        let maxq = scheme.bits.maxq();
        let group = |i: usize| scheme.granularity.param_index(cols, i);
        let mut ds = vec![0.0f32; grid.params().len()];
        let mut dz = vec![0.0f32; grid.params().len()];
        let mut clipped = 0;
        for i in 0..w.len() {
            let p = grid.params()[group(i)];
            let v = w[i] / p.scale;
            let unclamped = v.round_ties_even() + f32::from(p.zero);
            let q = unclamped.clamp(0.0, f32::from(maxq));
            if q == unclamped {
                assert_eq!(got.weight[i], g[i]);
                ds[group(i)] += g[i] * (v.round_ties_even() - v);
            } else {
                clipped += 1;
                assert_eq!(got.weight[i], 0.0, "clipped weights get no gradient");
                ds[group(i)] += g[i] * (q - f32::from(p.zero));
                dz[group(i)] -= g[i] * p.scale;
            }
        }
        assert!(clipped > 0);
        for j in 0..ds.len() {
            assert!((got.scale[j] - ds[j]).abs() < 1e-5, "scale {j}: {} against {}", got.scale[j], ds[j]);
            // The zero's master is in weight units: one code is the group's initial scale.
            let want = if scheme.symmetric { 0.0 } else { dz[j] / grid.params()[j].scale };
            assert!((got.offset[j] - want).abs() < 1e-4, "zero {j}: {} against {want}", got.offset[j]);
        }
    }
}

#[test]
fn moved_masters_round_into_stored_parameters() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(12);
    let w = rand(&mut rng, 4 * 16, 1.0);
    let scheme = IntScheme::group(Bits::B4, 8);
    let mut grid = LinearGrid::fit(&w, 4, 16, scheme).unwrap();
    let before = grid.params().to_vec();
    let (scales, offsets) = grid.masters_mut();
    scales[0] *= 1.1;
    scales[1] = -1.0;
    let unit = before[2].scale;
    offsets[2] += 1.6 * unit;
    offsets[3] = 1e3;
    grid.sync();
    let p = grid.params();
    assert_eq!(p[0].scale, half::f16::from_f32(before[0].scale * 1.1).to_f32(), "rounded to the stored f16");
    assert!(p[1].scale > 0.0, "scales stay positive");
    assert_eq!(p[2].zero, before[2].zero + 2);
    assert_eq!(p[3].zero, 15, "zeros stay codes");
    // What is stored dequantizes to what training computes with.
    assert_eq!(grid.qtensor(&w).unwrap().dequantize(), grid.fake(&w));
}

fn tiny() -> BlockConfig {
    BlockConfig { hidden: 12, ffn: 20, heads: 3, kv_heads: 1, head_dim: 4, rope_theta: 10000.0, eps: 1e-5 }
}

fn random_block(rng: &mut Xoshiro256PlusPlus, c: &BlockConfig) -> BlockWeights {
    let (h, f, qd, kvd) = (c.hidden, c.ffn, c.heads * c.head_dim, c.kv_heads * c.head_dim);
    BlockWeights {
        attn_norm: rand(rng, h, 0.2).iter().map(|v| 1.0 + v).collect(),
        q: rand(rng, qd * h, 0.4),
        k: rand(rng, kvd * h, 0.4),
        v: rand(rng, kvd * h, 0.4),
        o: rand(rng, h * qd, 0.4),
        mlp_norm: rand(rng, h, 0.2).iter().map(|v| 1.0 + v).collect(),
        gate: rand(rng, f * h, 0.4),
        up: rand(rng, f * h, 0.4),
        down: rand(rng, h * f, 0.4),
    }
}

/// A two-block model quantized by RTN, windows of `lengths` tokens, the teacher's last hidden
/// states on them, and a head.
struct Setup {
    c: BlockConfig,
    blocks: Vec<QuantBlock>,
    norm: Vec<f32>,
    head: Vec<f32>,
    vocab: usize,
    inputs: Vec<Vec<f32>>,
    teacher: Vec<Vec<f32>>,
}

/// Windows of 7 tokens: short enough that finite differences of the mean KL stay above f32 noise.
const SHORT: [usize; 4] = [7; 4];
/// Windows of different lengths, side by side in one step.
const MIXED: [usize; 4] = [7, 150, 64, 65];

fn setup(scheme: IntScheme, lengths: &[usize]) -> Setup {
    let c = tiny();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(13);
    let fp: Vec<BlockWeights> = (0..2).map(|_| random_block(&mut rng, &c)).collect();
    let inputs: Vec<Vec<f32>> = lengths.iter().map(|t| rand(&mut rng, t * c.hidden, 1.0)).collect();
    let teacher = inputs.iter().map(|x| fp.iter().fold(x.clone(), |x, w| forward(&c, w, &x).unwrap().0)).collect();
    let blocks = fp
        .iter()
        .map(|w| {
            let grids = BlockGrids::fit(&c, w, scheme).unwrap();
            let fq = w.linears_for_test();
            let codes = std::array::from_fn(|i| grids.0[i].codes(fq[i]));
            QuantBlock { codes, grids, attn_norm: w.attn_norm.clone(), mlp_norm: w.mlp_norm.clone() }
        })
        .collect();
    let vocab = 17;
    let norm = rand(&mut rng, c.hidden, 0.2).iter().map(|v| 1.0 + v).collect();
    Setup { c, blocks, norm, head: rand(&mut rng, vocab * c.hidden, 1.0), vocab, inputs, teacher }
}

trait Linears {
    fn linears_for_test(&self) -> [&Vec<f32>; 7];
}

impl Linears for BlockWeights {
    fn linears_for_test(&self) -> [&Vec<f32>; 7] {
        [&self.q, &self.k, &self.v, &self.o, &self.gate, &self.up, &self.down]
    }
}

#[test]
fn distillation_gradients_match_finite_differences_of_the_kl() {
    let s = setup(f32_scales(Bits::B4, 4, false), &SHORT);
    let head = Head { norm: &s.norm, weight: &s.head, vocab: s.vocab };
    let (_, grads) = scale_gradients(&s.c, &s.blocks, &head, &s.inputs, &s.teacher, TAPE_BUDGET).unwrap();
    let mut checked = 0;
    for b in 0..2 {
        for l in 0..7 {
            let n = s.blocks[b].grids.0[l].scales().len();
            for j in (0..n).step_by(n.div_ceil(3)) {
                let at = |delta: f32| {
                    let mut blocks = s.blocks.clone();
                    blocks[b].grids.0[l].masters_mut().0[j] += delta;
                    blocks[b].grids.0[l].sync();
                    distill_loss(&s.c, &blocks, &head, &s.inputs, &s.teacher).unwrap()
                };
                let step = 1e-2 * s.blocks[b].grids.0[l].scales()[j];
                let fd = (at(step) - at(-step)) / (2.0 * f64::from(step));
                let got = f64::from(grads[b * 7 + l][j]);
                let err = (fd - got).abs() / (1e-4 + fd.abs().max(got.abs()));
                assert!(err < 3e-2, "block {b} linear {l} scale {j}: finite difference {fd}, backward {got}");
                checked += 1;
            }
        }
    }
    assert!(checked >= 40);
}

#[test]
fn kept_tapes_and_recomputed_ones_give_the_same_gradients() {
    let s = setup(f32_scales(Bits::B4, 6, false), &MIXED);
    let head = Head { norm: &s.norm, weight: &s.head, vocab: s.vocab };
    let (kl, grads) = scale_gradients(&s.c, &s.blocks, &head, &s.inputs, &s.teacher, TAPE_BUDGET).unwrap();
    // Gradient checkpointing (every tape recomputed) changes nothing.
    let recomputed = scale_gradients(&s.c, &s.blocks, &head, &s.inputs, &s.teacher, 0).unwrap();
    assert_eq!((kl, &grads), (recomputed.0, &recomputed.1));
    assert!(kl > 0.0);
    assert!((kl - distill_loss(&s.c, &s.blocks, &head, &s.inputs, &s.teacher).unwrap()).abs() < 1e-9 * kl.max(1.0));
}

#[test]
fn distillation_lowers_the_kl_and_resumes_exactly() {
    let s = setup(IntScheme::group(Bits::B2, 4), &MIXED);
    let head = Head { norm: &s.norm, weight: &s.head, vocab: s.vocab };
    let opts = DistillOptions { epochs: 6, lr: 2e-3, batch: 2, tape_budget: 0 };
    let before = distill_loss(&s.c, &s.blocks, &head, &s.inputs, &s.teacher).unwrap();
    let mut trained = s.blocks.clone();
    let mut seen = vec![];
    let losses = distill_scales(&s.c, &mut trained, &head, &s.inputs, &s.teacher, &opts, None, &mut |st, _, total| {
        seen.push((st.step, total));
        Ok(())
    })
    .unwrap();
    assert_eq!(seen.len(), 12);
    assert_eq!(seen.last(), Some(&(12, 12)));
    let after = distill_loss(&s.c, &trained, &head, &s.inputs, &s.teacher).unwrap();
    assert!(after < 0.8 * before, "KL {before} -> {after} (epochs {losses:?})");
    assert!(losses.last() < losses.first(), "epochs {losses:?}");
    // Codes and zeros are untouched: only the scales move.
    for (t, b) in trained.iter().zip(&s.blocks) {
        assert_eq!(t.codes, b.codes);
        for (gt, gb) in t.grids.0.iter().zip(&b.grids.0) {
            assert!(gt.params().iter().zip(gb.params()).all(|(x, y)| x.zero == y.zero));
        }
    }
    // Stopped after 5 steps (as Ctrl-C would), then continued from the saved state: the same bits.
    let mut partial = s.blocks.clone();
    let mut saved = None;
    let stop = distill_scales(&s.c, &mut partial, &head, &s.inputs, &s.teacher, &opts, None, &mut |st, blocks, _| {
        if st.step == 5 {
            saved = Some((st.clone(), blocks.to_vec()));
            return Err(TrainError::Shape { what: "stop", expected: 0, got: 0 });
        }
        Ok(())
    });
    assert!(stop.is_err());
    let (state, mut resumed) = saved.unwrap();
    let again =
        distill_scales(&s.c, &mut resumed, &head, &s.inputs, &s.teacher, &opts, Some(state), &mut |_, _, _| Ok(()))
            .unwrap();
    assert_eq!(again, losses);
    for (r, t) in resumed.iter().zip(&trained) {
        assert_eq!(r.grids, t.grids);
    }
    // Mismatched teacher windows are refused.
    let mut b = s.blocks.clone();
    assert!(
        distill_scales(&s.c, &mut b, &head, &s.inputs, &s.teacher[1..], &opts, None, &mut |_, _, _| Ok(())).is_err()
    );
}
