//! The kernel table every instruction-set level implements, and the portable (scalar) level.
//!
//! A level is a zero-sized value that can only be obtained on a CPU that runs it, so its methods
//! are safe to call. The driver in [`crate::driver`] is generic over [`Isa`]: blocking, threading
//! and the choice between the fast and the generic path are written once.
//!
//! **Interleaved activation order.** The fast integer and codebook kernels unpack codes with one
//! widening load of `LANES` bytes: lane `j` holds byte `j`, and shifting by `bits * t` gives the
//! codes of elements `c * j + t` (`c = 8 / bits` codes per byte). Instead of shuffling the codes
//! back into order, the activations are permuted once per call into the same order
//! ([`interleave`]): within each chunk of `LANES * c` elements, position `t * LANES + j` holds
//! element `c * j + t`. A dot product does not care about the order of its terms, so kernels and
//! dequantized panels both work in this order.

use half::{bf16, f16};

/// Zero points of a block of integer groups, in code units (integer codes or HQQ-style floats,
/// both as f32: `w = (q - zero) * scale`).
// Read only by the SIMD levels, which exist on x86-64 only for now.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
#[derive(Clone, Copy, Debug)]
pub(crate) enum Zeros<'a> {
    /// One per group, `rows * groups_per_row` in the block.
    PerGroup(&'a [f32]),
    /// The same for every group (symmetric schemes, per-tensor asymmetric).
    Const(f32),
}

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
impl Zeros<'_> {
    #[inline]
    pub(crate) fn get(&self, i: usize) -> f32 {
        match self {
            Zeros::PerGroup(z) => z[i],
            Zeros::Const(z) => *z,
        }
    }
}

/// A block of consecutive rows of a group-wise integer matrix, as the fast kernels see it.
// Read only by the SIMD levels, which exist on x86-64 only for now.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
#[derive(Clone, Copy, Debug)]
pub(crate) struct IntBlock<'a> {
    /// Bits per code: 2, 3, 4 or 8 on the fast path (3 or 4 with row codebooks).
    pub bits: u32,
    /// Packed codes of the block's rows; row `r` starts at `r * row_bytes`.
    pub codes: &'a [u8],
    /// Bytes per row.
    pub row_bytes: usize,
    /// Elements per row.
    pub cols: usize,
    /// Elements per group (a multiple of the kernel's chunk, as is `cols`); the last group of a
    /// row ends at `cols` and may be shorter.
    pub group: usize,
    /// `rows * ceil(cols / group)` scales, f32.
    pub scales: &'a [f32],
    /// Zero points, same indexing as `scales`.
    pub zeros: Zeros<'a>,
    /// Row codebooks (SqueezeLLM): 16 f32 per row of the block, row `r`'s at `16 * r`, replacing
    /// the `(i - zero)` table; the block then has one group per row, scales 1 and zeros 0.
    pub tables: Option<&'a [f32]>,
}

#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
impl IntBlock<'_> {
    /// Groups per row.
    #[inline]
    pub(crate) fn gpr(&self) -> usize {
        self.cols.div_ceil(self.group)
    }
    /// Asserts the bounds a kernel relies on to compute `out[r0..r0 + rows]` from `x`, `chunk`
    /// columns (a divisor of the group) at a time.
    #[inline]
    pub(crate) fn check_gemv(&self, x: &[f32], r0: usize, rows: usize, out: &[f32], chunk: usize) {
        let end = (r0 + rows) * self.gpr();
        assert!(x.len() >= self.cols && self.codes.len() >= (r0 + rows) * self.row_bytes && self.scales.len() >= end);
        assert!(self.tables.is_none_or(|t| t.len() >= 16 * (r0 + rows)));
        assert!(self.group.is_multiple_of(chunk) && self.cols.is_multiple_of(chunk) && out.len() >= r0 + rows);
    }
    /// Asserts the bounds a kernel relies on to dequantize elements `k0..k0 + n` of row `r`,
    /// `chunk` at a time.
    #[inline]
    pub(crate) fn check_dequant(&self, r: usize, k0: usize, n: usize, chunk: usize) {
        assert!(k0.is_multiple_of(chunk) && n.is_multiple_of(chunk) && k0 + n <= self.cols);
        assert!(self.codes.len() >= (r + 1) * self.row_bytes && self.scales.len() >= (r + 1) * self.gpr());
        assert!(self.tables.is_none_or(|t| t.len() >= 16 * (r + 1)));
    }
}

