//! LLM.int8()'s mixed-precision decomposition (`Int8Linear::with_outlier_threshold`): every
//! kernel level against the scalar reference `forward_scalar`, bit for bit, on odd shapes with
//! and without outlier columns; the reference against its definition in f64 (int8 over the
//! non-outlier columns with their own per-token scale, f32 over the outliers); the outlier counts.

mod common;

use common::{levels, Rng};
use lowbit_core::{rtn, Bits, ClipSearch, Granularity, IntScheme, ScaleDtype};
use lowbit_cpu::{CpuError, Int8Linear, Linear, OutlierCounts, WeightKind};
use proptest::prelude::*;

fn scheme() -> IntScheme {
    IntScheme {
        bits: Bits::B8,
        symmetric: true,
        granularity: Granularity::PerChannel,
        scale_dtype: ScaleDtype::F32,
        clip: ClipSearch::MinMax,
    }
}

fn layer(rows: usize, cols: usize, rng: &mut Rng, t: f32) -> Int8Linear {
    let q = rtn::quantize(&rng.vec(rows * cols), &[rows, cols], scheme()).unwrap();
    Int8Linear::from_qtensor(&q).unwrap().with_outlier_threshold(t).unwrap()
}

/// Activations in [-1, 1) with the columns `outliers` set to magnitudes in [gain/2, gain) in
/// two tokens of three.
fn acts(rng: &mut Rng, m: usize, cols: usize, outliers: &[usize], gain: f32) -> Vec<f32> {
    let mut x = rng.vec(m * cols);
    for t in 0..m {
        for &c in outliers {
            if (t + c) % 3 != 1 {
                let v = x[t * cols + c];
                x[t * cols + c] = gain.copysign(v) * (0.5 + 0.5 * v.abs());
            }
        }
    }
    x
}

/// Every level's output equals the reference's, bit for bit.
fn check_exact(lin: &Int8Linear, x: &[f32], m: usize, what: &str) {
    let rows = lin.rows();
    let mut want = vec![f32::NAN; m * rows];
    lin.forward_scalar(x, m, &mut want).unwrap();
    for level in levels() {
        let mut got = vec![f32::NAN; m * rows];
        lin.forward_with(level, x, m, &mut got).unwrap();
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!(
                g.to_bits() == w.to_bits(),
                "{what} level {} [{rows}x{}] m={m} out[{}, {}]: got {g}, want {w}",
                level.name(),
                lin.cols(),
                i / rows,
                i % rows
            );
        }
    }
}

#[test]
fn every_level_is_bit_exact_on_odd_shapes_with_and_without_outliers() {
    let mut rng = Rng(21);
    for rows in [1, 3, 16, 17, 33, 100] {
        for cols in [1, 3, 4, 7, 16, 63, 65, 100, 577] {
            let lin = layer(rows, cols, &mut rng, 6.0);
            for m in [1, 2, 3, 7, 13, 33] {
                check_exact(&lin, &acts(&mut rng, m, cols, &[], 1.0), m, "no outliers");
                let outliers: Vec<usize> = [0, cols / 2, cols - 1, 5].into_iter().filter(|&c| c < cols).collect();
                check_exact(&lin, &acts(&mut rng, m, cols, &outliers, 40.0), m, "outliers");
                // every column an outlier: the int8 part is empty (scale 1, codes 0)
                check_exact(
                    &lin,
                    &acts(&mut rng, m, cols, &[], 1.0).iter().map(|v| v * 9.0).collect::<Vec<_>>(),
                    m,
                    "all",
                );
            }
        }
    }
}

#[test]
fn threaded_shapes_are_bit_exact() {
    // large enough for the W8A8 driver to split over tokens and over panels
    let mut rng = Rng(22);
    for (rows, cols, m) in [(576, 1536, 1), (1536, 576, 40), (300, 577, 129)] {
        let lin = layer(rows, cols, &mut rng, 6.0);
        check_exact(&lin, &acts(&mut rng, m, cols, &[1, 17, 300], 25.0), m, "threaded");
        // enough outlier columns for the f32 correction to split over tokens too
        let many: Vec<usize> = (0..cols).step_by(5).collect();
        check_exact(&lin, &acts(&mut rng, m, cols, &many, 25.0), m, "many outliers");
    }
}

