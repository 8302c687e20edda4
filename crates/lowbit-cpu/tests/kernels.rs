//! Every kernel at every level this CPU runs, against the scalar reference `forward_scalar`
//! (f32 activations), and for weights with int8-activation kernels, against
//! `forward_int8_reference` bit for bit.
//!
//! Float sums may differ from the reference only by reassociation: the error allowed for each
//! output is a named multiple of `Σ|x·w|` (the dequantized weights' magnitudes times the
//! activations'), the natural scale of f32 rounding error in a dot product.

mod common;

use common::{levels, Rng};
use half::{bf16, f16};
use lowbit_core::{
    codebook, rtn, Bits, ClipSearch, Codebook, CodebookScheme, Granularity, IntScheme, QParams, QTensor, ScaleDtype,
    Scales, ZeroPoints,
};
use lowbit_cpu::{Activations, KernelLevel, Linear, WeightKind};

/// Allowed |fast - reference| / Σ|x·w| for f32 accumulation in another order. Both sides round
/// every term and partial sum to f32 (2^-24 each); a few thousand terms stay far below 1e-5.
const F32_SUM_TOL: f32 = 1e-5;

const ROWS: [usize; 5] = [1, 3, 17, 33, 100];
const MS: [usize; 5] = [1, 2, 5, 12, 17];

/// Checks `lin` at every level and every m against the reference; `dense` is the f32 weight.
fn check(lin: &Linear, dense: &[f32], rng: &mut Rng, what: &str) {
    check_ms(lin, dense, rng, what, &MS);
}

fn check_ms(lin: &Linear, dense: &[f32], rng: &mut Rng, what: &str, ms: &[usize]) {
    let (rows, cols) = (lin.rows(), lin.cols());
    for &m in ms {
        let x = rng.vec(m * cols);
        let mut want = vec![0.0; m * rows];
        lin.forward_scalar(&x, m, &mut want);
        let mut want_int8 = vec![0.0; m * rows];
        let int8 = lin.forward_int8_reference(&x, m, &mut want_int8).is_ok();
        for level in levels() {
            if int8 {
                let mut got = vec![f32::NAN; m * rows];
                lin.forward_activations(level, Activations::Int8, &x, m, &mut got).unwrap();
                assert_eq!(got, want_int8, "{what} int8 activations, level {} [{rows}x{cols}] m={m}", level.name());
            }
            let mut got = vec![f32::NAN; m * rows];
            lin.forward_activations(level, Activations::F32, &x, m, &mut got).unwrap();
            for i in 0..m {
                for r in 0..rows {
                    let mag: f32 =
                        x[i * cols..][..cols].iter().zip(&dense[r * cols..][..cols]).map(|(a, b)| (a * b).abs()).sum();
                    let (g, w) = (got[i * rows + r], want[i * rows + r]);
                    assert!(
                        (g - w).abs() <= F32_SUM_TOL * mag + f32::MIN_POSITIVE,
                        "{what} level {} [{rows}x{cols}] m={m} out[{i},{r}]: got {g}, want {w} (Σ|xw| {mag})",
                        level.name()
                    );
                }
            }
        }
    }
}

#[test]
fn dense_f32_f16_bf16() {
    let mut rng = Rng(1);
    for rows in ROWS {
        for cols in [1, 7, 16, 33, 100, 577] {
            let w = rng.vec(rows * cols);
            let lin = Linear::new(rows, cols, WeightKind::F32(w.clone())).unwrap();
            check(&lin, &w, &mut rng, "f32");
            let h: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
            let hd: Vec<f32> = h.iter().map(|v| v.to_f32()).collect();
            check(&Linear::new(rows, cols, WeightKind::F16(h)).unwrap(), &hd, &mut rng, "f16");
            let b: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
            let bd: Vec<f32> = b.iter().map(|v| v.to_f32()).collect();
            check(&Linear::new(rows, cols, WeightKind::Bf16(b)).unwrap(), &bd, &mut rng, "bf16");
        }
    }
}

fn int_case(
    rng: &mut Rng,
    rows: usize,
    cols: usize,
    bits: Bits,
    symmetric: bool,
    granularity: Granularity,
    scale_dtype: ScaleDtype,
) {
    let w = rng.vec(rows * cols);
    let scheme = IntScheme { bits, symmetric, granularity, scale_dtype, clip: ClipSearch::MinMax };
    let q = rtn::quantize(&w, &[rows, cols], scheme).unwrap();
    let dense = q.dequantize();
    let lin = Linear::new(rows, cols, WeightKind::Quant(q)).unwrap();
    check(&lin, &dense, rng, &format!("int{} sym={symmetric} {granularity:?} {scale_dtype:?}", bits.get()));
}

