//! Attention and the elementwise ops at every level this CPU runs, against the scalar references
//! in `lowbit_cpu::scalar`, on odd shapes: head dims 24/64/128, GQA ratios 1 to 4, 1/3/17/33 new
//! tokens after 0 to 100 cached ones, sliding windows shorter and longer than the context.

mod common;

use common::{levels, Rng};
use lowbit_cpu::attention::{attention_with, AttnShape, ATTENTION_TOL};
use lowbit_cpu::ops::{self, EXP_APPROX_TOL, NLL_TOL, RMS_NORM_TOL, SWIGLU_TOL};
use lowbit_cpu::{scalar, KernelLevel};

/// Lengths with awkward tails for every lane width (8, 16, 32).
const LENS: [usize; 8] = [1, 3, 17, 33, 64, 100, 577, 1536];

fn worst_rel(got: &[f32], want: &[f32]) -> f32 {
    got.iter().zip(want).map(|(g, w)| (g - w).abs() / w.abs().max(1.0)).fold(0.0, f32::max)
}

fn check_attention(rng: &mut Rng, shape: AttnShape, past: usize, n: usize) {
    let (qd, kvd) = (shape.q_dim(), shape.kv_dim());
    // Scores of a few units, like real models, so the softmax is neither flat nor one-hot.
    let q: Vec<f32> = rng.vec(n * qd).iter().map(|v| v * 2.0).collect();
    let kc: Vec<f32> = rng.vec((past + n) * kvd).iter().map(|v| v * 2.0).collect();
    let vc = rng.vec((past + n) * kvd);
    let vmax = vc.iter().fold(0f32, |m, v| m.max(v.abs()));
    let mut want = vec![0f32; n * qd];
    scalar::attention(&shape, &q, &kc, &vc, past, &mut want);
    for level in levels() {
        let mut got = vec![f32::NAN; n * qd];
        attention_with(level, &shape, &q, &kc, &vc, past, &mut got).unwrap();
        let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(
            worst <= ATTENTION_TOL * vmax,
            "{} {shape:?} past {past} n {n}: max |fast - reference| = {worst:e} > {ATTENTION_TOL:e} * {vmax}",
            level.name()
        );
    }
}

#[test]
fn attention_matches_reference_on_odd_shapes() {
    let mut rng = Rng(11);
    for (heads, kv_heads) in [(2, 2), (3, 1), (6, 2), (9, 3), (8, 2)] {
        for head_dim in [24, 64, 128] {
            for window in [None, Some(1), Some(5), Some(40)] {
                for (past, n) in [(0, 1), (0, 3), (0, 17), (0, 33), (7, 1), (50, 3), (33, 17), (100, 33)] {
                    check_attention(&mut rng, AttnShape { heads, kv_heads, head_dim, window }, past, n);
                }
            }
        }
    }
}

#[test]
fn long_prefill_attention_matches_reference() {
    let mut rng = Rng(12);
    check_attention(&mut rng, AttnShape { heads: 9, kv_heads: 3, head_dim: 64, window: None }, 0, 300);
    check_attention(&mut rng, AttnShape { heads: 4, kv_heads: 1, head_dim: 128, window: Some(64) }, 20, 150);
    // decode steps with a long cache (the heads then run on the pool)
    check_attention(&mut rng, AttnShape { heads: 9, kv_heads: 3, head_dim: 64, window: None }, 700, 1);
    check_attention(&mut rng, AttnShape { heads: 4, kv_heads: 2, head_dim: 40, window: Some(600) }, 900, 1);
}

