//! W8A8 (`Int8Linear`): every kernel level this CPU runs against the scalar reference
//! `forward_scalar`, bit for bit (the sums are exact integers and the rescaling is the same two
//! f32 multiplies), and the reference against the f32 product with the dequantized weights.

mod common;

use common::{levels, Rng};
use lowbit_core::{codebook, rtn, Bits, ClipSearch, Codebook, CodebookScheme, Granularity, IntScheme, ScaleDtype};
use lowbit_cpu::{scalar, CpuError, Int8Linear, KernelLevel, Linear, WeightKind, W8A8_MAX_COLS};
use proptest::prelude::*;

/// Allowed |W8A8 - f32 product| beyond the exact bound of per-token activation rounding
/// (`sx / 2 * Σ_c |w[r, c]|`), relative to `Σ_c |x w|`: f32 rounding of the reference's sum and
/// of the two rescaling multiplies.
const F32_SLACK: f64 = 1e-5;
/// Allowed relative Frobenius error of W8A8 against the f32 product with the same (dequantized)
/// weights, for activations uniform in [-1, 1) without outliers: per-token int8 rounding adds
/// noise of rms `absmax / 127 / sqrt(12)`, about 0.4% of the activations' rms.
const W8A8_REL_FROBENIUS: f64 = 0.01;

/// Symmetric 8-bit weights, the ones W8A8 takes.
fn int8_sym(granularity: Granularity, scale_dtype: ScaleDtype) -> IntScheme {
    IntScheme { bits: Bits::B8, symmetric: true, granularity, scale_dtype, clip: ClipSearch::MinMax }
}

fn per_channel(rows: usize, cols: usize, w: &[f32], scale_dtype: ScaleDtype) -> Int8Linear {
    let scheme = int8_sym(Granularity::PerChannel, scale_dtype);
    Int8Linear::from_qtensor(&rtn::quantize(w, &[rows, cols], scheme).unwrap()).unwrap()
}

/// Every level's output equals the reference's, bit for bit (NaN never expected).
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
fn every_level_is_bit_exact_on_odd_shapes() {
    let mut rng = Rng(11);
    for rows in [1, 3, 16, 17, 33, 100] {
        for cols in [1, 3, 4, 7, 16, 63, 64, 65, 100, 577] {
            let dt = if (rows + cols) % 2 == 0 { ScaleDtype::F16 } else { ScaleDtype::F32 };
            let lin = per_channel(rows, cols, &rng.vec(rows * cols), dt);
            for m in [1, 2, 3, 7, 12, 13, 33] {
                check_exact(&lin, &rng.vec(m * cols), m, "rtn");
            }
        }
    }
}

#[test]
fn full_code_range_including_minus_128() {
    // codes from QTensor::from_parts or other solvers may use the whole range, -128 included
    let mut rng = Rng(12);
    for (rows, cols) in [(5, 9), (31, 130), (48, 257)] {
        let mut codes = rng.codes(rows * cols);
        codes[0] = -128;
        codes[rows * cols - 1] = 127;
        let scales: Vec<f32> = (0..rows).map(|_| rng.f().abs() + 1e-3).collect();
        let lin = Int8Linear::from_i8(rows, cols, &codes, &scales).unwrap();
        for r in 0..rows {
            for c in 0..cols {
                assert_eq!(lin.code(r, c), codes[r * cols + c]);
            }
        }
        for m in [1, 2, 7, 33] {
            // activations at ±absmax give codes ±127: the extremes of every product
            let mut x = rng.vec(m * cols);
            for t in 0..m {
                x[t * cols] = if t % 2 == 0 { 1.0 } else { -1.0 };
            }
            check_exact(&lin, &x, m, "raw codes");
        }
    }
}

#[test]
fn large_shapes_cover_threading() {
    // Small m split by panels through per-chunk outputs, large m split by tokens (with several
    // rayon threads); m = 1 is split by panels above 4 MiB of weights.
    let mut rng = Rng(13);
    for (rows, cols, ms) in [(1536, 576, &[1, 5, 40, 77][..]), (576, 1536, &[1, 5, 40]), (2100, 2048, &[1, 3])] {
        let lin = per_channel(rows, cols, &rng.vec(rows * cols), ScaleDtype::F16);
        for &m in ms {
            check_exact(&lin, &rng.vec(m * cols), m, "large");
        }
    }
}

