//! Criterion benchmarks of `Linear::forward` per weight format and kernel level: matrix-vector
//! throughput in bytes of weights (decode; SmolLM2-135M's shapes, with f32 and with int8
//! activations where the format has int8-activation kernels) and matrix-matrix throughput in
//! multiply-adds x 2 (prefill, m = 512). The README table comes from `examples/kernel_table.rs`, which also
//! measures DRAM-bound GEMV by rotating copies and the machine's triad bandwidth. `w8a8_*` puts
//! the W8A8 kernels (`Int8Linear`, int8 activations) next to int8 weights with f32 activations.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lowbit_core::{codebook, rtn, Bits, Codebook, CodebookScheme, Granularity, IntScheme};
use lowbit_cpu::{Activations, Int8Linear, KernelLevel, Linear, WeightKind};
use std::time::Duration;

fn weights(n: usize) -> Vec<f32> {
    (0..n).map(|i| ((i as f32 * 0.618).fract() - 0.5) * 0.1).collect()
}

fn formats(rows: usize, cols: usize) -> Vec<(&'static str, Linear)> {
    let w = weights(rows * cols);
    let int = |bits, granularity, symmetric| {
        let scheme = IntScheme { symmetric, granularity, ..IntScheme::group(bits, 128) };
        WeightKind::Quant(rtn::quantize(&w, &[rows, cols], scheme).unwrap())
    };
    let nf4 = CodebookScheme { codebook: Codebook::Nf4, block_size: 64, double_quant: false };
    let lin = |k| Linear::new(rows, cols, k).unwrap();
    vec![
        ("int4_g128_asym", lin(int(Bits::B4, Granularity::Group(128), false))),
        ("int4_g128_sym", lin(int(Bits::B4, Granularity::Group(128), true))),
        ("int8_per_channel", lin(int(Bits::B8, Granularity::PerChannel, true))),
        ("f16", lin(WeightKind::F16(w.iter().map(|&v| half::f16::from_f32(v)).collect()))),
        ("f32", lin(WeightKind::F32(w.clone()))),
        ("nf4_b64", lin(WeightKind::Quant(codebook::quantize(&w, &[rows, cols], nf4).unwrap()))),
    ]
}

fn levels() -> Vec<KernelLevel> {
    [KernelLevel::Avx2, KernelLevel::Avx512].into_iter().filter(|&l| l <= KernelLevel::detect()).collect()
}

fn gemv(c: &mut Criterion) {
    for (rows, cols) in [(576, 576), (1536, 576), (576, 1536), (49152, 576), (4096, 4096)] {
        let mut g = c.benchmark_group(format!("gemv_{rows}x{cols}"));
        g.warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1)).sample_size(20);
        let x = weights(cols);
        let mut out = vec![0.0; rows];
        for (name, lin) in formats(rows, cols) {
            g.throughput(Throughput::Bytes(lin.nbytes() as u64));
            let int8 = lin.forward_int8_reference(&x, 1, &mut out).is_ok();
            for level in levels() {
                for acts in [Activations::F32, Activations::Int8] {
                    if acts == Activations::Int8 && !int8 {
                        continue;
                    }
                    g.bench_function(BenchmarkId::new(format!("{name}/{}", acts.name()), level.name()), |b| {
                        b.iter(|| lin.forward_activations(level, acts, &x, 1, &mut out).unwrap())
                    });
                }
            }
        }
        g.finish();
    }
}

fn gemm(c: &mut Criterion) {
    let (rows, cols, m) = (1536, 576, 512);
    let mut g = c.benchmark_group(format!("gemm_{rows}x{cols}_m{m}"));
    g.warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1)).sample_size(10);
    g.throughput(Throughput::Elements(2 * (m * rows * cols) as u64));
    let x = weights(m * cols);
    let mut out = vec![0.0; m * rows];
    for (name, lin) in formats(rows, cols) {
        for level in levels() {
            g.bench_function(BenchmarkId::new(name, level.name()), |b| {
                b.iter(|| lin.forward_activations(level, Activations::F32, &x, m, &mut out).unwrap())
            });
        }
    }
    g.finish();
}

/// The same int8 per-channel symmetric weights as `Linear` (f32 activations) and `Int8Linear`.
fn int8_pair(rows: usize, cols: usize) -> (Linear, Int8Linear) {
    let scheme = IntScheme { symmetric: true, granularity: Granularity::PerChannel, ..IntScheme::group(Bits::B8, 128) };
    let q = rtn::quantize(&weights(rows * cols), &[rows, cols], scheme).unwrap();
    (Linear::new(rows, cols, WeightKind::Quant(q.clone())).unwrap(), Int8Linear::from_qtensor(&q).unwrap())
}

fn w8a8_gemv(c: &mut Criterion) {
    for (rows, cols) in [(4096, 4096), (1536, 576), (576, 1536)] {
        let mut g = c.benchmark_group(format!("w8a8_gemv_{rows}x{cols}"));
        g.warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1)).sample_size(20);
        let x = weights(cols);
        let mut out = vec![0.0; rows];
        let (f32act, w8a8) = int8_pair(rows, cols);
        for level in levels() {
            g.throughput(Throughput::Bytes(f32act.nbytes() as u64));
            g.bench_function(BenchmarkId::new("int8_per_channel_f32", level.name()), |b| {
                b.iter(|| f32act.forward_activations(level, Activations::F32, &x, 1, &mut out).unwrap())
            });
            g.throughput(Throughput::Bytes(w8a8.nbytes() as u64));
            g.bench_function(BenchmarkId::new("w8a8", level.name()), |b| {
                b.iter(|| w8a8.forward_with(level, &x, 1, &mut out).unwrap())
            });
        }
        g.finish();
    }
}

fn w8a8_gemm(c: &mut Criterion) {
    let m = 512;
    for (rows, cols) in [(1536, 576), (576, 1536)] {
        let mut g = c.benchmark_group(format!("w8a8_gemm_{rows}x{cols}_m{m}"));
        g.warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1)).sample_size(10);
        g.throughput(Throughput::Elements(2 * (m * rows * cols) as u64));
        let x = weights(m * cols);
        let mut out = vec![0.0; m * rows];
        let (f32act, w8a8) = int8_pair(rows, cols);
        for level in levels() {
            g.bench_function(BenchmarkId::new("int8_per_channel_f32", level.name()), |b| {
                b.iter(|| f32act.forward_activations(level, Activations::F32, &x, m, &mut out).unwrap())
            });
            g.bench_function(BenchmarkId::new("w8a8", level.name()), |b| {
                b.iter(|| w8a8.forward_with(level, &x, m, &mut out).unwrap())
            });
        }
        g.finish();
    }
}

criterion_group!(benches, gemv, gemm, w8a8_gemv, w8a8_gemm);
criterion_main!(benches);