/// A block of consecutive rows of an NF4/FP4 matrix.
// Read only by the SIMD levels, which exist on x86-64 only for now.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
#[derive(Clone, Copy, Debug)]
pub(crate) struct CbBlock<'a> {
    /// Packed 4-bit codes of the block's rows (row `r` at `r * cols / 2`).
    pub codes: &'a [u8],
    /// Elements per row.
    pub cols: usize,
    /// Flat index of the block's first element.
    pub first: usize,
    /// Elements per absmax block (a multiple of the kernel's chunk).
    pub block: usize,
    /// Absmax of every block of the whole tensor, f32.
    pub absmax: &'a [f32],
    /// The 16 table values.
    pub table: &'a [f32; 16],
}

/// One call of the micro-kernel: `out[i*os + j] (+)= Σ_{k<kc} x[i*xs + k] * p[k*PANEL + j]` for
/// `i < mr`, `j < nr`; adds to `out` when `accumulate`, else overwrites. `p` is a panel of `kc`
/// rows of `PANEL` weights (W transposed).
#[derive(Debug)]
pub(crate) struct MicroTile<'a> {
    /// Rows of x, `xs` apart.
    pub x: &'a [f32],
    /// Stride of x's rows.
    pub xs: usize,
    /// Rows of x in the tile.
    pub mr: usize,
    /// The transposed panel.
    pub p: &'a [f32],
    /// Panel rows (the depth of the sums).
    pub kc: usize,
    /// Rows of the output, `os` apart.
    pub out: &'a mut [f32],
    /// Stride of the output's rows.
    pub os: usize,
    /// Valid weight rows of the panel (outputs per row).
    pub nr: usize,
    /// Add to `out` instead of overwriting it.
    pub accumulate: bool,
}

/// One instruction-set level's kernels.
pub(crate) trait Isa: Copy + Send + Sync {
    /// f32 lanes of the vectors the fast code kernels unpack into (0: no fast code kernels).
    const LANES: usize;
    /// Whether `gemv_int` and `dequant_int` read [`IntBlock::tables`] (row codebooks); levels
    /// without it run row codebooks on the generic path.
    const ROW_TABLES: bool = false;

    /// `Σ x[k] * w[k]`.
    fn dot(self, x: &[f32], w: &[f32]) -> f32;
    /// `out[r] = x · w[r*cols..]` with `cols = x.len()`, dense f32 rows.
    fn gemv_f32(self, x: &[f32], w: &[f32], out: &mut [f32]);
    /// Same with f16 rows.
    fn gemv_f16(self, x: &[f32], w: &[f16], out: &mut [f32]);
    /// Same with bf16 rows.
    fn gemv_bf16(self, x: &[f32], w: &[bf16], out: &mut [f32]);
    /// Widens f16 to f32.
    fn widen_f16(self, src: &[f16], dst: &mut [f32]);
    /// Widens bf16 to f32.
    fn widen_bf16(self, src: &[bf16], dst: &mut [f32]);
    /// `pt[k * PANEL + j] = p[j * ps + k]` for `j < nb ≤ PANEL`, `k < kc`: a dequantized panel
    /// transposed for the micro-kernel (columns `nb..PANEL` are left as they are).
    fn transpose(self, p: &[f32], ps: usize, nb: usize, kc: usize, pt: &mut [f32]) {
        transpose_portable(p, ps, nb, kc, pt, Self::PANEL);
    }
    /// Weight rows in one transposed panel (the micro-kernel's register width).
    const PANEL: usize;
    /// Rows of x per micro-kernel call.
    const MR: usize;
    /// The matrix-matrix micro-kernel on one [`MicroTile`] (`mr ≤ MR`, `nr ≤ PANEL`): each weight
    /// is loaded once per `MR` rows of x, each x value broadcast once per `PANEL` weights.
    fn kernel(self, t: MicroTile);
    /// `out[r] = x · row r` of an integer block (`out.len()` rows), x interleaved.
    fn gemv_int(self, b: &IntBlock, x: &[f32], out: &mut [f32]);
    /// Row `r` of an integer block, elements `k0..k0 + dst.len()` (chunk aligned), dequantized in
    /// interleaved order.
    fn dequant_int(self, b: &IntBlock, r: usize, k0: usize, dst: &mut [f32]);
    /// `out[r] = x · row r` of a codebook block, x interleaved.
    fn gemv_cb(self, b: &CbBlock, x: &[f32], out: &mut [f32]);
    /// Row `r` of a codebook block, elements `k0..k0 + dst.len()`, dequantized, interleaved.
    fn dequant_cb(self, b: &CbBlock, r: usize, k0: usize, dst: &mut [f32]);
}

