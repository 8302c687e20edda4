//! Times the Hessian build and the GPTQ solve on SmolLM2-sized layers (576x576 and 1536x576,
//! i.e. `[out, in]` = q_proj-like and gate/up-like, plus 576x1536 down_proj-like), 65536 tokens.
//!
//! `cargo run -p lowbit-solvers --release --example gptq_timing [TOKENS]`

use lowbit_core::{Bits, IntScheme};
use lowbit_solvers::{gptq_quantize, GptqConfig, Hessian, HessianPrecision};
use std::time::Instant;

fn main() {
    let tokens: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(65536);
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    };
    for (rows, cols) in [(576usize, 576usize), (1536, 576), (576, 1536)] {
        // Correlated activations: a shared component plus channel noise, in batches of 2048 tokens.
        let batch = 2048;
        let x: Vec<f32> = (0..batch * cols).map(|i| next() + 0.5 * ((i / cols) % 7) as f32 * next()).collect();
        let w: Vec<f32> = (0..rows * cols).map(|_| next() * 0.1).collect();
        for precision in [HessianPrecision::F64, HessianPrecision::F32Chunks] {
            let mut h = Hessian::with_precision(cols, precision);
            let t = Instant::now();
            for _ in 0..tokens / batch {
                h.add_batch(&x, batch).unwrap();
            }
            let build = t.elapsed().as_secs_f64();
            let gflop = (tokens * cols * (cols + 1)) as f64 / 1e9; // lower triangle, 2 flops per MAC
            println!(
                "{rows}x{cols} tokens={tokens} Hessian {precision:?}: {build:.3} s ({:.1} GFLOP/s)",
                gflop / build
            );
            if precision == HessianPrecision::F64 {
                for act_order in [false, true] {
                    let cfg = GptqConfig {
                        act_order,
                        static_groups: act_order,
                        ..GptqConfig::new(IntScheme::group(Bits::B4, 128))
                    };
                    let t = Instant::now();
                    let out = gptq_quantize(&w, rows, cols, &h, &cfg).unwrap();
                    println!(
                        "{rows}x{cols} GPTQ W4 g128 act_order={act_order}: {:.3} s (report {:.3} s, loss {:.4e})",
                        t.elapsed().as_secs_f64(),
                        out.report.seconds,
                        out.report.loss
                    );
                }
            }
        }
    }
}
