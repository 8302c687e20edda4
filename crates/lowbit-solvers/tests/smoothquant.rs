//! SmoothQuant: the smoothing identity, the W8A8 reference and the benefit of smoothing.

mod common;

use common::Rng;
use lowbit_solvers::smoothquant::{
    activation_absmax, matmul_w8a8_ref, quantize_activations_per_token, smoothquant, weight_int8, SmoothQuantConfig,
    SmoothQuantOutput,
};
use lowbit_solvers::LayerWeight;

/// Activations with a few outlier channels (100x), as SmoothQuant observes in LLMs.
fn outlier_activations(rng: &mut Rng, tokens: usize, cols: usize) -> Vec<f32> {
    let outliers = [3usize, 17, 40];
    (0..tokens * cols)
        .map(|i| {
            let v = rng.normal() as f32;
            if outliers.contains(&(i % cols)) {
                v * 60.0 + 30.0
            } else {
                v
            }
        })
        .collect()
}

/// A seeded problem: outlier activations `x[tokens, cols]` and a weight `w[rows, cols]`, and the
/// generator for more.
fn problem(seed: u64, tokens: usize, cols: usize, rows: usize) -> (Rng, Vec<f32>, Vec<f32>) {
    let mut rng = Rng::new(seed);
    let x = outlier_activations(&mut rng, tokens, cols);
    let w = rng.normals(rows * cols, 0.05);
    (rng, x, w)
}

/// SmoothQuant of `layers` from the activations `x[.., cols]`, and `x` smoothed (`x_j / s_j`).
fn smoothed(x: &[f32], cols: usize, layers: &[LayerWeight], cfg: &SmoothQuantConfig) -> (SmoothQuantOutput, Vec<f32>) {
    let out = smoothquant(&activation_absmax(x, cols).unwrap(), layers, cfg).unwrap();
    let xs = x.iter().enumerate().map(|(i, v)| v / out.factors[i % cols]).collect();
    (out, xs)
}

fn matmul_f64(x: &[f32], w: &[f32], cols: usize) -> Vec<f64> {
    let rows = w.len() / cols;
    x.chunks_exact(cols)
        .flat_map(|xt| {
            w.chunks_exact(cols)
                .map(|wr| xt.iter().zip(wr).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum::<f64>())
                .collect::<Vec<_>>()
        })
        .take(x.len() / cols * rows)
        .collect()
}

#[test]
fn smoothing_is_an_identity_in_f32() {
    let (cols, rows) = (48, 32);
    let (mut rng, x, w) = problem(1, 64, cols, rows);
    let w2 = rng.normals(16 * cols, 0.05);
    let layers = [LayerWeight { w: &w, rows }, LayerWeight { w: &w2, rows: 16 }];
    let (out, xs) = smoothed(&x, cols, &layers, &SmoothQuantConfig::default());
    let s = &out.factors;
    let ws: Vec<f32> = w.iter().enumerate().map(|(i, v)| v * s[i % cols]).collect();
    let (a, b) = (matmul_f64(&xs, &ws, cols), matmul_f64(&x, &w, cols));
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    for (p, q) in a.iter().zip(&b) {
        assert!((p - q).abs() <= 1e-5 * scale, "{p} vs {q}");
    }
    // alpha = 0.5 balances the maxima: max|X_j / s_j| == max|W_j s_j| (over both layers).
    let xmax = activation_absmax(&xs, cols).unwrap();
    for j in 0..cols {
        let wmax = w.iter().chain(&w2).skip(j).step_by(cols).fold(0.0f32, |m, v| m.max(v.abs())) * s[j];
        assert!((xmax[j] - wmax).abs() <= 1e-4 * wmax, "channel {j}: {} vs {wmax}", xmax[j]);
    }
}

#[test]
fn w8a8_reference_and_smoothing_benefit() {
    let (cols, rows) = (64, 48);
    let (_, x, w) = problem(2, 128, cols, rows);
    let exact = matmul_f64(&x, &w, cols);
    let error = |alpha: f32| {
        let cfg = SmoothQuantConfig { alpha, ..Default::default() };
        let layers = [LayerWeight { w: &w, rows }];
        let (out, xs) = smoothed(&x, cols, &layers, &cfg);
        let xq = quantize_activations_per_token(&xs, cols).unwrap();
        let (wq, wscale) = weight_int8(&out.qtensors[0]).unwrap();
        assert!(wq.iter().all(|&q| q >= -127));
        let y = matmul_w8a8_ref(&xq, &wq, &wscale).unwrap();
        // The int reference equals the float product of the dequantized operands.
        let xd: Vec<f32> = xq.codes.iter().enumerate().map(|(i, &q)| f32::from(q) * xq.scales[i / cols]).collect();
        let wd = out.qtensors[0].dequantize();
        for (a, b) in y.iter().zip(matmul_f64(&xd, &wd, cols)) {
            assert!((f64::from(*a) - b).abs() <= 1e-4 * b.abs().max(1.0), "{a} vs {b}");
        }
        y.iter().zip(&exact).map(|(&a, &b)| (f64::from(a) - b).powi(2)).sum::<f64>()
    };
    // alpha = 0 migrates nothing from the activations (s_j = 1 / max|W_j|): the outliers stay.
    let (plain, smooth) = (error(0.0), error(0.5));
    assert!(smooth < 0.5 * plain, "smoothing should cut the W8A8 error: {smooth} vs {plain}");
}

#[test]
fn per_token_quantization_is_within_half_a_step() {
    let cols = 33;
    let mut rng = Rng::new(3);
    let mut x = rng.normals(5 * cols, 3.0);
    x[2 * cols..3 * cols].fill(0.0);
    let q = quantize_activations_per_token(&x, cols).unwrap();
    assert_eq!(q.scales[2], 1.0);
    for (i, (&v, &c)) in x.iter().zip(&q.codes).enumerate() {
        let s = q.scales[i / cols];
        assert!((v - f32::from(c) * s).abs() <= s / 2.0 * 1.0001, "{v} {c} {s}");
    }
    x[7] = f32::NAN;
    assert!(quantize_activations_per_token(&x, cols).is_err());
}
