//! Row-parallel iteration that degrades to a plain loop without the `parallel` feature.

/// Calls `f(chunk_index, out_chunk)` for each `chunk_len`-sized chunk of `out`, in parallel when
/// the `parallel` feature is on and the work (`work_elems` weights touched) pays for the threads.
pub(crate) fn for_each_chunk<T: Send>(
    out: &mut [T],
    chunk_len: usize,
    work_elems: usize,
    f: impl Fn(usize, &mut [T]) + Sync + Send,
) {
    if chunk_len == 0 {
        return;
    }
    #[cfg(not(feature = "parallel"))]
    let _ = work_elems;
    #[cfg(feature = "parallel")]
    {
        // Below ~64k elements the rayon fork/join costs more than it saves.
        if work_elems >= 1 << 16 {
            use rayon::prelude::*;
            out.par_chunks_mut(chunk_len).enumerate().for_each(|(i, c)| f(i, c));
            return;
        }
    }
    out.chunks_mut(chunk_len).enumerate().for_each(|(i, c)| f(i, c));
}
