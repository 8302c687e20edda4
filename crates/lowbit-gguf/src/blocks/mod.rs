//! ggml's block formats, one file each, laid out byte for byte as llama.cpp's `ggml-common.h`
//! and converted as its `ggml-quants.c` does (`dequantize_row_*`, `quantize_row_*_ref`).
//!
//! Every scale in a block is an IEEE half (`d`, `m`, `dmin`) except Q8_K's f32 `d`; all
//! multi-byte fields are little-endian. Each block is `#[repr(C)]` and [`bytemuck::Pod`], so a
//! slice of file bytes is a slice of blocks; its size is checked at compile time.
//!
//! The types llama.cpp quantizes with an importance matrix (Q4_0, Q4_1, Q5_0, Q5_1, Q2_K-Q6_K) also implement [`WeightedBlock`]: its `quantize_row_*_impl` with `quant_weights`, a
//! different search from the reference quantizer's even when every importance is 1 (llama.cpp
//! calls the reference quantizer only when no importance matrix is given).
//!
//! The reference quantizers follow the C code's float operations in order, one rounding per
//! operation (Rust never contracts `a * b + c` into an FMA), so they reproduce a llama.cpp build
//! made without FP contraction, and gguf-py's numpy quantizers, bit for bit.

/// Declares a ggml block: the `#[repr(C)]`, [`bytemuck::Pod`] struct, its size checked at compile
/// time, and its [`BlockLayout`] (`Name: GGML_TYPE, weights per block, N bytes`).
macro_rules! ggml_block {
    (
        $(#[$meta:meta])*
        pub struct $name:ident: $ty:ident, $len:expr, $bytes:literal bytes {
            $($(#[$fmeta:meta])* pub $field:ident: $fty:ty,)*
        }
    ) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: $fty,)*
        }
        const _: () = assert!(std::mem::size_of::<$name>() == $bytes);
        impl $crate::blocks::BlockLayout for $name {
            const TYPE: $crate::GgmlType = $crate::GgmlType::$ty;
            const LEN: usize = $len;
        }
    };
}

mod kquants;
mod q2_k;
mod q3_k;
mod q4_0;
mod q4_1;
mod q4_k;
mod q5_0;
mod q5_1;
mod q5_k;
mod q6_k;
mod q8_0;
mod q8_k;

pub use kquants::QK_K;
pub use q2_k::BlockQ2K;
pub use q3_k::BlockQ3K;
pub use q4_0::{BlockQ4_0, QK4_0};
pub use q4_1::{BlockQ4_1, QK4_1};
pub use q4_k::BlockQ4K;
pub use q5_0::{BlockQ5_0, QK5_0};
pub use q5_1::{BlockQ5_1, QK5_1};
pub use q5_k::BlockQ5K;
pub use q6_k::BlockQ6K;
pub use q8_0::{BlockQ8_0, QK8_0};
pub use q8_k::BlockQ8K;

use crate::GgmlType;

/// What identifies a ggml block type: written by `ggml_block!` with the struct.
pub trait BlockLayout: bytemuck::Pod {
    /// The ggml type this block belongs to.
    const TYPE: GgmlType;
    /// Weights per block.
    const LEN: usize;
}

/// A ggml block: `LEN` weights in `size_of::<Self>()` bytes, and its conversions.
pub trait GgmlBlock: BlockLayout {
    /// Writes the block's `LEN` weights to `out[..LEN]` (ggml's `dequantize_row_*`).
    fn dequantize(&self, out: &mut [f32]);
    /// Quantizes `x[..LEN]` as llama.cpp's `quantize_row_*_ref` does.
    fn quantize(x: &[f32]) -> Self;
}

/// A ggml block with llama.cpp's importance-weighted quantizer (`quantize_row_*_impl` given
/// `quant_weights`: one importance per column of the row, an imatrix's mean x^2 of the input).
pub trait WeightedBlock: GgmlBlock {
    /// Quantizes `x[..LEN]` minimizing the error weighted by the importances `qw[..LEN]`.
    /// `row_sigma2` is the whole row's mean x^2, which the 32-weight types use (the k-quants
    /// take theirs from the super-block).
    fn quantize_weighted(x: &[f32], qw: &[f32], row_sigma2: f32) -> Self;
}

/// llama.cpp's weights for the 32-weight types: `qw * sqrt(sigma2 + x^2)`, `sigma2` the row's
/// mean x^2.
pub(crate) fn block_weights(x: &[f32], qw: &[f32], row_sigma2: f32) -> [f32; 32] {
    std::array::from_fn(|j| qw[j] * (row_sigma2 + x[j] * x[j]).sqrt())
}

/// The first element of largest magnitude, sign kept (the `max` of ggml's symmetric quantizers).
fn signed_absmax(x: &[f32]) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if amax < v.abs() {
            amax = v.abs();
            max = v;
        }
    }
    max
}

/// The largest element, or 0 when none is positive (the super-block maxima of the K-quants).
fn positive_max(x: &[f32]) -> f32 {
    x.iter().fold(0f32, |m, &v| if v > m { v } else { m })
}

/// `(min, max)` of `x`, as ggml's quantizers with a minimum scan it.
fn min_max(x: &[f32]) -> (f32, f32) {
    x.iter().fold((f32::MAX, -f32::MAX), |(lo, hi), &v| (if v < lo { v } else { lo }, if v > hi { v } else { hi }))
}

/// Dequantizes whole blocks of `B` from bytes at any alignment.
pub(crate) fn dequantize_blocks<B: GgmlBlock>(src: &[u8], out: &mut [f32]) {
    let size = std::mem::size_of::<B>();
    match bytemuck::try_cast_slice::<u8, B>(src) {
        Ok(blocks) => blocks.iter().zip(out.chunks_exact_mut(B::LEN)).for_each(|(b, y)| b.dequantize(y)),
        // Unaligned input (a byte slice from anywhere): copy each block out first.
        Err(_) => src
            .chunks_exact(size)
            .zip(out.chunks_exact_mut(B::LEN))
            .for_each(|(c, y)| bytemuck::pod_read_unaligned::<B>(c).dequantize(y)),
    }
}

/// Quantizes whole blocks of `B` into bytes.
pub(crate) fn quantize_blocks<B: GgmlBlock>(src: &[f32], out: &mut [u8]) {
    let size = std::mem::size_of::<B>();
    src.chunks_exact(B::LEN)
        .zip(out.chunks_exact_mut(size))
        .for_each(|(x, o)| o.copy_from_slice(bytemuck::bytes_of(&B::quantize(x))));
}

/// Quantizes rows of `n_per_row` weights (a whole number of blocks) with one importance per
/// column, `qw.len() == n_per_row` (both checked by the caller).
pub(crate) fn quantize_rows_weighted<B: WeightedBlock>(src: &[f32], qw: &[f32], out: &mut [u8]) {
    let size = std::mem::size_of::<B>();
    let n_per_row = qw.len();
    let row_bytes = n_per_row / B::LEN * size;
    for (row, o) in src.chunks_exact(n_per_row).zip(out.chunks_exact_mut(row_bytes)) {
        let mut sum_x2 = 0f32;
        for &v in row {
            sum_x2 += v * v;
        }
        let sigma2 = sum_x2 / n_per_row as f32;
        for ((x, w), o) in row.chunks_exact(B::LEN).zip(qw.chunks_exact(B::LEN)).zip(o.chunks_exact_mut(size)) {
            o.copy_from_slice(bytemuck::bytes_of(&B::quantize_weighted(x, w, sigma2)));
        }
    }
}