#[test]
fn extreme_activations() {
    let mut rng = Rng(14);
    let (rows, cols) = (37, 75);
    let lin = per_channel(rows, cols, &rng.vec(rows * cols), ScaleDtype::F32);
    let m = 6;
    let mut x = rng.vec(m * cols);
    // token 0: all zeros (scale 1, output exactly 0, no division by zero)
    x[..cols].fill(0.0);
    // token 1: one huge outlier, the rest rounds to zero
    x[cols + 5] = 1e30;
    // token 2: the largest finite values
    for (j, v) in x[2 * cols..3 * cols].iter_mut().enumerate() {
        *v = if j % 3 == 0 { f32::MAX } else { -f32::MAX / 3.0 };
    }
    // token 3: subnormals only (absmax / 127 may underflow)
    for (j, v) in x[3 * cols..4 * cols].iter_mut().enumerate() {
        *v = f32::from_bits(j as u32 % 97) * if j % 2 == 0 { 1.0 } else { -1.0 };
    }
    // token 4: -0.0 everywhere
    x[4 * cols..5 * cols].fill(-0.0);
    // token 5: values exactly halfway between codes (ties round to even)
    for (j, v) in x[5 * cols..6 * cols].iter_mut().enumerate() {
        *v = (j as f32 - 37.0) + 0.5;
    }
    check_exact(&lin, &x, m, "extreme");
    let mut out = vec![f32::NAN; m * rows];
    lin.forward(&x, m, &mut out).unwrap();
    assert!(out[..rows].iter().all(|&v| v == 0.0), "a zero row gives zeros: {:?}", &out[..rows]);
    assert!(out[4 * rows..5 * rows].iter().all(|&v| v == 0.0));
    assert!(out[rows..2 * rows].iter().all(|v| v.is_finite()));
    assert_eq!(scalar::act_scale_i8(&[0.0; 4]), Some(1.0));
    assert_eq!(scalar::quantize_i8(2.5, 1.0), 2);
    assert_eq!(scalar::quantize_i8(-3.5, 1.0), -4);
    assert_eq!(scalar::quantize_i8(1e9, 1.0), 127);
    assert_eq!(scalar::quantize_i8(-1e9, 1.0), -127);
}

#[test]
fn non_finite_activations_are_errors() {
    let mut rng = Rng(15);
    let (rows, cols, m) = (20, 33, 4);
    let lin = per_channel(rows, cols, &rng.vec(rows * cols), ScaleDtype::F16);
    for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        let mut x = rng.vec(m * cols);
        x[2 * cols + 7] = bad;
        let mut out = vec![0.0; m * rows];
        let check = |r: lowbit_cpu::Result<()>| match r {
            Err(CpuError::NonFiniteActivation { index, .. }) => assert_eq!(index, 2 * cols + 7),
            other => panic!("want NonFiniteActivation, got {other:?}"),
        };
        check(lin.forward_scalar(&x, m, &mut out));
        for level in levels() {
            check(lin.forward_with(level, &x, m, &mut out));
        }
    }
}

/// `y = x · Wᵀ` in f64 with the dequantized weights.
fn product_f64(x: &[f32], w: &[f32], m: usize, rows: usize, cols: usize) -> Vec<f64> {
    let mut y = vec![0.0; m * rows];
    for t in 0..m {
        for r in 0..rows {
            y[t * rows + r] = (0..cols).map(|c| f64::from(x[t * cols + c]) * f64::from(w[r * cols + c])).sum();
        }
    }
    y
}

#[test]
fn close_to_the_f32_product() {
    let mut rng = Rng(16);
    for (rows, cols, m) in [(64, 576, 9), (17, 100, 33), (96, 1536, 4)] {
        let lin = per_channel(rows, cols, &rng.vec(rows * cols), ScaleDtype::F16);
        let w = lin.dequantize();
        let mut x = rng.vec(m * cols);
        // a SmoothQuant-style outlier channel in one token
        x[3] *= 20.0;
        let mut got = vec![0.0; m * rows];
        lin.forward(&x, m, &mut got).unwrap();
        let want = product_f64(&x, &w, m, rows, cols);
        let (mut err2, mut ref2) = (0.0f64, 0.0f64);
        for t in 0..m {
            let xt = &x[t * cols..(t + 1) * cols];
            let sx = f64::from(scalar::act_scale_i8(xt).unwrap());
            for r in 0..rows {
                let wr = &w[r * cols..(r + 1) * cols];
                let wabs: f64 = wr.iter().map(|&v| f64::from(v.abs())).sum();
                let mag: f64 = xt.iter().zip(wr).map(|(&a, &b)| f64::from((a * b).abs())).sum();
                let (g, e) = (f64::from(got[t * rows + r]), want[t * rows + r]);
                let bound = 0.5 * sx * wabs + F32_SLACK * mag;
                assert!((g - e).abs() <= bound, "[{rows}x{cols}] out[{t},{r}]: {g} vs {e}, bound {bound}");
                // the outlier token's error is covered by the bound above only: its scale is 20x
                if t > 0 {
                    err2 += (g - e).powi(2);
                    ref2 += e * e;
                }
            }
        }
        let rel = (err2 / ref2).sqrt();
        assert!(rel < W8A8_REL_FROBENIUS, "[{rows}x{cols}] relative error {rel}");
    }
}

