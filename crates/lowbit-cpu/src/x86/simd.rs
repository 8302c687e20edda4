//! The loops the AVX2 and AVX-512 levels share, written once over [`Simd`]: a zero-sized token
//! per level (it exists only on CPUs that run the level) with the handful of vector operations
//! the loops need. Each level keeps apart only what really differs: its code decoders (integer
//! unpacking, lookup tables, 3-bit gathers) and, for AVX-512, the register transpose.
//!
//! The generic loops are `#[inline(always)]`; [`simd_isa!`] instantiates them inside
//! `#[target_feature]` functions, so the token's operations inline into code compiled for the
//! level's features.

use crate::isa::{CbBlock, IntBlock, MicroTile};
use half::{bf16, f16};
use std::ops::Range;

/// One level's f32 vectors and the operations the shared loops use.
///
/// # Safety
/// Implement only for tokens that can be obtained on CPUs with every feature the operations use:
/// the methods run intrinsics on the strength of `self` alone.
pub(crate) unsafe trait Simd: Copy {
    /// f32 lanes per vector.
    const L: usize;
    /// `L` f32 lanes.
    type V: Copy;
    /// `L` u32 lanes (unpacked codes).
    type I: Copy;
    /// `L` 16-bit lanes (f16 or bf16 bits).
    type H: Copy;
    /// A 16-entry f32 lookup table as the level holds it in registers.
    type Table: Copy;