/// [`int_case`] with float zero points (HQQ's): RTN's integer zeros moved by a fraction of a step
/// in `[-0.5, 0.5)`, stored as f16 or f32 like the scales.
fn float_zero_case(rng: &mut Rng, rows: usize, cols: usize, bits: Bits, granularity: Granularity, dt: ScaleDtype) {
    let w = rng.vec(rows * cols);
    let scheme = IntScheme { bits, symmetric: false, granularity, scale_dtype: dt, clip: ClipSearch::MinMax };
    let q = rtn::quantize(&w, &[rows, cols], scheme).unwrap();
    let QParams::Int { scales, zeros: Some(z) } = q.params().clone() else { unreachable!("asymmetric") };
    let moved = (0..z.len()).map(|i| z.get(i) + (rng.next() % 1024) as f32 / 1024.0 - 0.5);
    let zeros = ZeroPoints::Float(Scales::from_f32(moved, dt));
    let q = QTensor::from_parts(
        q.shape().to_vec(),
        *q.scheme(),
        q.codes().to_vec(),
        QParams::Int { scales, zeros: Some(zeros) },
    )
    .unwrap();
    let dense = q.dequantize();
    let lin = Linear::new(rows, cols, WeightKind::Quant(q)).unwrap();
    let mut out = vec![0.0; rows];
    assert!(lin.forward_int8_reference(&rng.vec(cols), 1, &mut out).is_err(), "float zeros have no int8 path");
    check(&lin, &dense, rng, &format!("int{} float zeros {granularity:?} {dt:?}", bits.get()));
}

#[test]
fn int_float_zero_points() {
    let mut rng = Rng(7);
    for bits in [Bits::B2, Bits::B3, Bits::B4, Bits::B8] {
        for (rows, cols, g) in [(3, 64, 32), (17, 256, 64), (33, 576, 128), (5, 120, 24), (100, 224, 96)] {
            let dt = if rows % 2 == 0 { ScaleDtype::F32 } else { ScaleDtype::F16 };
            float_zero_case(&mut rng, rows, cols, bits, Granularity::Group(g), dt);
        }
        float_zero_case(&mut rng, 17, 100, bits, Granularity::PerChannel, ScaleDtype::F16);
        float_zero_case(&mut rng, 3, 96, bits, Granularity::PerTensor, ScaleDtype::F32);
    }
}

/// Every integer width, asymmetric then symmetric.
fn int_schemes() -> impl Iterator<Item = (Bits, bool)> {
    [Bits::B2, Bits::B3, Bits::B4, Bits::B8].into_iter().flat_map(|bits| [(bits, false), (bits, true)])
}

#[test]
fn int_group_wise_all_bits() {
    let mut rng = Rng(2);
    for (bits, symmetric) in int_schemes() {
        for g in [32, 64, 128] {
            for (i, rows) in ROWS.into_iter().enumerate() {
                let cols = g * [1, 2, 3, 5, 9][i];
                let dt = if i % 2 == 0 { ScaleDtype::F16 } else { ScaleDtype::F32 };
                int_case(&mut rng, rows, cols, bits, symmetric, Granularity::Group(g), dt);
            }
        }
    }
}

#[test]
fn int_partial_last_group() {
    // docs/format.md: a group size that does not divide the row leaves a short last group
    // (SmolLM2's 576-wide rows at g = 128: 4 x 128 + 64).
    let mut rng = Rng(6);
    for (bits, symmetric) in int_schemes() {
        for (rows, cols, g) in [(3, 576, 128), (17, 96, 64), (33, 160, 128), (1, 32, 64), (100, 224, 96)] {
            let dt = if rows % 2 == 0 { ScaleDtype::F32 } else { ScaleDtype::F16 };
            int_case(&mut rng, rows, cols, bits, symmetric, Granularity::Group(g), dt);
        }
    }
}

