//! AWQ: the scale search against an exhaustive scalar evaluation, and its effect on the error.

mod common;

use common::{correlated_activations, Rng};
use lowbit_core::{Bits, ClipSearch, Granularity, IntScheme, ScaleDtype};
use lowbit_solvers::awq::{awq_quantize, brute_force_alpha, scale_loss, search_scales, AwqConfig, AwqStats};
use lowbit_solvers::LayerWeight;
use lowbit_solvers::SolverError;

fn scheme(bits: Bits, symmetric: bool, granularity: Granularity) -> IntScheme {
    IntScheme { bits, symmetric, granularity, scale_dtype: ScaleDtype::F16, clip: ClipSearch::MinMax }
}

/// Weights whose salient input channels (large activations) matter, as in LLMs.
fn problem(seed: u64, tokens: usize, cols: usize, rows: &[usize]) -> (Vec<f32>, Vec<Vec<f32>>) {
    let mut rng = Rng::new(seed);
    let x = correlated_activations(&mut rng, tokens, cols);
    let ws = rows.iter().map(|&r| rng.normals(r * cols, 0.05)).collect();
    (x, ws)
}

#[test]
fn chosen_alpha_equals_brute_force() {
    let (tokens, cols) = (128, 64);
    let mut nontrivial = 0;
    for seed in 0..12u64 {
        let (bits, symmetric, gran) = [
            (Bits::B4, false, Granularity::Group(32)),
            (Bits::B3, false, Granularity::Group(16)),
            (Bits::B4, true, Granularity::PerChannel),
            (Bits::B2, false, Granularity::Group(32)),
        ][seed as usize % 4];
        let (x, ws) = problem(seed, tokens, cols, &[24, 40]);
        let layers: Vec<LayerWeight> = ws.iter().zip([24, 40]).map(|(w, rows)| LayerWeight { w, rows }).collect();
        let s = scheme(bits, symmetric, gran);
        // The search works from the statistics (second moment), the oracle from the activations.
        let stats = AwqStats::from_activations(&x, tokens, cols).unwrap();
        let (alpha, scales, losses) = search_scales(&stats, &layers, s, 20).unwrap();
        let (want_alpha, want_losses) = brute_force_alpha(&x, tokens, cols, &layers, s, 20).unwrap();
        assert_eq!(alpha, want_alpha, "seed {seed}: {losses:?} vs {want_losses:?}");
        for (a, b) in losses.iter().zip(&want_losses) {
            assert!((a - b).abs() <= 1e-4 * b, "seed {seed}: {a} vs {b}");
        }
        // The returned scales are the ones scored for that alpha.
        let again = scale_loss(&stats, &layers, s, &scales).unwrap();
        assert_eq!(again, losses[(alpha * 20.0).round() as usize]);
        nontrivial += usize::from(alpha > 0.0);
    }
    assert!(nontrivial >= 6, "the search should usually move away from alpha = 0: {nontrivial}");
}

#[test]
fn awq_is_never_worse_than_rtn_and_clipping_is_bounded() {
    let (tokens, cols) = (1024, 128);
    for (seed, (bits, symmetric, gran)) in [
        (Bits::B4, false, Granularity::Group(32)),
        (Bits::B3, false, Granularity::Group(64)),
        (Bits::B4, true, Granularity::PerChannel),
    ]
    .into_iter()
    .enumerate()
    {
        let (x, ws) = problem(100 + seed as u64, tokens, cols, &[64, 32]);
        let layers: Vec<LayerWeight> = ws.iter().zip([64, 32]).map(|(w, rows)| LayerWeight { w, rows }).collect();
        let s = scheme(bits, symmetric, gran);
        let stats = AwqStats::from_activations(&x, tokens, cols).unwrap();
        let out = awq_quantize(&stats, &layers, &AwqConfig::new(s)).unwrap();
        // alpha = 0 gives s = 1, i.e. plain RTN: the search can only improve on it.
        let rtn = out.grid_losses[0];
        assert!(out.grid_losses.iter().all(|&l| l >= out.grid_losses[(out.alpha * 20.0).round() as usize]));
        assert!(out.report.loss <= rtn, "{bits:?}: awq {} rtn {rtn}", out.report.loss);
        for (l, bounds) in layers.iter().zip(&out.clip) {
            let g = match gran {
                Granularity::Group(g) => g,
                _ => cols,
            };
            for (k, &b) in bounds.iter().enumerate() {
                let (r, grp) = (k / (cols / g), k % (cols / g));
                let absmax =
                    (grp * g..grp * g + g).map(|c| (l.w[r * cols + c] * out.scales[c]).abs()).fold(0.0f32, f32::max);
                assert!(b <= absmax && b >= 0.5 * absmax * 0.999, "{b} vs {absmax}");
            }
        }
        assert_eq!(out.qtensors.len(), 2);
        assert_eq!(out.qtensors[0].shape(), &[64, cols]);
        let no_clip = awq_quantize(&stats, &layers, &AwqConfig { clip: false, ..AwqConfig::new(s) }).unwrap();
        assert_eq!(no_clip.alpha, out.alpha);
    }
}

