//! The blocking and threading of `Y = X · Wᵀ`, written once for every [`Isa`] level.
//!
//! * **Matrix-vector** (`m < GEMM_MIN_M`, decode, f32 activations): memory bound. Output rows
//!   are split into chunks claimed by the threads of the decode pool; each kernel call streams
//!   its rows' codes once and keeps the (interleaved) activation row in L1.
//! * **Matrix-matrix** (prefill): compute bound. A panel of `PANEL` weight rows by `KC` columns is
//!   dequantized once into f32, transposed (L2 sized) and reused by every row of x through a
//!   register-blocked micro-kernel ([`Isa::kernel`]: `MR` rows of x times `PANEL` outputs). Large `m` is split over threads by rows of x (each thread dequantizes the
//!   panels it needs, which costs `1/m` of the arithmetic); small `m` by panels of W.
//!
//! Formats or shapes without a fast kernel at the level (groups that are not a multiple of the
//! kernel chunk, per-tensor/per-channel rows of odd length) take the generic path:
//! each row is dequantized in natural order by portable code into an L1 buffer, then the level's
//! f32 dot product or tile runs on it.

use crate::isa::{interleave, CbBlock, IntBlock, Isa, MicroTile, Zeros};
use crate::par;
use crate::weight::{Weight, WeightKind, ROW_TABLE};
use half::{bf16, f16};
use lowbit_core::pack::{code_at, unpack_into};
use lowbit_core::{Bits, Granularity, QParams, QTensor, Scales, Scheme, SparseOutliers, ZeroPoints};

/// Smallest `m` that takes the matrix-matrix path. Dequantizing and transposing the panels costs
/// about as much as 10 to 12 matrix-vector passes (measured on INT4 1536x576 and 4096x4096), so
/// smaller batches stream the codes once per row of x instead.
pub(crate) const GEMM_MIN_M: usize = 12;
/// Rows of x per thread from which a product is split by rows of x (each thread prepares every
/// panel of W itself) rather than by panels of W: below it the duplicated panel preparation (a
/// whole pass over W per thread) costs more than the split saves.
pub(crate) const ROW_SPLIT_MIN: usize = 64;
/// Weight rows per task when small `m` is split over panels of W (a multiple of every `PANEL`).
const NB: usize = 32;
/// Longest panel row (f32 elements); rows longer than this are blocked over `k`.
const KC_MAX: usize = 2048;
/// Column block for long rows (a multiple of every kernel chunk).
const KC_BLOCK: usize = 1024;
/// Elements per generic dequantization step (an L1-resident buffer).
const GENERIC_STEP: usize = 256;
/// Weight rows below which a matrix-vector product runs on the calling thread. Larger ones run
/// on the low-latency pool (crate `pool` module), whose wakeup costs far less than rayon's.
const PARALLEL_MIN_GEMV_ROWS: usize = 64;

/// The weight as the driver sees it.
enum Src<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    Bf16(&'a [bf16]),
    Int(IntSrc<'a>),
    Cb(CbSrc<'a>),
}

struct IntSrc<'a> {
    q: &'a QTensor,
    bits: Bits,
    /// Elements per group within a row (`cols` for per-channel and per-tensor); the last group of
    /// a row is shorter when it does not divide `cols`.
    group: usize,
    per_tensor: bool,
    sym_zero: u8,
    fast: bool,
    /// Row codebooks: each row's 16-entry f32 table (one group per row, no scales or zeros).
    tables: Option<&'a [f32]>,
}

struct CbSrc<'a> {
    q: &'a QTensor,
    absmax: &'a [f32],
    table: &'static [f32; 16],
    block: usize,
    fast: bool,
}