    /// All lanes zero.
    fn zero(self) -> Self::V;
    /// All lanes `v`.
    fn splat(self, v: f32) -> Self::V;
    /// `a * b + c`, fused.
    fn fma(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    /// `a + b`.
    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    /// The sum of the lanes.
    fn hsum(self, v: Self::V) -> f32;
    /// Loads `L` f32.
    ///
    /// # Safety
    /// `L` readable f32 at `p`.
    unsafe fn load(self, p: *const f32) -> Self::V;
    /// Loads `n < L` f32, zeros in the other lanes.
    ///
    /// # Safety
    /// `n` readable f32 at `p`.
    unsafe fn load_partial(self, p: *const f32, n: usize) -> Self::V;
    /// Loads `L` 16-bit values (f16 or bf16 bits).
    ///
    /// # Safety
    /// `L` readable u16 at `p`.
    unsafe fn load_u16(self, p: *const u16) -> Self::H;
    /// Loads `n < L` 16-bit values, zeros in the other lanes.
    ///
    /// # Safety
    /// `n` readable u16 at `p`.
    unsafe fn load_u16_partial(self, p: *const u16, n: usize) -> Self::H;
    /// `L` f16 to f32.
    fn f16_to_f32(self, h: Self::H) -> Self::V;
    /// `L` bf16 to f32 (bf16 is the top half of an f32).
    fn bf16_to_f32(self, h: Self::H) -> Self::V;
    /// Stores `L` f32.
    ///
    /// # Safety
    /// `L` writable f32 at `p`.
    unsafe fn store(self, p: *mut f32, v: Self::V);
    /// Stores the first `n < L` lanes.
    ///
    /// # Safety
    /// `n` writable f32 at `p`.
    unsafe fn store_partial(self, p: *mut f32, n: usize, v: Self::V);

    /// Widens `L` code bytes to `L` u32 lanes.
    ///
    /// # Safety
    /// `L` readable bytes at `p`.
    unsafe fn load_codes(self, p: *const u8) -> Self::I;
    /// Each lane shifted right by 4 bits (the next nibble).
    fn next_nibble(self, v: Self::I) -> Self::I;
    /// `table[i] * scale` as the level's lookup table.
    fn table16(self, table: &[f32; 16], scale: f32) -> Self::Table;
    /// `table[v & 15]` in every lane.
    fn lookup16(self, v: Self::I, table: Self::Table) -> Self::V;
}

/// A weight element type the dense loops read.
pub(crate) trait Elem: Copy {
    /// Loads `S::L` elements as f32.
    ///
    /// # Safety
    /// `S::L` readable elements at `p`.
    unsafe fn load<S: Simd>(s: S, p: *const Self) -> S::V;
    /// Loads `n < S::L` elements as f32, zeros in the other lanes.
    ///
    /// # Safety
    /// `n` readable elements at `p`.
    unsafe fn load_partial<S: Simd>(s: S, p: *const Self, n: usize) -> S::V;
}

impl Elem for f32 {
    #[inline(always)]
    unsafe fn load<S: Simd>(s: S, p: *const f32) -> S::V {
        // SAFETY: the caller's contract.
        unsafe { s.load(p) }
    }
    #[inline(always)]
    unsafe fn load_partial<S: Simd>(s: S, p: *const f32, n: usize) -> S::V {
        // SAFETY: the caller's contract.
        unsafe { s.load_partial(p, n) }
    }
}

/// [`Elem`] for a 16-bit float type: 16-bit loads, then the level's conversion `$to_f32`.
macro_rules! half_elem {
    ($t:ty, $to_f32:ident) => {
        impl Elem for $t {
            #[inline(always)]
            unsafe fn load<S: Simd>(s: S, p: *const $t) -> S::V {
                // SAFETY: the caller's contract (f16 and bf16 are 16-bit values).
                s.$to_f32(unsafe { s.load_u16(p.cast()) })
            }
            #[inline(always)]
            unsafe fn load_partial<S: Simd>(s: S, p: *const $t, n: usize) -> S::V {
                // SAFETY: as above.
                s.$to_f32(unsafe { s.load_u16_partial(p.cast(), n) })
            }
        }
    };
}
half_elem!(f16, f16_to_f32);
half_elem!(bf16, bf16_to_f32);

/// `x · w` for one dense row (the shorter of the two sets the length).
#[inline(always)]
pub(crate) fn dot<S: Simd, T: Elem>(s: S, x: &[f32], w: &[T]) -> f32 {
    let l = S::L;
    let n = x.len().min(w.len());
    let (xp, wp) = (x.as_ptr(), w.as_ptr());
    let mut acc = [s.zero(); 4];
    let mut k = 0;
    // SAFETY: every load reads elements below `n` (the tail through partial loads).
    unsafe {
        while k + 4 * l <= n {
            for (u, a) in acc.iter_mut().enumerate() {
                let o = k + u * l;
                *a = s.fma(s.load(xp.add(o)), T::load(s, wp.add(o)), *a);
            }
            k += 4 * l;
        }
        while k + l <= n {
            acc[0] = s.fma(s.load(xp.add(k)), T::load(s, wp.add(k)), acc[0]);
            k += l;
        }
        if k < n {
            acc[1] = s.fma(s.load_partial(xp.add(k), n - k), T::load_partial(s, wp.add(k), n - k), acc[1]);
        }
    }
    s.hsum(s.add(s.add(acc[0], acc[1]), s.add(acc[2], acc[3])))
}

/// `out[r] = x · w[r]` for dense rows of `x.len()`, four rows per pass sharing the x loads.
#[inline(always)]
pub(crate) fn gemv<S: Simd, T: Elem>(s: S, x: &[f32], w: &[T], out: &mut [f32]) {
    let l = S::L;
    let cols = x.len();
    assert!(w.len() >= out.len() * cols);
    let xp = x.as_ptr();
    let full = cols / l * l;
    let mut r = 0;
    while r + 4 <= out.len() {
        let mut acc = [s.zero(); 4];
        // SAFETY: rows r..r+4 lie in `w` (asserted); full loads stop at `full`, the partial ones
        // read the `cols - full` remaining elements of each row.
        unsafe {
            let wp = w.as_ptr().add(r * cols);
            let mut k = 0;
            while k < full {
                let xv = s.load(xp.add(k));
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = s.fma(xv, T::load(s, wp.add(j * cols + k)), *a);
                }
                k += l;
            }
            if k < cols {
                let xv = s.load_partial(xp.add(k), cols - k);
                for (j, a) in acc.iter_mut().enumerate() {
                    *a = s.fma(xv, T::load_partial(s, wp.add(j * cols + k), cols - k), *a);
                }
            }
        }
        for (j, a) in acc.iter().enumerate() {
            out[r + j] = s.hsum(*a);
        }
        r += 4;
    }
    for (r, o) in out.iter_mut().enumerate().skip(r) {
        *o = dot(s, x, &w[r * cols..(r + 1) * cols]);
    }
}

