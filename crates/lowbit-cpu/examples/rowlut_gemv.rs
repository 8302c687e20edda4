//! Matrix-vector speed of SqueezeLLM's row codebooks (3 and 4 bits, with 0.5% sparse outliers
//! and without) on SmolLM2-135M's shapes, f32 activations, per level, back to back with plain
//! INT4 g128 in the same run: the best of many calls in µs, the ratio to INT4 g128 at the same
//! level, and the load average beside them (the machine may be shared).
//! `cargo run --release -p lowbit-cpu --example rowlut_gemv`.

use lowbit_core::{rowlut, rtn, Bits, IntScheme, QTensor, RowLutScheme, SparseOutliers};
use lowbit_cpu::{Activations, KernelLevel, Linear, WeightKind};
use std::time::Instant;

/// Uniform row tables at `bits`, plus `pct`% outliers spread over the matrix.
fn rowlut_like(w: &[f32], rows: usize, cols: usize, bits: Bits, pct: f64) -> QTensor {
    let q = rowlut::quantize(w, &[rows, cols], RowLutScheme { bits }).unwrap();
    if pct == 0.0 {
        return q;
    }
    let every = (100.0 / pct) as usize;
    let mut e: Vec<(usize, usize, f32)> =
        (0..rows * cols).step_by(every).map(|i| (i / cols, (i * 7) % cols, 0.01)).collect();
    e.sort_by_key(|x| (x.0, x.1));
    e.dedup_by_key(|x| (x.0, x.1));
    q.with_outliers(SparseOutliers::from_entries(rows, cols, &e).unwrap()).unwrap()
}

fn best_us(lin: &Linear, level: KernelLevel, x: &[f32], out: &mut [f32]) -> f64 {
    lin.forward_activations(level, Activations::F32, x, 1, out).unwrap();
    let mut best = f64::MAX;
    for _ in 0..300 {
        let t = Instant::now();
        lin.forward_activations(level, Activations::F32, x, 1, out).unwrap();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best * 1e6
}

fn main() {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!("load average: {}", load.split_whitespace().take(3).collect::<Vec<_>>().join(" "));
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
        let int4 = Linear::new(
            rows,
            cols,
            WeightKind::Quant(rtn::quantize(&w, &[rows, cols], IntScheme::group(Bits::B4, 128)).unwrap()),
        )
        .unwrap();
        let cases = [
            ("rowlut4", rowlut_like(&w, rows, cols, Bits::B4, 0.0)),
            ("rowlut4 +0.5%", rowlut_like(&w, rows, cols, Bits::B4, 0.5)),
            ("rowlut3", rowlut_like(&w, rows, cols, Bits::B3, 0.0)),
            ("rowlut3 +0.5%", rowlut_like(&w, rows, cols, Bits::B3, 0.5)),
        ];
        let mut out = vec![0f32; rows];
        for &level in &levels {
            let base = best_us(&int4, level, &x, &mut out);
            println!("{rows:>5}x{cols:<5} {:<7} {:<14} {base:>8.1} µs", level.name(), "int4 g128");
            for (name, q) in &cases {
                let lin = Linear::new(rows, cols, WeightKind::Quant(q.clone())).unwrap();
                let t = best_us(&lin, level, &x, &mut out);
                println!(
                    "{rows:>5}x{cols:<5} {:<7} {name:<14} {t:>8.1} µs  x{:.2} of int4 g128  {:.3} bpw",
                    level.name(),
                    t / base,
                    q.bits_per_weight()
                );
            }
        }
    }
}