#[test]
fn int_per_channel_per_tensor_and_odd_groups() {
    let mut rng = Rng(3);
    for (bits, symmetric) in int_schemes() {
        for (rows, cols) in [(1, 8), (3, 96), (17, 100), (33, 256), (100, 40)] {
            for dt in [ScaleDtype::F16, ScaleDtype::F32] {
                int_case(&mut rng, rows, cols, bits, symmetric, Granularity::PerChannel, dt);
                int_case(&mut rng, rows, cols, bits, symmetric, Granularity::PerTensor, dt);
            }
        }
        // group sizes that are not a multiple of 32, and a 3-bit row that is not byte aligned
        int_case(&mut rng, 17, 48, bits, symmetric, Granularity::Group(16), ScaleDtype::F16);
        int_case(&mut rng, 5, 120, bits, symmetric, Granularity::Group(24), ScaleDtype::F32);
    }
    int_case(&mut rng, 3, 7, Bits::B3, false, Granularity::PerChannel, ScaleDtype::F16);
}

#[test]
fn nf4_fp4_with_and_without_double_quant() {
    let mut rng = Rng(4);
    for codebook in [Codebook::Nf4, Codebook::Fp4] {
        for double_quant in [false, true] {
            for (rows, cols, block_size) in
                [(1, 64, 64), (3, 96, 64), (17, 128, 64), (33, 192, 128), (100, 64, 32), (5, 50, 64), (7, 64, 48)]
            {
                let w = rng.vec(rows * cols);
                let scheme = CodebookScheme { codebook, block_size, double_quant };
                let q = codebook::quantize(&w, &[rows, cols], scheme).unwrap();
                let dense = q.dequantize();
                let lin = Linear::new(rows, cols, WeightKind::Quant(q)).unwrap();
                check(&lin, &dense, &mut rng, &format!("{codebook:?} dq={double_quant} block {block_size}"));
            }
        }
    }
}

#[test]
fn large_blocked_shapes() {
    // long rows are blocked over k (> 2048 columns) and many rows split over threads
    let mut rng = Rng(5);
    int_case(&mut rng, 70, 4096 + 128, Bits::B4, false, Granularity::Group(128), ScaleDtype::F16);
    int_case(&mut rng, 40, 2560, Bits::B8, true, Granularity::PerChannel, ScaleDtype::F32);
    let w = rng.vec(300 * 640);
    let lin = Linear::new(300, 640, WeightKind::F32(w.clone())).unwrap();
    check(&lin, &w, &mut rng, "f32 large");
    // large m: split over rows of x between threads (when there are several)
    let scheme = IntScheme::group(Bits::B4, 128);
    let w = rng.vec(200 * 576);
    let q = rtn::quantize(&w, &[200, 576], scheme).unwrap();
    let dense = q.dequantize();
    let lin = Linear::new(200, 576, WeightKind::Quant(q)).unwrap();
    check_ms(&lin, &dense, &mut rng, "int4 g128 large m", &[100, 131]);
}

#[test]
fn shape_errors_and_levels() {
    let lin = Linear::new(2, 3, WeightKind::F32(vec![0.0; 6])).unwrap();
    let mut out = vec![0.0; 2];
    assert!(lin.forward(&[0.0; 2], 1, &mut out).is_err());
    assert!(lin.forward(&[0.0; 3], 1, &mut out[..1]).is_err());
    assert!(Linear::new(2, 3, WeightKind::F32(vec![0.0; 5])).is_err());
    for level in levels() {
        lin.forward_with(level, &[1.0; 3], 1, &mut out).unwrap();
    }
    if KernelLevel::detect() < KernelLevel::Avx512 {
        assert!(lin.forward_with(KernelLevel::Avx512, &[1.0; 3], 1, &mut out).is_err());
    }
}

/// Random sparse outliers of a `[rows, cols]` matrix, about one weight in `every`.
fn random_outliers(rng: &mut Rng, rows: usize, cols: usize, every: u64) -> lowbit_core::SparseOutliers {
    let mut entries = vec![];
    for r in 0..rows {
        for c in 0..cols {
            if rng.next().is_multiple_of(every) {
                entries.push((r, c, 4.0 * rng.f()));
            }
        }
    }
    lowbit_core::SparseOutliers::from_entries(rows, cols, &entries).unwrap()
}