/// Widens `src` to f32 into `dst` (the shorter of the two sets the length).
#[inline(always)]
pub(crate) fn widen<S: Simd, T: Elem>(s: S, src: &[T], dst: &mut [f32]) {
    let l = S::L;
    let n = src.len().min(dst.len());
    let (sp, dp) = (src.as_ptr(), dst.as_mut_ptr());
    let mut k = 0;
    // SAFETY: loads and stores stay below `n` (the tail through partial ones).
    unsafe {
        while k + l <= n {
            s.store(dp.add(k), T::load(s, sp.add(k)));
            k += l;
        }
        if k < n {
            s.store_partial(dp.add(k), n - k, T::load_partial(s, sp.add(k), n - k));
        }
    }
}

/// The micro-kernel: `MR` rows of x times a panel two vectors wide, `2 * MR` accumulators; per
/// `k` two panel loads and `MR` broadcast x values.
#[inline(always)]
pub(crate) fn kernel<S: Simd, const MR: usize>(s: S, t: MicroTile) {
    let l = S::L;
    let MicroTile { x, xs, mr, p, kc, out, os, nr, accumulate } = t;
    assert!(MR >= 1 && mr == MR && nr <= 2 * l);
    assert!(x.len() >= (MR - 1) * xs + kc && p.len() >= kc * 2 * l && out.len() >= (MR - 1) * os + nr);
    let (xp, pp, op) = (x.as_ptr(), p.as_ptr(), out.as_mut_ptr());
    let mut c = [[s.zero(); 2]; MR];
    // SAFETY: k < kc, so panel row k (2L f32) and x[i*xs + k] for i < MR are in bounds (asserted).
    unsafe {
        for k in 0..kc {
            let b0 = s.load(pp.add(k * 2 * l));
            let b1 = s.load(pp.add(k * 2 * l + l));
            for (i, ci) in c.iter_mut().enumerate() {
                let a = s.splat(*xp.add(i * xs + k));
                ci[0] = s.fma(a, b0, ci[0]);
                ci[1] = s.fma(a, b1, ci[1]);
            }
        }
    }
    let (n0, n1) = (nr.min(l), nr.saturating_sub(l));
    // SAFETY: each row's loads and stores touch its first `nr` elements only, in bounds
    // (asserted).
    unsafe {
        let load = |p: *const f32, n: usize| if n == l { s.load(p) } else { s.load_partial(p, n) };
        let store = |p: *mut f32, n: usize, v| if n == l { s.store(p, v) } else { s.store_partial(p, n, v) };
        for (i, ci) in c.iter().enumerate() {
            let o = op.add(i * os);
            let (mut v0, mut v1) = (ci[0], ci[1]);
            if accumulate {
                v0 = s.add(v0, load(o, n0));
                v1 = s.add(v1, load(o.add(l), n1));
            }
            store(o, n0, v0);
            store(o.add(l), n1, v1);
        }
    }
}