impl<'a> Src<'a> {
    fn new<I: Isa>(lin: &'a Weight) -> Self {
        let cols = lin.cols();
        match lin.kind() {
            WeightKind::F32(w) => Src::F32(w),
            WeightKind::F16(w) => Src::F16(w),
            WeightKind::Bf16(w) => Src::Bf16(w),
            WeightKind::Quant(q) => match q.scheme() {
                Scheme::Int(s) => {
                    let group = match s.granularity {
                        Granularity::Group(g) => g,
                        Granularity::PerChannel | Granularity::PerTensor => cols,
                    };
                    let (lanes, per_lane) = int_interleave::<I>(s.bits);
                    let chunk = lanes * per_lane;
                    // Groups may end short at the row's end (docs/format.md): the fast kernels need
                    // every group, the last included, to be whole chunks.
                    let fast = I::LANES > 0 && group.is_multiple_of(chunk) && cols.is_multiple_of(chunk);
                    Src::Int(IntSrc {
                        q,
                        bits: s.bits,
                        group,
                        per_tensor: s.granularity == Granularity::PerTensor,
                        sym_zero: s.bits.symmetric_zero(),
                        fast,
                        tables: None,
                    })
                }
                // A row codebook runs the integer kernels with one group per row and the row's
                // table in place of the group's `(i - zero)` table.
                Scheme::RowLut(s) => {
                    let (lanes, per_lane) = int_interleave::<I>(s.bits);
                    let fast = I::ROW_TABLES && I::LANES > 0 && cols.is_multiple_of(lanes * per_lane);
                    Src::Int(IntSrc {
                        q,
                        bits: s.bits,
                        group: cols,
                        per_tensor: false,
                        sym_zero: 0,
                        fast,
                        tables: Some(lin.row_tables()),
                    })
                }
                Scheme::Codebook(s) => {
                    let chunk = I::LANES * 2;
                    let fast = I::LANES > 0 && cols.is_multiple_of(chunk) && s.block_size % chunk == 0;
                    Src::Cb(CbSrc { q, absmax: lin.absmax_f32(), table: s.codebook.table(), block: s.block_size, fast })
                }
            },
        }
    }

    /// The sparse outliers added to the product, if any.
    fn outliers(&self) -> Option<&'a SparseOutliers> {
        match self {
            Src::Int(s) => s.q.outliers(),
            Src::Cb(s) => s.q.outliers(),
            _ => None,
        }
    }

    /// `(lanes, codes per lane)` of the interleaved order the fast kernels expect, if they run.
    fn interleave<I: Isa>(&self) -> Option<(usize, usize)> {
        match self {
            Src::Int(s) if s.fast => Some(int_interleave::<I>(s.bits)),
            Src::Cb(s) if s.fast => Some((I::LANES, 2)),
            _ => None,
        }
    }
}

/// `(lanes, codes per lane)` of the integer fast kernels: one byte per lane for 2, 4 and 8 bits;
/// for 3 bits eight lanes of 24 bits (8 codes) whatever the level.
fn int_interleave<I: Isa>(bits: Bits) -> (usize, usize) {
    match bits {
        Bits::B3 => (8, 8),
        b => (I::LANES, 8 / b.get() as usize),
    }
}

/// Scales and zero points (f32) of rows `r0..r1` of an integer tensor, in the layout of
/// [`IntBlock`]; `scratch` holds the scales, then the zeros when they vary per group.
fn int_block<'a, I: Isa>(
    isa: I,
    s: &IntSrc<'a>,
    cols: usize,
    r0: usize,
    r1: usize,
    scratch: &'a mut Vec<f32>,
) -> IntBlock<'a> {
    let gpr = cols.div_ceil(s.group);
    let n = (r1 - r0) * gpr;
    let row_bytes = cols * s.bits.get() as usize / 8;
    let block = |scales, zeros| IntBlock {
        bits: s.bits.get(),
        codes: &s.q.codes()[r0 * row_bytes..r1 * row_bytes],
        row_bytes,
        cols,
        group: s.group,
        scales,
        zeros,
        tables: s.tables.map(|t| &t[r0 * ROW_TABLE..r1 * ROW_TABLE]),
    };
    let (scales, zeros) = match s.q.params() {
        // A row codebook: scales 1 and zeros 0 (the row's table holds the values).
        QParams::RowLut { .. } => {
            scratch.clear();
            scratch.resize(n, 1.0);
            return block(scratch, Zeros::Const(0.0));
        }
        QParams::Int { scales, zeros } => (scales, zeros),
        // SpQR: the block's scales and zeros decoded from their 3-bit codes, here, once per block.
        QParams::IntStats(st) => {
            scratch.clear();
            scratch.resize(2 * n, 0.0);
            let (scale_buf, zero_buf) = scratch.split_at_mut(n);
            st.decode_rows(s.q.matrix_dims().0, gpr, r0, r1, scale_buf, zero_buf);
            return block(scale_buf, Zeros::PerGroup(zero_buf));
        }
        QParams::Codebook { .. } => unreachable!("integer scheme has integer params"),
    };
    let per_group_zeros = zeros.is_some() && !s.per_tensor;
    scratch.clear();
    scratch.resize(if per_group_zeros { 2 * n } else { n }, 0.0);
    let (scale_buf, zero_buf) = scratch.split_at_mut(n);
    let span = r0 * gpr..r1 * gpr;
    if s.per_tensor {
        scale_buf.fill(scales.get(0));
    } else {
        widen_floats(isa, scales, span.clone(), scale_buf);
    }
    let zeros = match zeros {
        None => Zeros::Const(f32::from(s.sym_zero)),
        Some(z) if s.per_tensor => Zeros::Const(z.get(0)),
        Some(ZeroPoints::Codes(z)) => {
            zero_buf.iter_mut().zip(&z[span]).for_each(|(d, &z)| *d = f32::from(z));
            Zeros::PerGroup(zero_buf)
        }
        Some(ZeroPoints::Float(z)) => {
            widen_floats(isa, z, span, zero_buf);
            Zeros::PerGroup(zero_buf)
        }
    };
    block(scale_buf, zeros)
}

