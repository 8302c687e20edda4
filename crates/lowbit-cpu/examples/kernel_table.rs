//! Prints the kernel throughput table of `benches/README.md`: matrix-vector GB/s of weight bytes
//! (with enough copies of each matrix rotated that every call reads from DRAM, like a model's
//! decode step) against the triad bandwidth measured in the same run, and matrix-matrix GFLOP/s at
//! m = 512, and SmolLM2-135M's linear layers end to end (matmul only); `w8a8` compares the W8A8
//! kernels (`Int8Linear`: int8 activations, i32 sums) with the int8-weight/f32-activation ones.
//! `cargo run --release --example kernel_table [-- quick] [gemv] [gemm] [smollm2] [w8a8]`, with
//! `RAYON_NUM_THREADS=2`. The "CPU share" column is the process's CPU time over 2 cores x wall
//! time: below 100% (50% for single-threaded calls) other work on the machine took the cores.

#[path = "bandwidth.rs"]
mod bandwidth;

use lowbit_core::{codebook, rtn, Bits, Codebook, CodebookScheme, Granularity, IntScheme, ScaleDtype};
use lowbit_cpu::{Int8Linear, KernelLevel, Linear, WeightKind};
use std::time::Instant;

/// Bytes of weights rotated through per measurement (beyond the 32 MiB L3).
const ROTATE_BYTES: usize = 256 << 20;

#[derive(Clone, Copy)]
enum Fmt {
    F32,
    F16,
    Bf16,
    Int(Bits, Granularity, bool),
    Nf4,
}

impl Fmt {
    fn name(self) -> String {
        match self {
            Fmt::F32 => "f32".into(),
            Fmt::F16 => "f16".into(),
            Fmt::Bf16 => "bf16".into(),
            Fmt::Int(b, g, sym) => {
                let g = match g {
                    Granularity::Group(g) => format!("g{g}"),
                    Granularity::PerChannel => "per-channel".into(),
                    Granularity::PerTensor => "per-tensor".into(),
                };
                format!("int{} {g} {}", b.get(), if sym { "sym" } else { "asym" })
            }
            Fmt::Nf4 => "nf4 b64".into(),
        }
    }

    fn build(self, rows: usize, cols: usize, seed: u64) -> Linear {
        let mut s = seed;
        let w: Vec<f32> = (0..rows * cols)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
            })
            .collect();
        let kind = match self {
            Fmt::F32 => WeightKind::F32(w),
            Fmt::F16 => WeightKind::F16(w.iter().map(|&v| half::f16::from_f32(v)).collect()),
            Fmt::Bf16 => WeightKind::Bf16(w.iter().map(|&v| half::bf16::from_f32(v)).collect()),
            Fmt::Int(bits, granularity, symmetric) => {
                let scheme =
                    IntScheme { bits, symmetric, granularity, scale_dtype: ScaleDtype::F16, clip: Default::default() };
                WeightKind::Quant(rtn::quantize(&w, &[rows, cols], scheme).unwrap())
            }
            Fmt::Nf4 => {
                let scheme = CodebookScheme { codebook: Codebook::Nf4, block_size: 64, double_quant: false };
                WeightKind::Quant(codebook::quantize(&w, &[rows, cols], scheme).unwrap())
            }
        };
        Linear::new(rows, cols, kind).unwrap()
    }
}

/// Process CPU time (user + system) in seconds, from `/proc/self/stat` (10 ms ticks).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// Median seconds per call of `f` (after one warm-up) over at least `min_reps` calls and 0.3 s,
/// and the share of 2 cores the process got meanwhile (other work on the machine lowers it).
fn time(min_reps: usize, mut f: impl FnMut(usize)) -> (f64, f64) {
    f(0);
    let (c0, t0) = (cpu_seconds(), Instant::now());
    let mut t = Vec::new();
    while t.len() < min_reps || t0.elapsed().as_secs_f64() < 0.3 {
        let s = Instant::now();
        f(t.len());
        t.push(s.elapsed().as_secs_f64());
    }
    let share = (cpu_seconds() - c0) / t0.elapsed().as_secs_f64() / 2.0;
    t.sort_by(f64::total_cmp);
    (t[t.len() / 2], share)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "quick");
    let parts = ["gemv", "gemm", "smollm2", "w8a8"];
    let only = |part: &str| !args.iter().any(|a| parts.contains(&a.as_str())) || args.iter().any(|a| a == part);
    let bw = bandwidth::triad_gbs(2);
    println!("threads: {}, triad bandwidth (2 threads): {bw:.1} GB/s", rayon_threads());
    let levels: Vec<KernelLevel> = [KernelLevel::Scalar, KernelLevel::Avx2, KernelLevel::Avx512]
        .into_iter()
        .filter(|&l| l <= KernelLevel::detect())
        .collect();
    let g128 = Granularity::Group(128);
    let mut fmts = vec![
        Fmt::Int(Bits::B4, g128, false),
        Fmt::Int(Bits::B4, g128, true),
        Fmt::Int(Bits::B8, Granularity::PerChannel, true),
        Fmt::F16,
        Fmt::F32,
        Fmt::Bf16,
        Fmt::Int(Bits::B3, g128, false),
        Fmt::Int(Bits::B2, g128, false),
        Fmt::Nf4,
    ];
    let mut shapes = vec![(4096, 4096), (4096, 11008), (576, 576), (1536, 576), (576, 1536), (49152, 576)];
    if quick {
        fmts.truncate(3);
        shapes.truncate(3);
    }
    if only("gemv") {
        gemv_table(&fmts, &shapes, &levels, bw);
    }
    if only("gemm") {
        gemm_table(&fmts, quick, &levels);
    }
    if only("smollm2") {
        smollm2(&fmts[..3], &levels);
    }
    if only("w8a8") {
        w8a8_table(quick, &levels, bw);
    }
}