/// `out[r] = x · row r` for NF4/FP4 codes: one table per absmax block, two codes per byte.
#[inline(always)]
pub(crate) fn gemv_cb<S: Simd>(s: S, b: &CbBlock, x: &[f32], out: &mut [f32]) {
    let l = S::L;
    let chunk = 2 * l;
    assert!(x.len() >= b.cols && b.codes.len() >= out.len() * b.cols / 2 && b.cols.is_multiple_of(chunk));
    assert!(b.block.is_multiple_of(chunk) && b.absmax.len() >= (b.first + out.len() * b.cols).div_ceil(b.block));
    let xp = x.as_ptr();
    for (r, o) in out.iter_mut().enumerate() {
        let flat = b.first + r * b.cols;
        let mut tot = [s.zero(); 2];
        let mut k = 0;
        while k < b.cols {
            let blk = (flat + k) / b.block;
            let end = ((blk + 1) * b.block - flat).min(b.cols);
            let table = s.table16(b.table, b.absmax[blk]);
            while k < end {
                // SAFETY: k + 2L <= cols: L code bytes of row r and 2L x values are in bounds.
                unsafe {
                    let v = s.load_codes(b.codes.as_ptr().add(r * b.cols / 2 + k / 2));
                    tot[0] = s.fma(s.lookup16(v, table), s.load(xp.add(k)), tot[0]);
                    tot[1] = s.fma(s.lookup16(s.next_nibble(v), table), s.load(xp.add(k + l)), tot[1]);
                }
                k += chunk;
            }
        }
        *o = s.hsum(s.add(tot[0], tot[1]));
    }
}

/// Row `r`, elements `k0..k0 + dst.len()` of a codebook block, dequantized, interleaved.
#[inline(always)]
pub(crate) fn dequant_cb<S: Simd>(s: S, b: &CbBlock, r: usize, k0: usize, dst: &mut [f32]) {
    let l = S::L;
    let chunk = 2 * l;
    assert!(k0.is_multiple_of(chunk) && dst.len().is_multiple_of(chunk) && k0 + dst.len() <= b.cols);
    assert!(b.codes.len() >= (r + 1) * b.cols / 2 && b.block.is_multiple_of(chunk));
    let flat = b.first + r * b.cols;
    let dp = dst.as_mut_ptr();
    for c in (0..dst.len()).step_by(chunk) {
        let k = k0 + c;
        let table = s.table16(b.table, b.absmax[(flat + k) / b.block]);
        // SAFETY: L code bytes of row r at k / 2 and 2L f32 at dst[c..] are in bounds (asserted).
        unsafe {
            let v = s.load_codes(b.codes.as_ptr().add(r * b.cols / 2 + k / 2));
            s.store(dp.add(c), s.lookup16(v, table));
            s.store(dp.add(c + l), s.lookup16(s.next_nibble(v), table));
        }
    }
}

/// `out[r0..r0 + R]` of an integer matrix-vector product from per-group partial sums:
/// `group(gi, k0..k1)` returns each row's unscaled sum over group `gi` (columns `k0..k1`); the
/// group's scale multiplies it once, groups in order.
#[inline(always)]
pub(crate) fn int_rows<S: Simd, const R: usize>(
    s: S,
    b: &IntBlock,
    r0: usize,
    out: &mut [f32],
    mut group: impl FnMut(usize, Range<usize>) -> [S::V; R],
) {
    let gpr = b.gpr();
    let mut tot = [s.zero(); R];
    for gi in 0..gpr {
        let k0 = gi * b.group;
        let acc = group(gi, k0..(k0 + b.group).min(b.cols));
        for (r, t) in tot.iter_mut().enumerate() {
            *t = s.fma(acc[r], s.splat(b.scales[(r0 + r) * gpr + gi]), *t);
        }
    }
    for (r, t) in tot.iter().enumerate() {
        out[r0 + r] = s.hsum(*t);
    }
}

/// Runs a row kernel over rows `0..$rows`: `$k::<…, $w>` on blocks of `$w` rows while they fit,
/// then `$k::<…, 1>` on each remaining row; `$r` names the block's first row in the arguments.
macro_rules! row_blocks {
    ($rows:expr, $w:literal, $r:ident => $k:ident $(::<$($g:literal),+>)? ($($arg:expr),* $(,)?)) => {{
        let rows = $rows;
        let mut $r = 0;
        while $r + $w <= rows {
            $k::<$($($g,)+)? $w>($($arg),*);
            $r += $w;
        }
        while $r < rows {
            $k::<$($($g,)+)? 1>($($arg),*);
            $r += 1;
        }
    }};
}
pub(crate) use row_blocks;