#[test]
fn awq_rejects_bad_input() {
    let w = vec![0.1f32; 8 * 16];
    let layers = [LayerWeight { w: &w, rows: 8 }];
    let cfg = AwqConfig::new(IntScheme::group(Bits::B4, 16));
    let mut x = vec![1.0f32; 4 * 16];
    x[20] = f32::NAN;
    assert!(matches!(
        AwqStats::from_activations(&x, 4, 16),
        Err(SolverError::NonFiniteActivation { token: 1, channel: 4, .. })
    ));
    assert!(matches!(awq_quantize(&AwqStats::new(16), &layers, &cfg), Err(SolverError::NoCalibrationData { .. })));
    assert!(matches!(AwqStats::from_activations(&x[..8], 1, 16), Err(SolverError::Shape { .. })));
    let stats = AwqStats::from_activations(&[1.0; 8], 1, 8).unwrap();
    assert!(matches!(awq_quantize(&stats, &layers, &cfg), Err(SolverError::Shape { .. })));
}

#[test]
fn refined_ranges_never_lose_to_symmetric_clipping() {
    use lowbit_solvers::awq::{quantize_ranges, refine_ranges, search_clip};
    let (tokens, cols, rows) = (512, 64, 24);
    for (seed, (bits, g)) in [(Bits::B4, 16), (Bits::B3, 32), (Bits::B2, 64)].into_iter().enumerate() {
        let (x, ws) = problem(300 + seed as u64, tokens, cols, &[rows]);
        let s: Vec<f32> = (0..cols).map(|c| 0.5 + (c % 7) as f32 / 7.0).collect();
        let ws: Vec<f32> = ws[0].iter().enumerate().map(|(i, w)| w * s[i % cols]).collect();
        let xs: Vec<f32> = x.iter().enumerate().map(|(i, v)| v / s[i % cols]).collect();
        let stats = AwqStats::from_activations(&x, tokens, cols).unwrap();
        let cfg = AwqConfig::new(scheme(bits, false, Granularity::Group(g)));
        // Output error on the scaled inputs, scalar f64.
        let err = |ranges: &[(f32, f32)]| {
            let q = quantize_ranges(&ws, rows, cols, cfg.scheme, ranges).unwrap().dequantize();
            let mut total = 0.0f64;
            for t in 0..tokens {
                for r in 0..rows {
                    let d: f64 = (0..cols)
                        .map(|c| f64::from(xs[t * cols + c]) * f64::from(ws[r * cols + c] - q[r * cols + c]))
                        .sum();
                    total += d * d;
                }
            }
            total
        };
        let bounds = search_clip(&ws, rows, &stats, &s, &cfg).unwrap();
        let sym: Vec<(f32, f32)> = bounds.iter().map(|&b| (-b, b)).collect();
        let refined = refine_ranges(&ws, rows, &stats, &s, &cfg, &bounds).unwrap();
        let groups = cols / g;
        for (k, &(lo, hi)) in refined.iter().enumerate() {
            let (r, grp) = (k / groups, k % groups);
            let span = &ws[r * cols + grp * g..r * cols + grp * g + g];
            let (mn, mx) = span.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
            assert!(lo >= mn && hi <= mx && lo <= hi, "range ({lo}, {hi}) outside ({mn}, {mx})");
            assert!(lo >= -bounds[k] && hi <= bounds[k]);
        }
        let (e_sym, e_ref) = (err(&sym), err(&refined));
        assert!(e_ref <= e_sym * (1.0 + 1e-5), "{bits:?}: refined {e_ref} vs symmetric {e_sym}");
    }
}

#[test]
fn head_tie_averages_over_the_query_heads_of_a_kv_head() {
    use lowbit_solvers::awq::HeadTie;
    // 4 query heads of 2 lanes over 2 KV heads: heads 0,1 share KV head 0; heads 2,3 KV head 1.
    let tie = HeadTie { heads: 4, kv_heads: 2, head_dim: 2 };
    let v = [1.0, 10.0, 3.0, 20.0, 5.0, 30.0, 7.0, 40.0];
    assert_eq!(tie.tie(&v), vec![2.0, 15.0, 2.0, 15.0, 6.0, 35.0, 6.0, 35.0]);
    assert_eq!(tie.per_kv_lane(&tie.tie(&v)), vec![2.0, 15.0, 6.0, 35.0]);
    // The tied search returns tied scales.
    let (tokens, cols) = (64, 8);
    let (x, ws) = problem(7, tokens, cols, &[5]);
    let layers = [LayerWeight { w: &ws[0], rows: 5 }];
    let stats = AwqStats::from_activations(&x, tokens, cols).unwrap();
    let sch = scheme(Bits::B4, false, Granularity::PerChannel);
    let (_, s, _) = lowbit_solvers::awq::search_scales_tied(&stats, &layers, sch, 20, Some(tie)).unwrap();
    assert_eq!(tie.tie(&s), s);
    let bad = HeadTie { heads: 3, kv_heads: 2, head_dim: 2 };
    assert!(lowbit_solvers::awq::search_scales_tied(&stats, &layers, sch, 20, Some(bad)).is_err());
}
