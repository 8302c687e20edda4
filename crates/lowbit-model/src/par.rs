//! Parallel loops that fall back to sequential ones without the `parallel` feature.

/// Runs `f(index, chunk)` over `chunk`-sized pieces of `out`, in parallel when possible.
pub(crate) fn for_each_chunk<F>(out: &mut [f32], chunk: usize, f: F)
where
    F: Fn(usize, &mut [f32]) + Sync + Send,
{
    #[cfg(feature = "parallel")]
    {
        use rayon::prelude::*;
        out.par_chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i, c));
    }
    #[cfg(not(feature = "parallel"))]
    {
        out.chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i, c));
    }
}
