//! Matrix-vector speed of SmolLM2-135M's decode shapes, f32 against int8 activations, per level:
//! the best of many calls (robust to a busy machine), in µs and GB/s of weight bytes, with the
//! weights rotated through enough copies that they come from DRAM (`--dram`) or not.
//! `cargo run --release -p lowbit-cpu --example decode_gemv [-- --dram]`; `RAYON_NUM_THREADS`
//! sets the threads, `LOWBIT_VNNI=0` measures the AVX2 `vpmaddubsw` kernels on a VNNI CPU.

use lowbit_core::{rtn, Bits, Granularity, IntScheme};
use lowbit_cpu::{Activations, KernelLevel, Linear, WeightKind};
use std::time::Instant;

fn main() {
    let dram = std::env::args().any(|a| a == "--dram");
    let levels: Vec<KernelLevel> =
        [KernelLevel::Avx2, KernelLevel::Avx512].into_iter().filter(|&l| l <= KernelLevel::detect()).collect();
    println!("threads {}  dram {dram}", lowbit_core::par::threads());
    for (rows, cols) in [(576, 576), (1536, 576), (576, 1536), (49152, 576)] {
        let mut s = 1u64;
        let w: Vec<f32> = (0..rows * cols)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.1
            })
            .collect();
        let x: Vec<f32> = w[..cols].iter().map(|v| v * 10.0).collect();
        for (name, scheme) in [
            ("int4 g128", IntScheme::group(Bits::B4, 128)),
            (
                "int8 per-ch",
                IntScheme { symmetric: true, granularity: Granularity::PerChannel, ..IntScheme::group(Bits::B8, 128) },
            ),
        ] {
            let q = rtn::quantize(&w, &[rows, cols], scheme).unwrap();
            let one = Linear::new(rows, cols, WeightKind::Quant(q)).unwrap();
            let copies = if dram { (256usize << 20).div_ceil(one.nbytes()).max(2) } else { 1 };
            let lins: Vec<Linear> = (0..copies).map(|_| one.clone()).collect();
            let mut out = vec![0f32; rows];
            for &level in &levels {
                for acts in [Activations::F32, Activations::Int8] {
                    // warm up (builds the int8 repack)
                    for l in &lins {
                        l.forward_activations(level, acts, &x, 1, &mut out).unwrap();
                    }
                    let reps = (20_000_000 / (rows * cols)).clamp(20, 2000);
                    let mut best = f64::MAX;
                    for r in 0..reps {
                        let l = &lins[r % copies];
                        let t = Instant::now();
                        l.forward_activations(level, acts, &x, 1, &mut out).unwrap();
                        best = best.min(t.elapsed().as_secs_f64());
                    }
                    println!(
                        "{rows:>6}x{cols:<5} {name:<12} {:<7} {:<5} {:>8.1} µs {:>6.1} GB/s",
                        level.name(),
                        acts.name(),
                        best * 1e6,
                        one.nbytes() as f64 / best / 1e9
                    );
                }
            }
        }
    }
}
