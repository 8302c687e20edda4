//! lowbit-cpu's parallel loops are lowbit-core's (`lowbit_core::par`, the one helper, behind the
//! `parallel` feature); this module adds only the threshold the kernels share.

pub(crate) use lowbit_core::par::{for_each_chunk, for_each_item, pays, threads};

/// Multiply-adds below which a matrix-matrix product runs on the calling thread.
pub(crate) const PARALLEL_MIN_MACS: usize = 1 << 20;