/// `dst = v[span]` as f32.
fn widen_floats<I: Isa>(isa: I, v: &Scales, span: std::ops::Range<usize>, dst: &mut [f32]) {
    match v {
        Scales::F16(v) => isa.widen_f16(&v[span], dst),
        Scales::F32(v) => dst.copy_from_slice(&v[span]),
    }
}

fn cb_block<'a>(s: &CbSrc<'a>, cols: usize, r0: usize, r1: usize) -> CbBlock<'a> {
    CbBlock {
        codes: &s.q.codes()[r0 * cols / 2..r1 * cols / 2],
        cols,
        first: r0 * cols,
        block: s.block,
        absmax: s.absmax,
        table: s.table,
    }
}

/// Dequantizes elements `k0..k0 + dst.len()` of row `r` in natural order (portable code).
///
/// `stats`: for quantized statistics, row `r`'s decoded `(scales, zeros)` ([`stats_rows`]).
fn dequant_generic(src: &Src, cols: usize, r: usize, k0: usize, dst: &mut [f32], stats: Option<(&[f32], &[f32])>) {
    let mut codes = [0u8; GENERIC_STEP];
    let first = r * cols + k0;
    match src {
        Src::F32(w) => dst.copy_from_slice(&w[first..first + dst.len()]),
        Src::F16(w) => dst.iter_mut().zip(&w[first..]).for_each(|(d, s)| *d = s.to_f32()),
        Src::Bf16(w) => dst.iter_mut().zip(&w[first..]).for_each(|(d, s)| *d = s.to_f32()),
        Src::Int(s) => {
            let bits = s.bits;
            // A row codebook: the row's table entry of each code.
            if let Some(t) = s.tables {
                let t = &t[r * ROW_TABLE..(r + 1) * ROW_TABLE];
                for (step, d) in dst.chunks_mut(GENERIC_STEP).enumerate() {
                    read_codes(s.q.codes(), bits, first + step * GENERIC_STEP, &mut codes[..d.len()]);
                    for (o, &q) in d.iter_mut().zip(&codes) {
                        *o = t[usize::from(q)];
                    }
                }
                return;
            }
            let gpr = cols.div_ceil(s.group);
            let rows = s.q.matrix_dims().0;
            // (scale, zero) of group p of row r.
            let param = |p: usize| match s.q.params() {
                QParams::Int { scales, zeros } => {
                    (scales.get(p), zeros.as_ref().map_or(f32::from(s.sym_zero), |z| z.get(p)))
                }
                QParams::IntStats(st) => match stats {
                    Some((sc, z)) => (sc[p % gpr], z[p % gpr]),
                    None => st.get(rows, r, p % gpr),
                },
                QParams::Codebook { .. } | QParams::RowLut { .. } => unreachable!("integer scheme, no row tables"),
            };
            for (step, d) in dst.chunks_mut(GENERIC_STEP).enumerate() {
                let start = first + step * GENERIC_STEP;
                let col = k0 + step * GENERIC_STEP;
                read_codes(s.q.codes(), bits, start, &mut codes[..d.len()]);
                // one scale and zero per run of the same group
                let mut j = 0;
                while j < d.len() {
                    let c = col + j;
                    let run = (s.group - c % s.group).min(d.len() - j);
                    let (scale, z) = param(if s.per_tensor { 0 } else { r * gpr + c / s.group });
                    for (o, &q) in d[j..j + run].iter_mut().zip(&codes[j..j + run]) {
                        *o = (f32::from(q) - z) * scale;
                    }
                    j += run;
                }
            }
        }
        Src::Cb(s) => {
            for (step, d) in dst.chunks_mut(GENERIC_STEP).enumerate() {
                let start = first + step * GENERIC_STEP;
                read_codes(s.q.codes(), Bits::B4, start, &mut codes[..d.len()]);
                for (j, (o, &c)) in d.iter_mut().zip(&codes).enumerate() {
                    *o = s.table[c as usize] * s.absmax[(start + j) / s.block];
                }
            }
        }
    }
}