#[test]
fn per_tensor_is_per_channel_with_one_scale() {
    let mut rng = Rng(17);
    let (rows, cols) = (19, 40);
    let w = rng.vec(rows * cols);
    let scheme = int8_sym(Granularity::PerTensor, ScaleDtype::F32);
    let q = rtn::quantize(&w, &[rows, cols], scheme).unwrap();
    let lin = Int8Linear::from_qtensor(&q).unwrap();
    assert!(lin.scales().iter().all(|&s| s == lin.scales()[0]));
    assert_eq!(lin.dequantize(), q.dequantize());
    check_exact(&lin, &rng.vec(3 * cols), 3, "per-tensor");
}

#[test]
fn from_linear_and_dequantize_match_the_qtensor() {
    let mut rng = Rng(18);
    let (rows, cols) = (33, 130);
    let scheme = int8_sym(Granularity::PerChannel, ScaleDtype::F16);
    let q = rtn::quantize(&rng.vec(rows * cols), &[rows, cols], scheme).unwrap();
    let lin = Linear::new(rows, cols, WeightKind::Quant(q.clone())).unwrap();
    let i8lin = Int8Linear::from_linear(&lin).unwrap();
    assert_eq!((i8lin.rows(), i8lin.cols()), (rows, cols));
    assert_eq!(i8lin.dequantize(), q.dequantize());
    assert_eq!(i8lin.nbytes(), 3 * 33 * 64 + 4 * rows);
}

#[test]
fn unsupported_weights_and_shapes_are_errors() {
    let mut rng = Rng(19);
    let w = rng.vec(8 * 64);
    let int = |bits, symmetric, granularity| {
        let s = IntScheme { bits, symmetric, granularity, scale_dtype: ScaleDtype::F16, clip: ClipSearch::MinMax };
        rtn::quantize(&w, &[8, 64], s).unwrap()
    };
    for q in [
        int(Bits::B8, false, Granularity::PerChannel),
        int(Bits::B8, true, Granularity::Group(32)),
        int(Bits::B4, true, Granularity::PerChannel),
        codebook::quantize(
            &w,
            &[8, 64],
            CodebookScheme { codebook: Codebook::Nf4, block_size: 64, double_quant: false },
        )
        .unwrap(),
    ] {
        assert!(matches!(Int8Linear::from_qtensor(&q), Err(CpuError::Unsupported { .. })), "{:?}", q.scheme());
    }
    let dense = Linear::new(8, 64, WeightKind::F32(w.clone())).unwrap();
    assert!(matches!(Int8Linear::from_linear(&dense), Err(CpuError::Unsupported { .. })));
    assert!(Int8Linear::from_i8(2, 3, &[0; 5], &[1.0; 2]).is_err());
    assert!(Int8Linear::from_i8(2, 3, &[0; 6], &[1.0; 3]).is_err());
    assert!(Int8Linear::from_i8(2, 3, &[0; 6], &[1.0, f32::NAN]).is_err());
    assert!(Int8Linear::from_i8(0, 3, &[], &[]).is_err());
    let long = W8A8_MAX_COLS + 1;
    assert!(matches!(Int8Linear::from_i8(1, long, &vec![0; long], &[1.0]), Err(CpuError::Shape { .. })));
    let lin = Int8Linear::from_i8(2, 3, &[1, 2, 3, 4, 5, 6], &[1.0, 0.5]).unwrap();
    let mut out = vec![0.0; 2];
    assert!(lin.forward(&[0.0; 2], 1, &mut out).is_err());
    assert!(lin.forward(&[0.0; 3], 1, &mut out[..1]).is_err());
    assert!(lin.forward_scalar(&[0.0; 4], 1, &mut out).is_err());
    lin.forward(&[], 0, &mut []).unwrap();
    // x = [127, 0, -127] / 127 -> codes [127, 0, -127]; rows [1,2,3] and [4,5,6]
    lin.forward(&[1.0, 0.0, -1.0], 1, &mut out).unwrap();
    let sx = 1.0f32 / 127.0;
    assert_eq!(out, [(127 - 3 * 127) as f32 * sx * 1.0, (4 * 127 - 6 * 127) as f32 * sx * 0.5]);
    if KernelLevel::detect() < KernelLevel::Avx512 {
        assert!(lin.forward_with(KernelLevel::Avx512, &[1.0; 3], 1, &mut out).is_err());
    }
}

