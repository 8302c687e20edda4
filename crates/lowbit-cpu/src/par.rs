//! Parallel loops that fall back to sequential ones without the `parallel` feature.

/// Multiply-adds below which a matrix-matrix product runs on the calling thread.
#[cfg(feature = "parallel")]
pub(crate) const PARALLEL_MIN_MACS: usize = 1 << 20;

/// Runs `f(index, chunk)` over `chunk`-sized pieces of `out`, on the rayon pool when `par`.
pub(crate) fn for_chunks<T: Send>(out: &mut [T], chunk: usize, par: bool, f: impl Fn(usize, &mut [T]) + Sync + Send) {
    #[cfg(feature = "parallel")]
    if par {
        use rayon::prelude::*;
        out.par_chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i, c));
        return;
    }
    let _ = par;
    out.chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i, c));
}

/// Worker threads of the pool (1 without the `parallel` feature).
pub(crate) fn threads() -> usize {
    #[cfg(feature = "parallel")]
    {
        rayon::current_num_threads()
    }
    #[cfg(not(feature = "parallel"))]
    {
        1
    }
}
