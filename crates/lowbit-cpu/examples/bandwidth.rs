//! This machine's memory bandwidth: a STREAM-style triad `a[i] = b[i] + s * c[i]` over arrays far
//! larger than the caches, split over threads (default 2; `cargo run --release --example
//! bandwidth -- THREADS`). Bytes counted as STREAM does: 3 arrays x 4 bytes per element (the
//! write-allocate read of `a` is not counted).

use std::time::Instant;

/// Elements per array (128 MiB of f32 each).
const N: usize = 32 << 20;
const REPS: usize = 10;

/// Best triad bandwidth in GB/s over `REPS` runs on `threads` threads.
pub fn triad_gbs(threads: usize) -> f64 {
    let mut a = vec![0f32; N];
    let b = vec![1f32; N];
    let c = vec![2f32; N];
    let per = N.div_ceil(threads);
    let mut best = f64::INFINITY;
    for _ in 0..REPS {
        let t = Instant::now();
        std::thread::scope(|s| {
            for ((a, b), c) in a.chunks_mut(per).zip(b.chunks(per)).zip(c.chunks(per)) {
                s.spawn(move || {
                    for ((a, b), c) in a.iter_mut().zip(b).zip(c) {
                        *a = b + 3.0 * c;
                    }
                });
            }
        });
        best = best.min(t.elapsed().as_secs_f64());
        std::hint::black_box(&mut a);
    }
    (3 * 4 * N) as f64 / best / 1e9
}

#[allow(dead_code)]
fn main() {
    let threads = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(2);
    println!("triad, {threads} threads: {:.1} GB/s", triad_gbs(threads));
}