/// Permutes `x` (a multiple of `lanes * per_byte` long) into the interleaved order of the fast
/// kernels (see the module docs).
pub(crate) fn interleave(x: &[f32], lanes: usize, per_byte: usize, out: &mut [f32]) {
    // The layouts the kernels use, with constant strides the compiler turns into shuffles (a
    // prefill permutes every row of x once per product).
    match (lanes, per_byte) {
        (_, 1) => out[..x.len()].copy_from_slice(x),
        (16, 2) => interleave_fixed::<16, 2>(x, out),
        (8, 2) => interleave_fixed::<8, 2>(x, out),
        (16, 4) => interleave_fixed::<16, 4>(x, out),
        (8, 4) => interleave_fixed::<8, 4>(x, out),
        (8, 8) => interleave_fixed::<8, 8>(x, out),
        _ => interleave_any(x, lanes, per_byte, out),
    }
}

/// [`interleave`] for `L` lanes of `P` codes.
fn interleave_fixed<const L: usize, const P: usize>(x: &[f32], out: &mut [f32]) {
    for (src, dst) in x.chunks_exact(L * P).zip(out.chunks_exact_mut(L * P)) {
        for t in 0..P {
            for j in 0..L {
                dst[t * L + j] = src[P * j + t];
            }
        }
    }
}

/// [`interleave`] for any layout.
fn interleave_any(x: &[f32], lanes: usize, per_byte: usize, out: &mut [f32]) {
    let chunk = lanes * per_byte;
    for (src, dst) in x.chunks_exact(chunk).zip(out.chunks_exact_mut(chunk)) {
        for j in 0..lanes {
            for t in 0..per_byte {
                dst[t * lanes + j] = src[per_byte * j + t];
            }
        }
    }
}

/// `pt[k * np + j] = p[j * ps + k]`, written row by row of `pt` so stores are contiguous.
pub(crate) fn transpose_portable(p: &[f32], ps: usize, nb: usize, kc: usize, pt: &mut [f32], np: usize) {
    for (k, dst) in pt.chunks_exact_mut(np).take(kc).enumerate() {
        for (j, d) in dst[..nb].iter_mut().enumerate() {
            *d = p[j * ps + k];
        }
    }
}

/// The portable level: plain Rust written so the compiler can vectorize the f32 dot products
/// (eight independent partial sums). It has no fast code kernels; quantized weights go through
/// the generic dequantize-then-dot path.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Portable;

const ACC: usize = 8;

#[inline]
fn dot_by<T: Copy>(x: &[f32], w: &[T], f: impl Fn(T) -> f32) -> f32 {
    let mut acc = [0f32; ACC];
    let mut xc = x.chunks_exact(ACC);
    let mut wc = w.chunks_exact(ACC);
    for (a, b) in (&mut xc).zip(&mut wc) {
        for l in 0..ACC {
            acc[l] += a[l] * f(b[l]);
        }
    }
    let mut tail = 0f32;
    for (a, &b) in xc.remainder().iter().zip(wc.remainder()) {
        tail += a * f(b);
    }
    acc.iter().sum::<f32>() + tail
}