/// Codes of flat elements `start..start + out.len()`.
fn read_codes(packed: &[u8], bits: Bits, start: usize, out: &mut [u8]) {
    let bit = start * bits.get() as usize;
    if bit.is_multiple_of(8) && (out.len() * bits.get() as usize).is_multiple_of(8) {
        unpack_into(&packed[bit / 8..], bits, out);
    } else {
        for (j, o) in out.iter_mut().enumerate() {
            *o = code_at(packed, bits, start + j);
        }
    }
}

/// `out[r - r0] = x · W[r]` for `r` in `r0..r0 + out.len()`; `x` is interleaved when the source
/// runs fast kernels, `xn` is `x` in natural order (for the sparse outliers).
fn gemv_rows<I: Isa>(isa: I, src: &Src, cols: usize, x: &[f32], xn: &[f32], r0: usize, out: &mut [f32]) {
    gemv_dense(isa, src, cols, x, r0, out);
    if let Some(o) = src.outliers() {
        o.spmv_rows(r0, xn, out);
    }
}

fn gemv_dense<I: Isa>(isa: I, src: &Src, cols: usize, x: &[f32], r0: usize, out: &mut [f32]) {
    let r1 = r0 + out.len();
    match src {
        Src::F32(w) => isa.gemv_f32(x, &w[r0 * cols..r1 * cols], out),
        Src::F16(w) => isa.gemv_f16(x, &w[r0 * cols..r1 * cols], out),
        Src::Bf16(w) => isa.gemv_bf16(x, &w[r0 * cols..r1 * cols], out),
        Src::Int(s) if s.fast => {
            let mut scratch = Vec::new();
            let b = int_block(isa, s, cols, r0, r1, &mut scratch);
            isa.gemv_int(&b, x, out);
        }
        Src::Cb(s) if s.fast => isa.gemv_cb(&cb_block(s, cols, r0, r1), x, out),
        _ => {
            let mut buf = [0f32; GENERIC_STEP];
            let mut scratch = Vec::new();
            let stats = stats_rows(src, cols, r0, r1, &mut scratch);
            for (i, o) in out.iter_mut().enumerate() {
                let mut sum = 0.0;
                let st = stats.map(|(sc, z, gpr)| (&sc[i * gpr..(i + 1) * gpr], &z[i * gpr..(i + 1) * gpr]));
                for k0 in (0..cols).step_by(GENERIC_STEP) {
                    let len = GENERIC_STEP.min(cols - k0);
                    dequant_generic(src, cols, r0 + i, k0, &mut buf[..len], st);
                    sum += isa.dot(&x[k0..k0 + len], &buf[..len]);
                }
                *o = sum;
            }
        }
    }
}

/// Rows `r0..r0 + nr`, columns `k0..k0 + kc` of W as f32 (interleaved for fast sources): either
/// borrowed (dense f32) with its row stride, or dequantized into `buf` with stride `kc`.
#[allow(clippy::too_many_arguments)]
fn panel<'p, I: Isa>(
    isa: I,
    src: &'p Src,
    cols: usize,
    r0: usize,
    nr: usize,
    k0: usize,
    kc: usize,
    buf: &'p mut Vec<f32>,
    scratch: &mut Vec<f32>,
) -> (&'p [f32], usize) {
    if let Src::F32(w) = src {
        return (&w[r0 * cols + k0..], cols);
    }
    // every element is overwritten below: only grow, never clear
    if buf.len() < nr * kc {
        buf.resize(nr * kc, 0.0);
    }
    let buf = &mut buf[..nr * kc];
    match src {
        Src::F16(w) => {
            for (r, d) in buf.chunks_exact_mut(kc).enumerate() {
                let s = (r0 + r) * cols + k0;
                isa.widen_f16(&w[s..s + kc], d);
            }
        }
        Src::Bf16(w) => {
            for (r, d) in buf.chunks_exact_mut(kc).enumerate() {
                let s = (r0 + r) * cols + k0;
                isa.widen_bf16(&w[s..s + kc], d);
            }
        }
        Src::Int(s) if s.fast => {
            let mut owned = std::mem::take(scratch);
            {
                let b = int_block(isa, s, cols, r0, r0 + nr, &mut owned);
                for (r, d) in buf.chunks_exact_mut(kc).enumerate() {
                    isa.dequant_int(&b, r, k0, d);
                }
            }
            *scratch = owned;
        }
        Src::Cb(s) if s.fast => {
            let b = cb_block(s, cols, r0, r0 + nr);
            for (r, d) in buf.chunks_exact_mut(kc).enumerate() {
                isa.dequant_cb(&b, r, k0, d);
            }
        }
        _ => {
            let stats = stats_rows(src, cols, r0, r0 + nr, scratch);
            for (r, d) in buf.chunks_exact_mut(kc).enumerate() {
                let st = stats.map(|(sc, z, gpr)| (&sc[r * gpr..(r + 1) * gpr], &z[r * gpr..(r + 1) * gpr]));
                dequant_generic(src, cols, r0 + r, k0, d, st);
            }
        }
    }
    (&*buf, kc)
}