/// W8A8 (`Int8Linear`: activations quantized per token to int8, i32 sums) next to the same int8
/// per-channel symmetric weights with f32 activations (`Linear`): GEMV over copies rotated
/// through DRAM (GB/s of the bytes each kernel reads) and GEMM at m = 512 (GOP/s, 2 per
/// multiply-add, activation quantization included).
fn w8a8_table(quick: bool, levels: &[KernelLevel], bw: f64) {
    let fmt = Fmt::Int(Bits::B8, Granularity::PerChannel, true);
    let shapes: &[(usize, usize)] =
        if quick { &[(1536, 576), (576, 1536)] } else { &[(1536, 576), (576, 1536), (576, 576), (4096, 4096)] };
    println!("\n| kernel | level | shape (rows x cols) | m | MB | time | GB/s | GOP/s | CPU share |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for &(rows, cols) in shapes {
        let one = fmt.build(rows, cols, 1);
        let copies = ROTATE_BYTES.div_ceil(one.nbytes()).clamp(1, 64);
        let f32act: Vec<Linear> =
            std::iter::once(one).chain((1..copies).map(|i| fmt.build(rows, cols, i as u64 + 1))).collect();
        let w8a8: Vec<Int8Linear> = f32act.iter().map(|l| Int8Linear::from_linear(l).unwrap()).collect();
        for m in [1, 512] {
            let x: Vec<f32> = (0..m * cols).map(|i| (i as f32 * 0.37).sin()).collect();
            let mut out = vec![0.0; m * rows];
            let ops = 2.0 * (m * rows * cols) as f64;
            let row = |name: &str, level: KernelLevel, bytes: usize, (s, share): (f64, f64)| {
                let time = if m == 1 { format!("{:.1} µs", s * 1e6) } else { format!("{:.2} ms", s * 1e3) };
                println!(
                    "| {name} | {} | {rows}x{cols} | {m} | {:.2} | {time} | {:.1} | {:.1} | {:.0}% |",
                    level.name(),
                    bytes as f64 / 1e6,
                    bytes as f64 / s / 1e9,
                    ops / s / 1e9,
                    100.0 * share
                );
            };
            for &level in levels {
                if level == KernelLevel::Scalar && (m > 1 || rows * cols > 4096 * 4096) {
                    continue;
                }
                let n = if m == 1 { copies } else { 1 };
                let reps = if m == 1 { 3 * copies.max(5) } else { 5 };
                let t = time(reps, |i| f32act[i % n].forward_with(level, &x, m, &mut out).unwrap());
                row("int8 per-channel x f32", level, f32act[0].nbytes(), t);
                let t = time(reps, |i| w8a8[i % n].forward_with(level, &x, m, &mut out).unwrap());
                row("W8A8 int8 x int8", level, w8a8[0].nbytes(), t);
            }
        }
    }
    println!("(triad bandwidth {bw:.1} GB/s)");
}