/// A batch of decode sequences (each one query, different pasts, some long enough that a lone
/// call would split its heads over the pool) through the backend's `attention_batch` gives
/// exactly what one `attention` call per sequence gives.
#[test]
fn batched_decode_attention_equals_one_call_per_sequence() {
    use lowbit_core::backend::{AttnSeq, Backend};
    let mut rng = Rng(29);
    let be = lowbit_cpu::Cpu::new();
    for shape in [
        AttnShape { heads: 9, kv_heads: 3, head_dim: 64, window: None },
        AttnShape { heads: 4, kv_heads: 2, head_dim: 40, window: Some(50) },
    ] {
        let (qd, kvd) = (shape.q_dim(), shape.kv_dim());
        let pasts = [0usize, 7, 300, 1, 65, 700, 2];
        let q = rng.vec(pasts.len() * qd);
        let kvs: Vec<(Vec<f32>, Vec<f32>)> =
            pasts.iter().map(|p| (rng.vec((p + 1) * kvd), rng.vec((p + 1) * kvd))).collect();
        let mut want = vec![0f32; q.len()];
        for (i, ((k, v), &past)) in kvs.iter().zip(&pasts).enumerate() {
            be.attention(&shape, &q[i * qd..(i + 1) * qd], k, v, past, &mut want[i * qd..(i + 1) * qd]);
        }
        let seqs: Vec<AttnSeq<'_, lowbit_cpu::Cpu>> = kvs
            .iter()
            .zip(&pasts)
            .enumerate()
            .map(|(i, ((k, v), &past))| AttnSeq { rows: i..i + 1, k: k.as_slice(), v: v.as_slice(), past })
            .collect();
        let mut got = vec![f32::NAN; q.len()];
        be.attention_batch(&shape, &q, &mut got, &seqs);
        assert_eq!(got, want, "{shape:?}");
    }
}

/// The backend splits large batches' elementwise ops over threads by whole rows: the result
/// equals one call over the whole batch, bit for bit.
#[test]
fn backend_row_split_ops_equal_whole_batch_calls() {
    use lowbit_core::backend::Backend;
    let mut rng = Rng(31);
    let be = lowbit_cpu::Cpu::new();
    for (rows, d) in [(300usize, 577usize), (1000, 64), (3, 1536)] {
        let x: Vec<f32> = rng.vec(rows * d).iter().map(|v| v * 3.0).collect();
        let (w, y) = (rng.vec(d), rng.vec(rows * d));
        let (mut want, mut got) = (vec![0f32; rows * d], vec![f32::NAN; rows * d]);
        ops::rms_norm(&x, &w, 1e-5, &mut want);
        be.rms_norm(&x, &w, 1e-5, &mut got);
        assert_eq!(got, want, "rms_norm {rows}x{d}");
        let mut inplace = x.clone();
        be.rms_norm_inplace(&mut inplace, &w, 1e-5);
        assert_eq!(inplace, want, "rms_norm_inplace {rows}x{d}");
        let (mut a, mut b) = (x.clone(), x.clone());
        ops::swiglu(&mut a, &y);
        be.swiglu(&mut b, &y);
        assert_eq!(a, b, "swiglu {rows}x{d}");
        let (mut a, mut b) = (x.clone(), x.clone());
        a.iter_mut().zip(&y).for_each(|(a, y)| *a += y);
        be.add(&mut b, &y);
        assert_eq!(a, b, "add {rows}x{d}");
        let (mut a, mut b) = (x.clone(), x.clone());
        ops::add_bias(&mut a, &w);
        be.add_bias(&mut b, &w);
        assert_eq!(a, b, "add_bias {rows}x{d}");
    }
}

/// The elementwise ops fuse no multiply-add and fix the order of every sum, so each level
/// returns exactly what the scalar level returns; that level is held to the reference.
#[test]
fn rms_norm_matches_reference_and_levels_agree() {
    let mut rng = Rng(13);
    for d in LENS {
        for rows in [1, 3] {
            let x: Vec<f32> = rng.vec(rows * d).iter().map(|v| v * 3.0).collect();
            let w = rng.vec(d);
            let mut want = vec![0f32; rows * d];
            scalar::rms_norm(&x, &w, 1e-5, &mut want);
            let mut base = vec![f32::NAN; rows * d];
            ops::rms_norm_with(KernelLevel::Scalar, &x, &w, 1e-5, &mut base).unwrap();
            let worst = worst_rel(&base, &want);
            assert!(worst <= RMS_NORM_TOL, "d {d}: {worst:e}");
            for level in levels() {
                let mut got = vec![f32::NAN; rows * d];
                ops::rms_norm_with(level, &x, &w, 1e-5, &mut got).unwrap();
                assert_eq!(got, base, "rms_norm {} d {d}", level.name());
                let mut inplace = x.clone();
                ops::rms_norm_inplace_with(level, &mut inplace, &w, 1e-5).unwrap();
                assert_eq!(inplace, base, "rms_norm_inplace {} d {d}", level.name());
            }
        }
    }
}

