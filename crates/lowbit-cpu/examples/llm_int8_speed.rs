//! LLM.int8()'s decomposition against plain W8A8 on SmolLM2-135M's shapes, back to back in one
//! process: decode (m = 1) and prefill (m = 512), without outliers (the scan is the only extra
//! work) and with 1% / 5% of the input columns over the threshold.
//!
//! `cargo run --release -p lowbit-cpu --example llm_int8_speed`

use lowbit_core::{rtn, Bits, ClipSearch, Granularity, IntScheme, ScaleDtype};
use lowbit_cpu::Int8Linear;
use std::time::Instant;

fn main() {
    let scheme = IntScheme {
        bits: Bits::B8,
        symmetric: true,
        granularity: Granularity::PerChannel,
        scale_dtype: ScaleDtype::F32,
        clip: ClipSearch::MinMax,
    };
    println!("| shape | m | outlier columns | plain W8A8 µs | decomposed µs | ratio |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (rows, cols) in [(1536, 576), (576, 1536)] {
        let w: Vec<f32> = (0..rows * cols).map(|i| ((i as f32 * 0.618).fract() - 0.5) * 0.1).collect();
        let plain = Int8Linear::from_qtensor(&rtn::quantize(&w, &[rows, cols], scheme).unwrap()).unwrap();
        let dec = plain.clone().with_outlier_threshold(6.0).unwrap();
        for m in [1usize, 512] {
            for frac in [0.0, 0.01, 0.05] {
                let k = (frac * cols as f64).round() as usize;
                let x: Vec<f32> = (0..m * cols)
                    .map(|i| {
                        let c = i % cols;
                        let v = ((i as f32 * 0.377).fract() - 0.5) * 4.0;
                        if c * 97 % cols < k {
                            8.0 + 5.0 * v.abs()
                        } else {
                            v
                        }
                    })
                    .collect();
                let mut out = vec![0f32; m * rows];
                let reps = if m == 1 { 2000 } else { 20 };
                let time = |lin: &Int8Linear, out: &mut [f32]| {
                    let mut best = f64::INFINITY;
                    for _ in 0..5 {
                        let t = Instant::now();
                        for _ in 0..reps {
                            lin.forward(&x, m, out).unwrap();
                        }
                        best = best.min(t.elapsed().as_secs_f64() * 1e6 / reps as f64);
                    }
                    best
                };
                let (a, b) = (time(&plain, &mut out), time(&dec, &mut out));
                println!("| {rows}x{cols} | {m} | {k} | {a:.1} | {b:.1} | {:.2} |", b / a);
            }
        }
    }
}