/// The backend splits large batches over threads by rows for other weights; the outlier columns
/// of LLM.int8() are those of the whole batch, so its products are not split: an outlier only in
/// the last token still sends its column to f32 for the first token.
#[test]
fn backend_does_not_split_the_batch() {
    use lowbit_core::backend::Backend;
    let mut rng = Rng(28);
    let (rows, cols, m) = (64, 96, 300);
    let q = rtn::quantize(&rng.vec(rows * cols), &[rows, cols], scheme()).unwrap();
    let mut lin = Linear::new(rows, cols, WeightKind::Quant(q)).unwrap();
    lin.enable_int8_decomposition(6.0).unwrap();
    let mut x = rng.vec(m * cols);
    x[(m - 1) * cols + 7] = 50.0;
    let (mut want, mut got) = (vec![0f32; m * rows], vec![f32::NAN; m * rows]);
    lin.forward_scalar(&x, m, &mut want);
    lowbit_cpu::Cpu::new().linear(&lin, &x, m, &mut got).unwrap();
    assert_eq!(got, want);
    assert_eq!(lin.outlier_counts().map(|c| (c.batches, c.outlier_columns)), Some((1, 1)));
}

/// The definition, in f64: int8 codes of the non-outlier columns at their own per-token scale,
/// the outlier columns exact.
fn definition(lin: &Int8Linear, x: &[f32], m: usize, t: f32) -> Vec<f64> {
    let (rows, cols) = (lin.rows(), lin.cols());
    let out: Vec<bool> = (0..cols).map(|c| (0..m).any(|i| x[i * cols + c].abs() >= t)).collect();
    let mut y = vec![0f64; m * rows];
    for i in 0..m {
        let xt = &x[i * cols..(i + 1) * cols];
        let amax = (0..cols).filter(|&c| !out[c]).fold(0f32, |a, c| a.max(xt[c].abs()));
        let sx = if amax == 0.0 { 1.0 } else { amax / 127.0 };
        for r in 0..rows {
            let ws = f64::from(lin.scales()[r]);
            let mut acc = 0f64;
            for c in 0..cols {
                let w = f64::from(lin.code(r, c)) * ws;
                acc += if out[c] {
                    f64::from(xt[c]) * w
                } else {
                    f64::from((xt[c] / sx).round_ties_even().clamp(-127.0, 127.0)) * f64::from(sx) * w
                };
            }
            y[i * rows + r] = acc;
        }
    }
    y
}

#[test]
fn reference_is_the_decomposition() {
    let mut rng = Rng(23);
    for (rows, cols, m) in [(9, 37, 5), (40, 130, 3), (1, 1, 1)] {
        let lin = layer(rows, cols, &mut rng, 6.0);
        let x = acts(&mut rng, m, cols, &[0, cols / 3], 60.0);
        let mut got = vec![0f32; m * rows];
        lin.forward_scalar(&x, m, &mut got).unwrap();
        let want = definition(&lin, &x, m, 6.0);
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            // f32 rounding of the sums, relative to the row's magnitude
            let mag: f64 = (0..cols).map(|c| (f64::from(x[(i / rows) * cols + c]) * 127.0).abs()).sum::<f64>()
                * f64::from(lin.scales()[i % rows]);
            assert!((f64::from(g) - w).abs() <= 1e-5 * mag + 1e-6, "out[{i}]: {g} vs {w}");
        }
    }
}

#[test]
fn decomposition_is_more_accurate_than_plain_w8a8_with_outliers() {
    // One column at 60 puts every other column's per-token int8 step at 60/127: the
    // decomposition keeps the step at 1/127.
    let mut rng = Rng(24);
    let (rows, cols, m) = (64, 256, 8);
    let q = rtn::quantize(&rng.vec(rows * cols), &[rows, cols], scheme()).unwrap();
    let plain = Int8Linear::from_qtensor(&q).unwrap();
    let dec = plain.clone().with_outlier_threshold(6.0).unwrap();
    let x = acts(&mut rng, m, cols, &[7], 60.0);
    let wd = plain.dequantize();
    let exact: Vec<f64> = (0..m * rows)
        .map(|i| (0..cols).map(|c| f64::from(x[(i / rows) * cols + c]) * f64::from(wd[(i % rows) * cols + c])).sum())
        .collect();
    let err = |lin: &Int8Linear| {
        let mut y = vec![0f32; m * rows];
        lin.forward(&x, m, &mut y).unwrap();
        y.iter().zip(&exact).map(|(&a, &b)| (f64::from(a) - b).powi(2)).sum::<f64>().sqrt()
    };
    let norm = exact.iter().map(|v| v * v).sum::<f64>().sqrt();
    let (e_plain, e_dec) = (err(&plain) / norm, err(&dec) / norm);
    assert!(e_dec < 0.01 && e_dec * 10.0 < e_plain, "relative error: decomposed {e_dec}, plain {e_plain}");
}

