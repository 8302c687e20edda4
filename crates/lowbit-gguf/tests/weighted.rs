//! The importance-weighted quantizers (`quantize_weighted`): they lower the importance-weighted
//! error, which is what they are for, and refuse what they cannot quantize. Their bytes are
//! checked against llama.cpp's own in `reference.rs`.

mod common;

use common::Rng;
use lowbit_gguf::{dequantize_to_vec, quantize, quantize_weighted, GgmlType, GgufError};
use proptest::prelude::*;

const WEIGHTED: [GgmlType; 9] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
];

/// Σ qw[col] (x - x̂)² over every row.
fn weighted_error(ty: GgmlType, x: &[f32], bytes: &[u8], qw: &[f32]) -> f64 {
    let back = dequantize_to_vec(ty, bytes, x.len()).unwrap();
    x.iter().zip(&back).enumerate().map(|(i, (a, b))| f64::from(qw[i % qw.len()]) * f64::from(a - b).powi(2)).sum()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// With importances spread over decades (as an imatrix's are), the weighted quantizer's
    /// weighted error over a matrix is below the reference quantizer's.
    #[test]
    fn weighted_quantizer_lowers_the_weighted_error(
        seed in any::<u64>(),
        t in 0..WEIGHTED.len(),
        rows in 2usize..6,
        blocks in 1usize..3,
        spread in 1.5f32..3.0,
    ) {
        let (ty, cols) = (WEIGHTED[t], 256 * blocks);
        let mut rng = Rng::new(seed);
        let x: Vec<f32> = (0..rows * cols).map(|_| rng.normal(0.05)).collect();
        let qw: Vec<f32> = (0..cols).map(|_| (spread * rng.normal(1.0)).exp()).collect();
        let ours = weighted_error(ty, &x, &quantize_weighted(ty, &x, &qw).unwrap(), &qw);
        let plain = weighted_error(ty, &x, &quantize(ty, &x).unwrap(), &qw);
        prop_assert!(ours < plain, "{ty:?} {rows}x{cols}: weighted {ours:.4e} >= unweighted {plain:.4e}");
    }
}

#[test]
fn refuses_what_it_cannot_quantize() {
    let x = vec![0.5f32; 512];
    let nwq = |r| matches!(r, Err(GgufError::NoWeightedQuantizer { .. }));
    // llama.cpp's Q8_0 ignores an importance matrix; F32 has no blocks to weight.
    assert!(nwq(quantize_weighted(GgmlType::Q8_0, &x, &[1.0; 256])));
    assert!(nwq(quantize_weighted(GgmlType::F32, &x, &[1.0; 256])));
    // A row of 100 is not whole Q4_K blocks; 512 weights are not whole rows of 384.
    assert!(matches!(quantize_weighted(GgmlType::Q4K, &x[..500], &[1.0; 100]), Err(GgufError::NotWholeBlocks { .. })));
    assert!(matches!(quantize_weighted(GgmlType::Q4_0, &x, &[1.0; 384]), Err(GgufError::Length { .. })));
    assert!(matches!(
        quantize_weighted(GgmlType::Q4_0, &x, &[]),
        Err(GgufError::NotWholeBlocks { .. }) | Err(GgufError::Length { .. })
    ));
    // Whole rows: one row per 256 importances.
    assert_eq!(quantize_weighted(GgmlType::Q4K, &x, &[1.0; 256]).unwrap().len(), 2 * 144);
}

#[test]
fn zero_importance_columns_and_zero_rows_stay_finite() {
    let mut rng = Rng::new(5);
    let mut x: Vec<f32> = (0..3 * 256).map(|_| rng.normal(0.1)).collect();
    x[256..512].fill(0.0);
    let mut qw = vec![1.0f32; 256];
    qw[..64].fill(0.0);
    for ty in WEIGHTED {
        let back = dequantize_to_vec(ty, &quantize_weighted(ty, &x, &qw).unwrap(), x.len()).unwrap();
        assert!(back.iter().all(|v| v.is_finite()), "{ty:?}");
        assert!(back[256..512].iter().all(|&v| v == 0.0), "{ty:?}: a zero row comes back zero");
    }
}