/// The solvers' reference (`lowbit_solvers::smoothquant::matmul_w8a8_ref`) restated: quantize
/// every token, sum codes in i32, rescale.
#[test]
fn reference_is_the_smoothquant_formula() {
    let mut rng = Rng(20);
    let (rows, cols, m) = (9, 50, 5);
    let codes = rng.codes(rows * cols);
    let scales: Vec<f32> = (0..rows).map(|_| rng.f().abs() + 0.01).collect();
    let lin = Int8Linear::from_i8(rows, cols, &codes, &scales).unwrap();
    let x = rng.vec(m * cols);
    let mut got = vec![0.0; m * rows];
    lin.forward(&x, m, &mut got).unwrap();
    for t in 0..m {
        let xt = &x[t * cols..(t + 1) * cols];
        let absmax = xt.iter().fold(0.0f32, |a, v| a.max(v.abs()));
        let xs = if absmax == 0.0 { 1.0 } else { absmax / 127.0 };
        let xq: Vec<i8> = xt.iter().map(|&v| (v / xs).round_ties_even().clamp(-127.0, 127.0) as i8).collect();
        for r in 0..rows {
            let acc = scalar::dot_i8(&xq, &codes[r * cols..(r + 1) * cols]);
            assert_eq!(got[t * rows + r].to_bits(), (acc as f32 * xs * scales[r]).to_bits());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn prop_levels_bit_exact(
        rows in 1usize..80,
        cols in 1usize..300,
        m in 1usize..40,
        seed in any::<u64>(),
        zero_token in any::<bool>(),
        outlier in prop_oneof![Just(1.0f32), Just(1e4f32), Just(1e-30f32)],
    ) {
        let mut rng = Rng(seed);
        let codes = rng.codes(rows * cols);
        let scales: Vec<f32> = (0..rows).map(|_| rng.f() * 0.1).collect();
        let lin = Int8Linear::from_i8(rows, cols, &codes, &scales).unwrap();
        let mut x = rng.vec(m * cols);
        x[0] *= outlier;
        if zero_token {
            x[(m - 1) * cols..].fill(0.0);
        }
        check_exact(&lin, &x, m, "proptest");
    }
}

#[test]
fn linear_in_w8a8_mode_is_int8_linear() {
    let (rows, cols, m) = (37, 70, 5);
    let mut rng = Rng(11);
    let w = rng.vec(rows * cols);
    let x = rng.vec(m * cols);
    let scheme = int8_sym(Granularity::PerChannel, ScaleDtype::F16);
    let q = rtn::quantize(&w, &[rows, cols], scheme).unwrap();
    let mut lin = Linear::new(rows, cols, WeightKind::Quant(q.clone())).unwrap();
    assert!(!lin.int8_activations());
    lin.enable_int8_activations().unwrap();
    assert!(lin.int8_activations());
    let direct = Int8Linear::from_qtensor(&q).unwrap();
    let (mut got, mut want) = (vec![0f32; m * rows], vec![0f32; m * rows]);
    lin.forward(&x, m, &mut got).unwrap();
    direct.forward(&x, m, &mut want).unwrap();
    assert_eq!(got, want);
    lin.forward_scalar(&x, m, &mut got);
    direct.forward_scalar(&x, m, &mut want).unwrap();
    assert_eq!(got, want);
    // 4-bit weights cannot run W8A8.
    let q4 = rtn::quantize(&w, &[rows, cols], IntScheme::group(Bits::B4, 10)).unwrap();
    let mut lin4 = Linear::new(rows, cols, WeightKind::Quant(q4)).unwrap();
    assert!(matches!(lin4.enable_int8_activations(), Err(CpuError::Unsupported { .. })));
}