/// For quantized statistics, the decoded scales and zeros of rows `r0..r1`, row-major, and the
/// groups per row: decoded once per block of rows, not once per group and row.
fn stats_rows<'s>(
    src: &Src,
    cols: usize,
    r0: usize,
    r1: usize,
    scratch: &'s mut Vec<f32>,
) -> Option<(&'s [f32], &'s [f32], usize)> {
    let Src::Int(s) = src else { return None };
    let QParams::IntStats(st) = s.q.params() else { return None };
    let gpr = cols.div_ceil(s.group);
    let n = (r1 - r0) * gpr;
    scratch.clear();
    scratch.resize(2 * n, 0.0);
    let (sc, z) = scratch.split_at_mut(n);
    st.decode_rows(s.q.matrix_dims().0, gpr, r0, r1, sc, z);
    Some((sc, z, gpr))
}

/// `out[i * ostride + (r - col_base)] = x[i] · W[r]` for `i < mi`, `r` in `r0..r1`.
///
/// For each panel of `PANEL` weight rows and `KC` columns: dequantize row by row (the same
/// kernels as the matrix-vector path), transpose into `[KC][PANEL]`, then run the micro-kernel
/// over all rows of x.
#[allow(clippy::too_many_arguments)]
fn gemm_block<I: Isa>(
    isa: I,
    src: &Src,
    cols: usize,
    x: &[f32],
    xn: &[f32],
    mi: usize,
    r0: usize,
    r1: usize,
    out: &mut [f32],
    ostride: usize,
    col_base: usize,
) {
    let np = I::PANEL;
    let kc_full = if cols <= KC_MAX { cols } else { KC_BLOCK };
    let mut buf = Vec::new();
    let mut scratch = Vec::new();
    let mut pt = vec![0f32; kc_full * np];
    for rb in (r0..r1).step_by(np) {
        let nb = np.min(r1 - rb);
        for k0 in (0..cols).step_by(kc_full) {
            let kc = kc_full.min(cols - k0);
            let (p, ps) = panel(isa, src, cols, rb, nb, k0, kc, &mut buf, &mut scratch);
            let pt = &mut pt[..kc * np];
            if nb < np {
                pt.fill(0.0);
            }
            isa.transpose(p, ps, nb, kc, pt);
            for i in (0..mi).step_by(I::MR) {
                let mr = I::MR.min(mi - i);
                let o = &mut out[i * ostride + rb - col_base..];
                let (x, p) = (&x[i * cols + k0..], &pt[..]);
                isa.kernel(MicroTile { x, xs: cols, mr, p, kc, out: o, os: ostride, nr: nb, accumulate: k0 > 0 });
            }
        }
    }
    if let Some(o) = src.outliers() {
        for i in 0..mi {
            let out = &mut out[i * ostride + r0 - col_base..][..r1 - r0];
            o.spmv_rows(r0, &xn[i * cols..(i + 1) * cols], out);
        }
    }
}

/// Threads for a product: matrix-vector products on the pool (crate `pool` module) unless tiny;
/// matrix-matrix ones on rayon's when the work pays for waking it; else 1.
fn threads(lin: &Weight, m: usize) -> usize {
    if m < GEMM_MIN_M {
        return if lin.rows() >= PARALLEL_MIN_GEMV_ROWS { crate::pool::threads() } else { 1 };
    }
    if m * lin.rows() * lin.cols() >= par::PARALLEL_MIN_MACS {
        par::threads()
    } else {
        1
    }
}