/// The [`crate::isa::Isa`] implementation of a level: `#[target_feature]` instances of the shared
/// loops, forwarding methods, and the level's own `gemv_int`, `dequant_int` (taking the token
/// first) and, with `transpose`, `transpose_panel` functions, which must be `unsafe fn`s with
/// the level's features taking the `Isa` arguments.
macro_rules! simd_isa {
    ($tok:ident, $features:literal, mr = [$($m:literal),*] $(, $transpose:ident)?) => {
        /// The shared loops compiled for this level.
        mod tf {
            use super::$tok;
            use crate::isa::{CbBlock, MicroTile};
            use crate::x86::simd;
            use half::{bf16, f16};

            #[target_feature(enable = $features)]
            pub(super) fn dot(s: $tok, x: &[f32], w: &[f32]) -> f32 {
                simd::dot(s, x, w)
            }
            #[target_feature(enable = $features)]
            pub(super) fn gemv<T: simd::Elem>(s: $tok, x: &[f32], w: &[T], out: &mut [f32]) {
                simd::gemv(s, x, w, out)
            }
            #[target_feature(enable = $features)]
            pub(super) fn widen_f16(s: $tok, src: &[f16], dst: &mut [f32]) {
                simd::widen(s, src, dst)
            }
            #[target_feature(enable = $features)]
            pub(super) fn widen_bf16(s: $tok, src: &[bf16], dst: &mut [f32]) {
                simd::widen(s, src, dst)
            }
            #[target_feature(enable = $features)]
            pub(super) fn kernel(s: $tok, t: MicroTile) {
                match t.mr {
                    $($m => simd::kernel::<$tok, $m>(s, t),)*
                    _ => unreachable!("at most MR rows"),
                }
            }
            #[target_feature(enable = $features)]
            pub(super) fn gemv_cb(s: $tok, b: &CbBlock, x: &[f32], out: &mut [f32]) {
                simd::gemv_cb(s, b, x, out)
            }
            #[target_feature(enable = $features)]
            pub(super) fn dequant_cb(s: $tok, b: &CbBlock, r: usize, k0: usize, dst: &mut [f32]) {
                simd::dequant_cb(s, b, r, k0, dst)
            }
        }

        // SAFETY (every method): `self` exists only on CPUs with the features these functions
        // enable (see `new`); the kernels check their slice bounds themselves.
        impl crate::isa::Isa for $tok {
            const LANES: usize = <$tok as crate::x86::simd::Simd>::L;
            const ROW_TABLES: bool = true;
            const PANEL: usize = 2 * Self::LANES;
            const MR: usize = [$($m),*].len();

            fn dot(self, x: &[f32], w: &[f32]) -> f32 {
                // SAFETY: see above.
                unsafe { tf::dot(self, x, w) }
            }
            fn gemv_f32(self, x: &[f32], w: &[f32], out: &mut [f32]) {
                // SAFETY: see above.
                unsafe { tf::gemv(self, x, w, out) }
            }
            fn gemv_f16(self, x: &[f32], w: &[half::f16], out: &mut [f32]) {
                // SAFETY: see above.
                unsafe { tf::gemv(self, x, w, out) }
            }
            fn gemv_bf16(self, x: &[f32], w: &[half::bf16], out: &mut [f32]) {
                // SAFETY: see above.
                unsafe { tf::gemv(self, x, w, out) }
            }
            fn widen_f16(self, src: &[half::f16], dst: &mut [f32]) {
                // SAFETY: see above.
                unsafe { tf::widen_f16(self, src, dst) }
            }
            fn widen_bf16(self, src: &[half::bf16], dst: &mut [f32]) {
                // SAFETY: see above.
                unsafe { tf::widen_bf16(self, src, dst) }
            }
            fn kernel(self, t: crate::isa::MicroTile) {
                // SAFETY: see above.
                unsafe { tf::kernel(self, t) }
            }
            fn gemv_int(self, b: &crate::isa::IntBlock, x: &[f32], out: &mut [f32]) {
                // SAFETY: see above.
                unsafe { gemv_int(self, b, x, out) }
            }
            fn dequant_int(self, b: &crate::isa::IntBlock, r: usize, k0: usize, dst: &mut [f32]) {
                // SAFETY: see above.
                unsafe { dequant_int(self, b, r, k0, dst) }
            }
            fn gemv_cb(self, b: &crate::isa::CbBlock, x: &[f32], out: &mut [f32]) {
                // SAFETY: see above.
                unsafe { tf::gemv_cb(self, b, x, out) }
            }
            fn dequant_cb(self, b: &crate::isa::CbBlock, r: usize, k0: usize, dst: &mut [f32]) {
                // SAFETY: see above.
                unsafe { tf::dequant_cb(self, b, r, k0, dst) }
            }
            $(
                fn transpose(self, p: &[f32], ps: usize, nb: usize, kc: usize, pt: &mut [f32]) {
                    // SAFETY: see above.
                    unsafe { $transpose(p, ps, nb, kc, pt) }
                }
            )?
        }
    };
}
pub(crate) use simd_isa;

