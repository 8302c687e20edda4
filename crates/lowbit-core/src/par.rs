//! Data parallelism for every lowbit crate: rayon with the `parallel` feature, plain loops without
//! it (wasm32 without threads), so no other module needs its own `cfg(feature = "parallel")`.
//!
//! Callers decide whether a loop is worth splitting (`par`); without the feature every loop runs
//! on the calling thread whatever they decide.
//!
//! ```
//! use lowbit_core::par;
//!
//! let mut out = vec![0u32; 1000];
//! let split = par::pays(out.len());
//! par::for_each_chunk(&mut out, 100, split, |i, chunk| chunk.fill(i as u32));
//! assert_eq!((out[0], out[999]), (0, 9));
//! let (a, b) = par::join(|| 1 + 1, || 2 * 2);
//! assert_eq!((a, b), (2, 4));
//! ```

/// Whether loops can run on several threads (the `parallel` feature is on).
pub const ENABLED: bool = cfg!(feature = "parallel");

/// Elements of work below which a split costs more than it saves: rayon's fork/join wakes the
/// workers, several µs, which is about what one core needs for ~64k simple element updates.
pub const MIN_WORK: usize = 1 << 16;

/// Worker threads: rayon's pool size, or 1 without the `parallel` feature.
pub fn threads() -> usize {
    #[cfg(feature = "parallel")]
    {
        rayon::current_num_threads()
    }
    #[cfg(not(feature = "parallel"))]
    {
        1
    }
}

/// Whether `work` element updates are worth splitting over threads ([`MIN_WORK`] or more, and
/// the `parallel` feature on).
pub fn pays(work: usize) -> bool {
    ENABLED && work >= MIN_WORK
}

/// Calls `f(chunk_index, chunk)` for each `chunk_len`-sized chunk of `out` (the last may be
/// shorter), on the rayon pool when `par`; does nothing when `chunk_len` is 0.
pub fn for_each_chunk<T: Send>(out: &mut [T], chunk_len: usize, par: bool, f: impl Fn(usize, &mut [T]) + Sync + Send) {
    if chunk_len == 0 {
        return;
    }
    #[cfg(feature = "parallel")]
    if par {
        use rayon::prelude::*;
        out.par_chunks_mut(chunk_len).enumerate().for_each(|(i, c)| f(i, c));
        return;
    }
    let _ = par;
    out.chunks_mut(chunk_len).enumerate().for_each(|(i, c)| f(i, c));
}

/// Calls `f(row, a_chunk, b_chunk)` for each row, where row `r` owns `a[r*a_len..]` and
/// `b[r*b_len..]` (chunks of those lengths), on the rayon pool when `par`; returns the error of
/// the first failing row in row order.
pub fn try_for_each_row<A: Send, B: Send, E: Send>(
    a: &mut [A],
    a_len: usize,
    b: &mut [B],
    b_len: usize,
    par: bool,
    f: impl Fn(usize, &mut [A], &mut [B]) -> Result<(), E> + Sync + Send,
) -> Result<(), E> {
    #[cfg(feature = "parallel")]
    if par {
        use rayon::prelude::*;
        let results: Vec<Result<(), E>> =
            a.par_chunks_mut(a_len).zip(b.par_chunks_mut(b_len)).enumerate().map(|(r, (x, y))| f(r, x, y)).collect();
        return results.into_iter().collect();
    }
    let _ = par;
    a.chunks_mut(a_len).zip(b.chunks_mut(b_len)).enumerate().try_for_each(|(r, (x, y))| f(r, x, y))
}

/// Calls `f(item)` for every item, on the rayon pool when `par`.
pub fn for_each_item<T: Send>(items: Vec<T>, par: bool, f: impl Fn(T) + Sync + Send) {
    #[cfg(feature = "parallel")]
    if par {
        use rayon::prelude::*;
        items.into_par_iter().for_each(f);
        return;
    }
    let _ = par;
    items.into_iter().for_each(f);
}

/// Index of the first `chunk_len`-sized chunk of `x` (the last may be shorter) for which `pred`
/// holds, the chunks tested on the rayon pool when `par`.
pub fn position_first_chunk<T: Sync>(
    x: &[T],
    chunk_len: usize,
    par: bool,
    pred: impl Fn(&[T]) -> bool + Sync + Send,
) -> Option<usize> {
    let chunk_len = chunk_len.max(1);
    #[cfg(feature = "parallel")]
    if par {
        use rayon::prelude::*;
        return x.par_chunks(chunk_len).position_first(&pred);
    }
    let _ = par;
    x.chunks(chunk_len).position(pred)
}

/// `(a(), b())`, side by side on the rayon pool with the `parallel` feature.
pub fn join<RA: Send, RB: Send>(a: impl FnOnce() -> RA + Send, b: impl FnOnce() -> RB + Send) -> (RA, RB) {
    #[cfg(feature = "parallel")]
    {
        rayon::join(a, b)
    }
    #[cfg(not(feature = "parallel"))]
    {
        (a(), b())
    }
}