impl Isa for Portable {
    const LANES: usize = 0;

    fn dot(self, x: &[f32], w: &[f32]) -> f32 {
        dot_by(x, w, |v| v)
    }
    fn gemv_f32(self, x: &[f32], w: &[f32], out: &mut [f32]) {
        for (o, row) in out.iter_mut().zip(w.chunks_exact(x.len())) {
            *o = dot_by(x, row, |v| v);
        }
    }
    fn gemv_f16(self, x: &[f32], w: &[f16], out: &mut [f32]) {
        for (o, row) in out.iter_mut().zip(w.chunks_exact(x.len())) {
            *o = dot_by(x, row, f16::to_f32);
        }
    }
    fn gemv_bf16(self, x: &[f32], w: &[bf16], out: &mut [f32]) {
        for (o, row) in out.iter_mut().zip(w.chunks_exact(x.len())) {
            *o = dot_by(x, row, bf16::to_f32);
        }
    }
    fn widen_f16(self, src: &[f16], dst: &mut [f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = s.to_f32();
        }
    }
    fn widen_bf16(self, src: &[bf16], dst: &mut [f32]) {
        for (d, s) in dst.iter_mut().zip(src) {
            *d = s.to_f32();
        }
    }
    const PANEL: usize = 8;
    const MR: usize = 4;
    fn kernel(self, t: MicroTile) {
        let MicroTile { x, xs, mr, p, kc, out, os, nr, accumulate } = t;
        for i in 0..mr {
            let mut acc = [0f32; 8];
            for (k, &xv) in x[i * xs..i * xs + kc].iter().enumerate() {
                for (a, &w) in acc.iter_mut().zip(&p[k * 8..k * 8 + 8]) {
                    *a += xv * w;
                }
            }
            let o = &mut out[i * os..i * os + nr];
            if accumulate {
                o.iter_mut().zip(&acc).for_each(|(o, a)| *o += a);
            } else {
                o.copy_from_slice(&acc[..nr]);
            }
        }
    }
    fn gemv_int(self, _: &IntBlock, _: &[f32], _: &mut [f32]) {
        unreachable!("the portable level has no fast code kernels (LANES = 0)")
    }
    fn dequant_int(self, _: &IntBlock, _: usize, _: usize, _: &mut [f32]) {
        unreachable!("the portable level has no fast code kernels (LANES = 0)")
    }
    fn gemv_cb(self, _: &CbBlock, _: &[f32], _: &mut [f32]) {
        unreachable!("the portable level has no fast code kernels (LANES = 0)")
    }
    fn dequant_cb(self, _: &CbBlock, _: usize, _: usize, _: &mut [f32]) {
        unreachable!("the portable level has no fast code kernels (LANES = 0)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interleave_layouts_equal_the_general_permutation() {
        let x: Vec<f32> = (0..3 * 128).map(|i| i as f32 * 0.5 - 7.0).collect();
        for (lanes, per_byte) in [(16, 1), (8, 1), (16, 2), (8, 2), (16, 4), (8, 4), (8, 8), (4, 2)] {
            let (mut fast, mut any) = (vec![f32::NAN; x.len()], vec![f32::NAN; x.len()]);
            interleave(&x, lanes, per_byte, &mut fast);
            interleave_any(&x, lanes, per_byte, &mut any);
            assert_eq!(fast, any, "{lanes} lanes x {per_byte}");
        }
    }

    #[test]
    fn interleave_puts_codes_of_one_byte_lane_together() {
        let x: Vec<f32> = (0..32).map(|i| i as f32).collect();
        let mut out = vec![0.0; 32];
        interleave(&x, 16, 2, &mut out);
        assert_eq!(&out[..4], &[0.0, 2.0, 4.0, 6.0]);
        assert_eq!(&out[16..18], &[1.0, 3.0]);
    }
}
