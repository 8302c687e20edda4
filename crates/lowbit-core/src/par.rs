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

/// Calls `f(row, a_chunk, b_chunk)` for each row, where row `r` owns `a[r*a_len..]` and
/// `b[r*b_len..]` (chunks of those lengths), in parallel where it pays; returns the first
/// error in row order.
pub(crate) fn try_for_each_row<A: Send, B: Send, E: Send>(
    a: &mut [A],
    a_len: usize,
    b: &mut [B],
    b_len: usize,
    work_elems: usize,
    f: impl Fn(usize, &mut [A], &mut [B]) -> Result<(), E> + Sync + Send,
) -> Result<(), E> {
    #[cfg(not(feature = "parallel"))]
    let _ = work_elems;
    #[cfg(feature = "parallel")]
    {
        if work_elems >= 1 << 16 {
            use rayon::prelude::*;
            let results: Vec<Result<(), E>> = a
                .par_chunks_mut(a_len)
                .zip(b.par_chunks_mut(b_len))
                .enumerate()
                .map(|(r, (x, y))| f(r, x, y))
                .collect();
            return results.into_iter().collect();
        }
    }
    a.chunks_mut(a_len).zip(b.chunks_mut(b_len)).enumerate().try_for_each(|(r, (x, y))| f(r, x, y))
}