/// The methods of an `unsafe impl Simd` that are one intrinsic (or one function of the level)
/// each: which one implements which operation at the level.
macro_rules! simd_intrinsics {
    (
        zero: $zero:ident, splat: $splat:ident, fma: $fma:ident, add: $add:ident, hsum: $hsum:ident,
        load: $load:ident, store: $store:ident, load_u16: $load_u16:ident, f16_to_f32: $cvtph:ident,
        load_codes: $load_codes:ident, next_nibble: $srli:ident
    ) => {
        #[inline(always)]
        fn zero(self) -> Self::V {
            $crate::x86::simd::token_op!($zero())
        }
        #[inline(always)]
        fn splat(self, v: f32) -> Self::V {
            $crate::x86::simd::token_op!($splat(v))
        }
        #[inline(always)]
        fn fma(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V {
            $crate::x86::simd::token_op!($fma(a, b, c))
        }
        #[inline(always)]
        fn add(self, a: Self::V, b: Self::V) -> Self::V {
            $crate::x86::simd::token_op!($add(a, b))
        }
        #[inline(always)]
        fn hsum(self, v: Self::V) -> f32 {
            $crate::x86::simd::token_op!($hsum(v))
        }
        #[inline(always)]
        unsafe fn load(self, p: *const f32) -> Self::V {
            $crate::x86::simd::token_op!($load(p))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32, v: Self::V) {
            $crate::x86::simd::token_op!($store(p, v))
        }
        #[inline(always)]
        unsafe fn load_u16(self, p: *const u16) -> Self::H {
            $crate::x86::simd::token_op!($load_u16(p.cast()))
        }
        #[inline(always)]
        fn f16_to_f32(self, h: Self::H) -> Self::V {
            $crate::x86::simd::token_op!($cvtph(h))
        }
        #[inline(always)]
        unsafe fn load_codes(self, p: *const u8) -> Self::I {
            $crate::x86::simd::token_op!($load_codes(p))
        }
        #[inline(always)]
        fn next_nibble(self, v: Self::I) -> Self::I {
            $crate::x86::simd::token_op!($srli::<4>(v))
        }
    };
}
pub(crate) use simd_intrinsics;

/// `unsafe { $e }` inside the methods of an `unsafe impl Simd`: the intrinsics' feature
/// requirement is met by the token (the impl's safety contract), and the pointer methods pass on
/// their callers' contracts.
macro_rules! token_op {
    ($e:expr) => {
        // SAFETY: the method runs only through a token of the level, which exists only on CPUs
        // with every feature the level enables; pointers are valid by the method's contract.
        unsafe { $e }
    };
}
pub(crate) use token_op;
