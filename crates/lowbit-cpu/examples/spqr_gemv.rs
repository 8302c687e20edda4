//! Matrix-vector speed of SpQR's dense-and-sparse weights on SmolLM2-135M's shapes, f32
//! activations, per level, back to back with plain INT4 g128: the best of many calls, in µs.
//! `cargo run --release -p lowbit-cpu --example spqr_gemv`.

use lowbit_core::pack::pack;
use lowbit_core::{rtn, Bits, IntScheme, QParams, QTensor, QuantStats, SparseOutliers};
use lowbit_cpu::{Activations, KernelLevel, Linear, WeightKind};
use std::time::Instant;

/// RTN codes at `bits`, group 16, with 3-bit statistics in groups of 16 rows and `pct`% outliers.
fn spqr_like(w: &[f32], rows: usize, cols: usize, bits: Bits, pct: f64) -> QTensor {
    let g = 16;
    let gpr = cols / g;
    let q = rtn::quantize(w, &[rows, cols], IntScheme::group(bits, g)).unwrap();
    let p = q.group_params().unwrap();
    let scales: Vec<f32> = (0..rows * gpr).map(|i| p[(i % rows) * gpr + i / rows].scale).collect();
    let zeros: Vec<f32> = (0..rows * gpr).map(|i| f32::from(p[(i % rows) * gpr + i / rows].zero)).collect();
    let stats = QuantStats::quantize(rows, gpr, Bits::B3, 16, &scales, &zeros).unwrap();
    let codes = lowbit_core::pack::unpack(q.codes(), bits, rows * cols).unwrap();
    let t = QTensor::from_parts(
        vec![rows, cols],
        *q.scheme(),
        pack(&codes, bits).unwrap(),
        QParams::IntStats(Box::new(stats)),
    )
    .unwrap();
    let every = (100.0 / pct) as usize;
    let entries: Vec<(usize, usize, f32)> =
        (0..rows * cols).step_by(every).map(|i| (i / cols, (i * 7) % cols, 0.01)).collect();
    let mut e = entries;
    e.sort_by_key(|x| (x.0, x.1));
    e.dedup_by_key(|x| (x.0, x.1));
    t.with_outliers(SparseOutliers::from_entries(rows, cols, &e).unwrap()).unwrap()
}

fn main() {
    let levels: Vec<KernelLevel> = [KernelLevel::Scalar, KernelLevel::Avx2, KernelLevel::Avx512]
        .into_iter()
        .filter(|&l| l <= KernelLevel::detect())
        .collect();
    for (rows, cols) in [(1536, 576), (576, 1536)] {
        let mut s = 1u64;
        let w: Vec<f32> = (0..rows * cols)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
            })
            .collect();
        let x: Vec<f32> = w[..cols].iter().map(|v| v * 10.0).collect();
        let cases = [
            ("int4 g128", rtn::quantize(&w, &[rows, cols], IntScheme::group(Bits::B4, 128)).unwrap()),
            ("int4 g16", rtn::quantize(&w, &[rows, cols], IntScheme::group(Bits::B4, 16)).unwrap()),
            ("int3 g16", rtn::quantize(&w, &[rows, cols], IntScheme::group(Bits::B3, 16)).unwrap()),
            ("spqr int3 g16 +1%", spqr_like(&w, rows, cols, Bits::B3, 1.0)),
            ("spqr int4 g16 +1%", spqr_like(&w, rows, cols, Bits::B4, 1.0)),
            ("spqr int4 g16 +0%", spqr_like(&w, rows, cols, Bits::B4, 0.0001)),
        ];
        for &level in &levels {
            for (name, q) in &cases {
                let lin = Linear::new(rows, cols, WeightKind::Quant(q.clone())).unwrap();
                let mut out = vec![0f32; rows];
                lin.forward_activations(level, Activations::F32, &x, 1, &mut out).unwrap();
                let mut best = f64::MAX;
                for _ in 0..300 {
                    let t = Instant::now();
                    lin.forward_activations(level, Activations::F32, &x, 1, &mut out).unwrap();
                    best = best.min(t.elapsed().as_secs_f64());
                }
                println!(
                    "{rows:>5}x{cols:<5} {:<7} {name:<18} {:>8.1} µs  {:.3} bpw",
                    level.name(),
                    best * 1e6,
                    q.bits_per_weight()
                );
            }
        }
    }
}