#[test]
fn swiglu_matches_reference_and_levels_agree() {
    let mut rng = Rng(14);
    for n in LENS {
        // gates from deep in the negative tail (silu -> 0) to large positives (silu -> g)
        let g: Vec<f32> = rng.vec(n).iter().map(|v| v * 20.0).collect();
        let u = rng.vec(n);
        let mut want = g.clone();
        scalar::swiglu(&mut want, &u);
        let mut base = g.clone();
        ops::swiglu_with(KernelLevel::Scalar, &mut base, &u).unwrap();
        let worst = worst_rel(&base, &want);
        assert!(worst <= SWIGLU_TOL, "n {n}: {worst:e}");
        for level in levels() {
            let mut got = g.clone();
            ops::swiglu_with(level, &mut got, &u).unwrap();
            assert_eq!(got, base, "swiglu {} n {n}", level.name());
        }
    }
}

#[test]
fn add_bias_and_rope_are_exact_at_every_level() {
    let mut rng = Rng(15);
    for d in [2, 6, 34, 64, 128] {
        let x = rng.vec(3 * d);
        let bias = rng.vec(d);
        let (cos, sin) = (rng.vec(d / 2), rng.vec(d / 2));
        let mut want_bias = x.clone();
        scalar::add_bias(&mut want_bias, &bias);
        let mut want_rope = x[..d].to_vec();
        scalar::rope_head(&mut want_rope, &cos, &sin);
        for level in levels() {
            let mut got = x.clone();
            ops::add_bias_with(level, &mut got, &bias).unwrap();
            assert_eq!(got, want_bias, "add_bias {} d {d}", level.name());
            let mut got = x[..d].to_vec();
            ops::rope_head_with(level, &mut got, &cos, &sin).unwrap();
            assert_eq!(got, want_rope, "rope_head {} d {d}", level.name());
        }
    }
}

#[test]
fn nll_matches_reference_at_every_level() {
    for level in levels() {
        assert!((ops::nll_with(level, &[0.0; 4], 2).unwrap() - 4f64.ln()).abs() < 1e-6);
        for (n, spread) in [(1usize, 1.0f32), (17, 3.0), (33, 5.0), (1000, 10.0), (49152, 20.0), (50001, 40.0)] {
            let logits: Vec<f32> = (0..n).map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.7) * spread).collect();
            for target in [0, n / 2, n - 1] {
                let (a, b) = (ops::nll_with(level, &logits, target).unwrap(), scalar::nll(&logits, target));
                assert!(
                    (a - b).abs() <= NLL_TOL * b.abs().max(1.0),
                    "{} n {n} target {target}: {a} vs {b}",
                    level.name()
                );
            }
        }
    }
    assert!((scalar::nll(&[0.0; 4], 2) - 4f64.ln()).abs() < 1e-12);
}

#[test]
fn exp_inplace_matches_libm_and_levels_agree() {
    let mut rng = Rng(16);
    for n in LENS {
        // From below the underflow threshold (exactly 0) to large positives.
        let x: Vec<f32> = rng.vec(n).iter().map(|v| v * 100.0).collect();
        let mut base = x.clone();
        ops::exp_inplace_with(KernelLevel::Scalar, &mut base).unwrap();
        for (&xi, &e) in x.iter().zip(&base) {
            if xi < -87.34 {
                assert_eq!(e, 0.0, "exp({xi})");
            } else if xi < 88.0 {
                let want = xi.exp();
                assert!((e - want).abs() <= EXP_APPROX_TOL * want, "exp({xi}) = {e}, libm {want}");
            }
        }
        for level in levels() {
            let mut got = x.clone();
            ops::exp_inplace_with(level, &mut got).unwrap();
            assert_eq!(got, base, "exp_inplace {} n {n}", level.name());
        }
    }
}

#[test]
fn log_softmax_matches_an_f64_reference_and_levels_agree() {
    for (n, spread) in [(1usize, 1.0f32), (17, 3.0), (33, 5.0), (1000, 10.0), (49152, 20.0)] {
        let logits: Vec<f32> = (0..n).map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.7) * spread).collect();
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
        let lse = max + logits.iter().map(|&v| (v as f64 - max).exp()).sum::<f64>().ln();
        let mut base = logits.clone();
        ops::log_softmax_with(KernelLevel::Scalar, &mut base).unwrap();
        for (&got, &v) in base.iter().zip(&logits) {
            let want = v as f64 - lse;
            assert!((got as f64 - want).abs() <= NLL_TOL * want.abs().max(1.0), "n {n}: {got} vs {want}");
        }
        for level in levels() {
            let mut got = logits.clone();
            ops::log_softmax_with(level, &mut got).unwrap();
            assert_eq!(got, base, "log_softmax {} n {n}", level.name());
        }
    }
}