/// Matmul-only throughput of SmolLM2-135M's linear layers (30 blocks of q, k, v, o, gate, up,
/// down, plus the 49152x576 head, all in one format): decode (m = 1, weights rotated through
/// DRAM as in a real decode step, since the model is larger than L3) and prefill (m = 512).
fn smollm2(fmts: &[Fmt], levels: &[KernelLevel]) {
    const LAYERS: usize = 30;
    let block = [(576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536)];
    let head = (49152, 576);
    let macs: usize = LAYERS * block.iter().map(|(r, c)| r * c).sum::<usize>() + head.0 * head.1;
    println!("\nSmolLM2-135M linear layers: {:.1} M multiply-adds per token", macs as f64 / 1e6);
    println!("\n| format (blocks and head) | level | MB | decode tok/s (matmul only) | prefill 512 tok/s (matmul only) | prefill GFLOP/s | CPU share |");
    println!("|---|---|---|---|---|---|---|");
    for &fmt in fmts {
        let mut seed = 0;
        let mut mk = |(r, c): (usize, usize)| {
            seed += 1;
            fmt.build(r, c, seed)
        };
        let layers: Vec<Vec<Linear>> = (0..LAYERS).map(|_| block.iter().map(|&s| mk(s)).collect()).collect();
        let head_lin = mk(head);
        let mb = (layers.iter().flatten().map(Linear::nbytes).sum::<usize>() + head_lin.nbytes()) as f64 / 1e6;
        for &level in levels.iter().filter(|&&l| l != KernelLevel::Scalar) {
            let run = |m: usize| {
                let mut outs = 0.0;
                for lin in layers.iter().flatten().chain(std::iter::once(&head_lin)) {
                    let x = vec![0.5f32; m * lin.cols()];
                    let mut out = vec![0.0; m * lin.rows()];
                    lin.forward_with(level, &x, m, &mut out).unwrap();
                    outs += out[0];
                }
                std::hint::black_box(outs);
            };
            let (dec, share1) = time(5, |_| run(1));
            let (pre, share2) = time(2, |_| run(512));
            println!(
                "| {} | {} | {mb:.1} | {:.0} | {:.0} | {:.0} | {:.0}% / {:.0}% |",
                fmt.name(),
                level.name(),
                1.0 / dec,
                512.0 / pre,
                2.0 * (512 * macs) as f64 / pre / 1e9,
                100.0 * share1,
                100.0 * share2
            );
        }
    }
}

fn gemv_table(fmts: &[Fmt], shapes: &[(usize, usize)], levels: &[KernelLevel], bw: f64) {
    println!("\n| format | level | shape (rows x cols) | MB | GEMV µs | GB/s | % of triad | CPU share |");
    println!("|---|---|---|---|---|---|---|---|");
    for &fmt in fmts {
        for &(rows, cols) in shapes {
            let one = fmt.build(rows, cols, 1);
            let copies = ROTATE_BYTES.div_ceil(one.nbytes()).clamp(1, 64);
            let lins: Vec<Linear> =
                std::iter::once(one).chain((1..copies).map(|i| fmt.build(rows, cols, i as u64 + 1))).collect();
            let x: Vec<f32> = (0..cols).map(|i| (i as f32 * 0.37).sin()).collect();
            let mut out = vec![0.0; rows];
            for &level in levels {
                if level == KernelLevel::Scalar && rows * cols > 4096 * 4096 {
                    continue;
                }
                let (s, share) =
                    time(3 * copies.max(5), |i| lins[i % copies].forward_with(level, &x, 1, &mut out).unwrap());
                let gbs = lins[0].nbytes() as f64 / s / 1e9;
                println!(
                    "| {} | {} | {rows}x{cols} | {:.2} | {:.1} | {gbs:.1} | {:.0}% | {:.0}% |",
                    fmt.name(),
                    level.name(),
                    lins[0].nbytes() as f64 / 1e6,
                    s * 1e6,
                    100.0 * gbs / bw,
                    100.0 * share
                );
            }
        }
    }
}

fn gemm_table(fmts: &[Fmt], quick: bool, levels: &[KernelLevel]) {
    let m = 512;
    println!("\n| format | level | shape (rows x cols) | m | GEMM ms | GFLOP/s | CPU share |");
    println!("|---|---|---|---|---|---|---|");
    let gemm_shapes = if quick { vec![(576, 576)] } else { vec![(576, 576), (1536, 576), (576, 1536), (4096, 4096)] };
    for &fmt in fmts.iter().filter(|f| !matches!(f, Fmt::Bf16)) {
        for &(rows, cols) in &gemm_shapes {
            let lin = fmt.build(rows, cols, 1);
            let x: Vec<f32> = (0..m * cols).map(|i| (i as f32 * 0.37).sin()).collect();
            let mut out = vec![0.0; m * rows];
            for &level in levels.iter().filter(|&&l| l != KernelLevel::Scalar) {
                let (s, share) = time(5, |_| lin.forward_with(level, &x, m, &mut out).unwrap());
                println!(
                    "| {} | {} | {rows}x{cols} | {m} | {:.2} | {:.0} | {:.0}% |",
                    fmt.name(),
                    level.name(),
                    s * 1e3,
                    2.0 * (m * rows * cols) as f64 / s / 1e9,
                    100.0 * share
                );
            }
        }
    }
}

fn rayon_threads() -> String {
    std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "rayon default".into())
}