/// SpQR's dense-and-sparse weights: codes with 3-bit quantized scales and float zeros (groups
/// of 16, statistics groups of 16 rows) plus f16 outliers, at every level and every m, against
/// the dequantized reference (codes, decoded statistics and outliers).
#[test]
fn int_quantized_statistics_with_outliers() {
    use lowbit_core::pack::pack;
    use lowbit_core::{QParams, QTensor, QuantStats, Scheme};
    let mut rng = Rng(11);
    for bits in [Bits::B3, Bits::B4] {
        // Groups of 16 (SpQR's; fast at 4 bits on AVX2), and 64 (fast at every width and level).
        for (rows, cols, g) in [
            (1usize, 16usize, 16usize),
            (3, 40, 16),
            (17, 48, 16),
            (33, 100, 16),
            (100, 64, 16),
            (40, 576, 16),
            (19, 192, 64),
        ] {
            let gpr = cols.div_ceil(g);
            let codes: Vec<u8> = (0..rows * cols).map(|_| (rng.next() % (u64::from(bits.maxq()) + 1)) as u8).collect();
            let scales: Vec<f32> = (0..rows * gpr).map(|_| 0.01 + 0.05 * rng.f().abs()).collect();
            let zeros: Vec<f32> = (0..rows * gpr).map(|_| 7.0 + 3.0 * rng.f()).collect();
            let stats = QuantStats::quantize(rows, gpr, Bits::B3, 16, &scales, &zeros).unwrap();
            let scheme = IntScheme { symmetric: false, ..IntScheme::group(bits, g) };
            let q = QTensor::from_parts(
                vec![rows, cols],
                Scheme::Int(scheme),
                pack(&codes, bits).unwrap(),
                QParams::IntStats(Box::new(stats)),
            )
            .unwrap();
            for with in [false, true] {
                let q = if with {
                    q.clone().with_outliers(random_outliers(&mut rng, rows, cols, 50)).unwrap()
                } else {
                    q.clone()
                };
                let dense = q.dequantize();
                let lin = Linear::new(rows, cols, WeightKind::Quant(q)).unwrap();
                check(&lin, &dense, &mut rng, &format!("spqr int{} outliers={with}", bits.get()));
            }
        }
    }
}

/// Outliers beside weights on the fast kernels (x interleaved there, natural for the sparse part)
/// and the int8-activation ones (which leave outlier weights to the f32 path).
#[test]
fn outliers_beside_fast_and_generic_int_kernels() {
    let mut rng = Rng(12);
    for (bits, g, rows, cols) in
        [(Bits::B4, 32, 33, 128), (Bits::B3, 64, 17, 192), (Bits::B8, 32, 5, 96), (Bits::B4, 24, 3, 120)]
    {
        let w = rng.vec(rows * cols);
        let q = rtn::quantize(&w, &[rows, cols], IntScheme::group(bits, g)).unwrap();
        let q = q.with_outliers(random_outliers(&mut rng, rows, cols, 30)).unwrap();
        let dense = q.dequantize();
        let lin = Linear::new(rows, cols, WeightKind::Quant(q)).unwrap();
        assert!(lin.forward_int8_reference(&rng.vec(cols), 1, &mut vec![0.0; rows]).is_err());
        check(&lin, &dense, &mut rng, &format!("int{} g{g} + outliers", bits.get()));
    }
}

/// SqueezeLLM's row codebooks (3- and 4-bit codes into a random, unsorted f16 table per row),
/// with and without sparse outliers, at every level and every m: fast shapes (rows a multiple
/// of the kernels' chunks: 16/32 at 4 bits, 64 at 3 bits), odd ones on the generic path, and
/// long rows blocked over k.
#[test]
fn row_codebooks_with_and_without_outliers() {
    use lowbit_core::{rowlut, RowLutScheme};
    let mut rng = Rng(13);
    for bits in [Bits::B3, Bits::B4] {
        let n = 1usize << bits.get();
        for (rows, cols) in
            [(1usize, 64usize), (3, 16), (17, 32), (33, 192), (100, 64), (5, 576), (7, 100), (4, 7), (9, 2048 + 64)]
        {
            let w = rng.vec(rows * cols);
            let tables: Vec<f32> = (0..rows * n).map(|_| 2.0 * rng.f()).collect();
            let q = rowlut::encode(&w, rows, cols, RowLutScheme { bits }, &tables).unwrap();
            for with in [false, true] {
                let q = if with {
                    q.clone().with_outliers(random_outliers(&mut rng, rows, cols, 40)).unwrap()
                } else {
                    q.clone()
                };
                let dense = q.dequantize();
                let lin = Linear::new(rows, cols, WeightKind::Quant(q)).unwrap();
                check(&lin, &dense, &mut rng, &format!("rowlut{} [{rows}x{cols}] outliers={with}", bits.get()));
            }
        }
    }
}