#[test]
fn outlier_counts_follow_the_batches() {
    let mut rng = Rng(25);
    let (rows, cols) = (8, 20);
    let lin = layer(rows, cols, &mut rng, 6.0);
    let mut y = vec![0f32; 4 * rows];
    lin.forward(&acts(&mut rng, 4, cols, &[2, 11], 30.0), 4, &mut y).unwrap();
    lin.forward(&acts(&mut rng, 4, cols, &[], 1.0), 4, &mut y).unwrap();
    lin.forward(&acts(&mut rng, 1, cols, &[3], 30.0), 1, &mut y[..rows]).unwrap();
    let c = lin.outlier_counts();
    assert_eq!(c, OutlierCounts { batches: 3, outlier_columns: 3, columns: cols as u64 });
    assert!((c.fraction() - 3.0 / 60.0).abs() < 1e-12);
    lin.reset_outlier_counts();
    assert_eq!(lin.outlier_counts().batches, 0);
    assert_eq!(lin.outlier_counts().fraction(), 0.0);
}

#[test]
fn threshold_edges() {
    let mut rng = Rng(26);
    let (rows, cols) = (5, 6);
    let q = rtn::quantize(&rng.vec(rows * cols), &[rows, cols], scheme()).unwrap();
    let base = Int8Linear::from_qtensor(&q).unwrap();
    for bad in [f32::NAN, 0.0, -1.0, f32::NEG_INFINITY] {
        let e = base.clone().with_outlier_threshold(bad).unwrap_err();
        assert!(matches!(e, CpuError::Shape { .. }) && e.to_string().contains("outlier threshold"), "{e}");
    }
    // infinity: plain W8A8, no counting
    let inf = base.clone().with_outlier_threshold(f32::INFINITY).unwrap();
    assert_eq!(inf.outlier_threshold(), None);
    let x: Vec<f32> = (0..2 * cols).map(|i| i as f32 * 10.0).collect();
    let (mut a, mut b) = (vec![0f32; 2 * rows], vec![0f32; 2 * rows]);
    inf.forward(&x, 2, &mut a).unwrap();
    base.forward(&x, 2, &mut b).unwrap();
    assert_eq!(a, b);
    assert_eq!(inf.outlier_counts().batches, 0);
    // |x| == t is an outlier (>=), just below is not
    let dec = base.clone().with_outlier_threshold(6.0).unwrap();
    let mut x = vec![0.5f32; cols];
    x[2] = -6.0;
    x[4] = 5.999_999_5;
    dec.forward(&x, 1, &mut a[..rows]).unwrap();
    assert_eq!(dec.outlier_counts().outlier_columns, 1);
    // non-finite activations are errors at every level and in the reference
    for v in [f32::NAN, f32::INFINITY] {
        x[1] = v;
        for level in levels() {
            let e = dec.forward_with(level, &x, 1, &mut a[..rows]).unwrap_err();
            assert!(matches!(e, CpuError::NonFiniteActivation { index: 1, .. }), "{e}");
        }
        assert!(matches!(dec.forward_scalar(&x, 1, &mut a[..rows]), Err(CpuError::NonFiniteActivation { .. })));
    }
}

#[test]
fn linear_runs_the_decomposition() {
    let mut rng = Rng(27);
    let (rows, cols, m) = (19, 45, 6);
    let q = rtn::quantize(&rng.vec(rows * cols), &[rows, cols], scheme()).unwrap();
    let mut lin = Linear::new(rows, cols, WeightKind::Quant(q.clone())).unwrap();
    assert_eq!(lin.outlier_counts(), None);
    lin.enable_int8_decomposition(6.0).unwrap();
    assert!(lin.int8_activations() && lin.outlier_threshold() == Some(6.0));
    let want = Int8Linear::from_qtensor(&q).unwrap().with_outlier_threshold(6.0).unwrap();
    let x = acts(&mut rng, m, cols, &[4, 44], 20.0);
    let (mut a, mut b) = (vec![0f32; m * rows], vec![0f32; m * rows]);
    lin.forward(&x, m, &mut a).unwrap();
    want.forward_scalar(&x, m, &mut b).unwrap();
    assert_eq!(a, b);
    lin.forward_scalar(&x, m, &mut a);
    assert_eq!(a, b);
    assert_eq!(lin.outlier_counts().map(|c| (c.batches, c.outlier_columns)), Some((1, 2)));
    lin.reset_outlier_counts();
    assert_eq!(lin.outlier_counts().map(|c| c.batches), Some(0));
    // dense weights have no int8 codes
    let mut dense = Linear::new(rows, cols, WeightKind::F32(rng.vec(rows * cols))).unwrap();
    assert!(dense.enable_int8_decomposition(6.0).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn prop_levels_bit_exact(
        rows in 1usize..40,
        cols in 1usize..150,
        m in 1usize..20,
        seed in any::<u64>(),
        n_out in 0usize..4,
        gain in 1.0f32..100.0,
        t in 0.5f32..8.0,
    ) {
        let mut rng = Rng(seed);
        let lin = layer(rows, cols, &mut rng, t);
        let outliers: Vec<usize> = (0..n_out).map(|_| rng.next() as usize % cols).collect();
        check_exact(&lin, &acts(&mut rng, m, cols, &outliers, gain), m, "proptest");
    }
}