/// Whether `lin` is a quantized weight with fast kernels at AVX2 but not at AVX-512 (whose
/// chunks are twice as long).
#[cfg(target_arch = "x86_64")]
pub(crate) fn fast_only_at_avx2(lin: &Weight) -> bool {
    use crate::x86::{avx2::Avx2, avx512::Avx512};
    fn fast<I: Isa>(lin: &Weight) -> bool {
        Src::new::<I>(lin).interleave::<I>().is_some()
    }
    matches!(lin.kind(), WeightKind::Quant(_)) && !fast::<Avx512>(lin) && fast::<Avx2>(lin)
}

/// `out[m, rows] = x[m, cols] · Wᵀ` at level `isa`. Shapes are checked by the caller.
pub(crate) fn forward<I: Isa>(isa: I, lin: &Weight, x: &[f32], m: usize, out: &mut [f32]) {
    let (rows, cols) = (lin.rows(), lin.cols());
    let src = Src::new::<I>(lin);
    let xn = x;
    // The permuted rows of x go to this thread's buffer, kept from call to call (a prefill
    // would otherwise allocate and fault in megabytes per product); a nested call on the same
    // thread (rayon runs other jobs while this one waits) finds it taken and allocates.
    let mut buf = PERMUTED.take();
    let x = match src.interleave::<I>() {
        Some((lanes, per_lane)) => {
            if buf.len() < x.len() {
                buf.resize(x.len(), 0.0);
            }
            let p = &mut buf[..x.len()];
            // A prefill's rows are permuted on all threads (a serial pass would idle the others).
            let part = m.div_ceil(4 * par::threads()).max(1) * cols;
            par::for_each_chunk(p, part, par::pays(x.len()), |c, d| {
                for (s, d) in x[c * part..].chunks_exact(cols).zip(d.chunks_exact_mut(cols)) {
                    interleave(s, lanes, per_lane, d);
                }
            });
            &*p
        }
        None => x,
    };
    let nthreads = threads(lin, m);
    let par = nthreads > 1;
    if m < GEMM_MIN_M {
        // Equal chunks, a multiple of 4 rows, a few per thread so a slow thread is not the tail.
        let per = if par { rows.div_ceil(nthreads * 4).next_multiple_of(4) } else { rows };
        for ((xi, xni), oi) in x.chunks_exact(cols).zip(xn.chunks_exact(cols)).zip(out.chunks_exact_mut(rows)) {
            if par {
                crate::pool::for_each_chunk(oi, per, |c, o| gemv_rows(isa, &src, cols, xi, xni, c * per, o));
            } else {
                gemv_rows(isa, &src, cols, xi, xni, 0, oi);
            }
        }
    } else if !par || m >= ROW_SPLIT_MIN * nthreads {
        // Split by rows of x: out rows are contiguous, every thread sweeps all of W.
        let per = if par { m.div_ceil(nthreads) } else { m };
        par::for_each_chunk(out, per * rows, par, |c, o| {
            let mi = o.len() / rows;
            gemm_block(isa, &src, cols, &x[c * per * cols..], &xn[c * per * cols..], mi, 0, rows, o, rows, 0);
        });
    } else {
        // Few rows of x: split by panels of W into per-panel outputs, then scatter.
        let per = NB;
        let mut parts = vec![0.0; m * rows.next_multiple_of(per)];
        par::for_each_chunk(&mut parts, m * per, par, |c, o| {
            let r0 = c * per;
            if r0 < rows {
                gemm_block(isa, &src, cols, x, xn, m, r0, (r0 + per).min(rows), o, per, r0);
            }
        });
        for (c, part) in parts.chunks_exact(m * per).enumerate() {
            let r0 = c * per;
            let n = per.min(rows.saturating_sub(r0));
            for i in 0..m {
                out[i * rows + r0..][..n].copy_from_slice(&part[i * per..][..n]);
            }
        }
    }
    // Keep the larger of this call's buffer and one a nested call left, up to a bound.
    let nested = PERMUTED.take();
    let keep = if nested.capacity() > buf.capacity() { nested } else { buf };
    if keep.capacity() <= PERMUTED_KEEP {
        PERMUTED.set(keep);
    }
}

/// Largest permuted-x buffer (f32 values, 32 MiB) a thread keeps between products.
const PERMUTED_KEEP: usize = 8 << 20;

thread_local! {
    /// [`forward`]'s buffer for the permuted rows of x.
    static PERMUTED: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}
