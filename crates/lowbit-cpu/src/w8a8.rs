//! W8A8 (SmoothQuant, Xiao et al. 2023, §3 and §5.1 "O1"-style per-token dynamic activations):
//! int8 weights times int8 activations accumulated in i32, the kernel table every level
//! implements, the portable level, and the blocking and threading written once for all levels.
//!
//! **Weight layout** ([`Panels`]). Rows are grouped into panels of [`PANEL_ROWS`] = 16; columns
//! into quads of 4 (`kq = ceil(cols / 4)`). A panel stores, for each quad `q`, the 16 rows' four
//! codes of columns `4q..4q + 4`, one 64-byte line:
//!
//! ```text
//! panel p, quad q:  byte 4*i + j  =  code of W[16p + i, 4q + j]      (i < 16, j < 4)
//! codes are unsigned, u = w + 128 (the lowbit-core symmetric 8-bit code, zero point 128)
//! padding rows and columns hold u = 128 (w = 0)
//! ```
//!
//! One 64-byte load is what `vpdpbusd` multiplies (u8 x s8, sums of 4 into 16 i32 lanes = the
//! panel's 16 outputs) against four activation codes broadcast to every lane, so no horizontal
//! reduction is needed; the AVX2 level widens the same line to i16 and uses `vpmaddwd`.
//!
//! **Offset correction.** Weights enter the kernels as `u = w + 128`, so the integer sum they
//! produce is `Σ u·x = Σ w·x + 128·Σ x`; the activation row's code sum is known from quantization
//! and subtracted once per output. All i32 arithmetic wraps, and the true `Σ w·x` fits in i32
//! (`|w·x| <= 128·127` and `cols <= MAX_COLS`), so the result is exact whatever the order of
//! the terms: every level returns the same i32, then the same two f32 multiplies
//! `(acc as f32 * x_scale) * w_scale`, hence bit-identical outputs.

use crate::isa::Portable;
use crate::par;
use crate::scalar::{absmax_bits, quantize_i8, scale_from_absmax_bits};
use crate::{CpuError, Result};

/// Weight rows per panel (one 64-byte line per column quad).
pub(crate) const PANEL_ROWS: usize = 16;
/// Columns per quad (the four codes `vpdpbusd` sums per lane).
pub(crate) const QUAD: usize = 4;
/// Bytes of one panel per column quad.
pub(crate) const LINE: usize = PANEL_ROWS * QUAD;
/// Longest row: `128 * 127 * MAX_COLS < 2^31`, so the exact i32 dot product cannot overflow.
pub const W8A8_MAX_COLS: usize = 1 << 17;

/// Weight bytes below which a W8A8 matrix-vector product runs on the calling thread. The integer
/// kernels stream weights about 4x faster per core than the f32-activation ones (one core reads
/// SmolLM2's 1536x576 from DRAM in ~35 µs, near the 2-core triad bandwidth of the reference
/// machine), so waking rayon's workers pays off only for larger matrices than
/// [`crate::driver::PARALLEL_MIN_GEMV_BYTES`]: on that 2-core machine two threads measured
/// slower for 1536x576 and 576x1536.
const PARALLEL_MIN_GEMV_BYTES: usize = 4 << 20;
/// Token rows below which activation quantization stays on the calling thread.
#[cfg(feature = "parallel")]
const PARALLEL_MIN_QUANT_M: usize = 16;

/// Packed weight panels as the kernels see them (see the module docs).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Panels<'a> {
    /// `ceil(rows / 16)` panels of `kq * LINE` bytes.
    pub codes: &'a [u8],
    /// Column quads per row.
    pub kq: usize,
    /// Per-row weight scales, padded with zeros to a whole number of panels.
    pub scales: &'a [f32],
    /// Valid rows.
    pub rows: usize,
    /// Columns (codes per row before padding to quads).
    pub cols: usize,
}

impl Panels<'_> {
    /// Bytes per panel.
    #[inline]
    pub(crate) fn panel_bytes(&self) -> usize {
        self.kq * LINE
    }
    /// Panels.
    #[inline]
    pub(crate) fn count(&self) -> usize {
        self.rows.div_ceil(PANEL_ROWS)
    }
    /// Bytes a forward pass reads: the packed codes and the f32 scales of the valid rows.
    #[inline]
    pub(crate) fn nbytes(&self) -> usize {
        self.codes.len() + 4 * self.rows
    }
    /// Valid rows of panels `p0..p1`, counted from row `16 * p0`.
    #[inline]
    pub(crate) fn valid_rows(&self, p0: usize, p1: usize) -> usize {
        (p1 * PANEL_ROWS).min(self.rows) - p0 * PANEL_ROWS
    }
}

/// Quantized activations of some tokens.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Acts<'a, A> {
    /// `kp = 4 * kq` codes per token (zeros past `cols`).
    pub codes: &'a [A],
    /// Codes per token.
    pub kp: usize,
    /// Per-token scale.
    pub scales: &'a [f32],
    /// Per-token `Σ codes` (the offset correction).
    pub sums: &'a [i32],
}

impl<'a, A> Acts<'a, A> {
    /// Tokens.
    #[inline]
    pub(crate) fn m(&self) -> usize {
        self.scales.len()
    }
    /// Tokens `t0..t1`.
    fn tokens(&self, t0: usize, t1: usize) -> Acts<'a, A> {
        Acts {
            codes: &self.codes[t0 * self.kp..t1 * self.kp],
            kp: self.kp,
            scales: &self.scales[t0..t1],
            sums: &self.sums[t0..t1],
        }
    }
}

/// One instruction-set level's W8A8 kernels.
pub(crate) trait W8a8Isa: Copy + Send + Sync {
    /// The activation codes' storage: i8, or i16 for levels that multiply in 16 bits.
    type Act: Copy + Default + Send + Sync;

    /// Quantizes one token: `codes[c] = quantize_i8(x[c], scale)` for `c < x.len()`, zero up to
    /// `codes.len()` (a multiple of 4, `>= x.len()`). Returns `(scale, Σ codes)`, or `None` when
    /// `x` holds a NaN or an infinity.
    fn quantize_row(self, x: &[f32], codes: &mut [Self::Act]) -> Option<(f32, i32)>;

    /// `out[t * os + r - 16 * p0] = (Σ_c x[t, c] w[r, c]) as f32 * x_scale[t] * w_scale[r]` for
    /// every token `t` of `a` and every valid row `r` of panels `p0..p1`; nothing else of `out`
    /// is written.
    fn gemm(self, w: &Panels, p0: usize, p1: usize, a: &Acts<Self::Act>, out: &mut [f32], os: usize);
}

/// Checks the slices a level's [`W8a8Isa::gemm`] reads and writes, so its `unsafe` code can rely
/// on them.
pub(crate) fn check_gemm_bounds<A>(w: &Panels, p0: usize, p1: usize, a: &Acts<A>, out: &[f32], os: usize) {
    let m = a.m();
    assert!(p0 < p1 && p1 <= w.count(), "panels {p0}..{p1} of {}", w.count());
    assert!(w.codes.len() >= p1 * w.panel_bytes() && w.scales.len() >= p1 * PANEL_ROWS);
    assert!(a.kp == w.kq * QUAD && a.codes.len() >= m * a.kp && a.sums.len() == m);
    let valid = w.valid_rows(p0, p1);
    assert!(m == 0 || ((valid <= os || m == 1) && out.len() >= (m - 1) * os + valid), "output too short");
}

impl W8a8Isa for Portable {
    type Act = i8;

    fn quantize_row(self, x: &[f32], codes: &mut [i8]) -> Option<(f32, i32)> {
        let scale = scale_from_absmax_bits(absmax_bits(x))?;
        let (head, tail) = codes.split_at_mut(x.len());
        let mut sum = 0i32;
        for (c, &v) in head.iter_mut().zip(x) {
            *c = quantize_i8(v, scale);
            sum += i32::from(*c);
        }
        tail.fill(0);
        Some((scale, sum))
    }

    fn gemm(self, w: &Panels, p0: usize, p1: usize, a: &Acts<i8>, out: &mut [f32], os: usize) {
        check_gemm_bounds(w, p0, p1, a, out, os);
        let pb = w.panel_bytes();
        for p in p0..p1 {
            let panel = &w.codes[p * pb..(p + 1) * pb];
            let nr = w.valid_rows(p, p + 1);
            for t in 0..a.m() {
                let xt = &a.codes[t * a.kp..(t + 1) * a.kp];
                let mut acc = [0i32; PANEL_ROWS];
                for (line, xq) in panel.chunks_exact(LINE).zip(xt.chunks_exact(QUAD)) {
                    for (acc, wr) in acc.iter_mut().zip(line.chunks_exact(QUAD)) {
                        for (&u, &x) in wr.iter().zip(xq) {
                            *acc += (i32::from(u) - 128) * i32::from(x);
                        }
                    }
                }
                let o = &mut out[t * os + (p - p0) * PANEL_ROWS..][..nr];
                for ((o, &acc), &ws) in o.iter_mut().zip(&acc).zip(&w.scales[p * PANEL_ROWS..]) {
                    *o = acc as f32 * a.scales[t] * ws;
                }
            }
        }
    }
}

/// Threads for a product: the rayon pool when the work pays for waking it, else 1 (matrix-matrix:
/// the threshold of the f32-activation driver).
fn threads(w: &Panels, m: usize) -> usize {
    let big =
        if m == 1 { w.nbytes() >= PARALLEL_MIN_GEMV_BYTES } else { m * w.rows * w.cols >= par::PARALLEL_MIN_MACS };
    if big {
        par::threads()
    } else {
        1
    }
}

/// Quantizes every token of `x` into `codes` (`kp` per token), `scales` and `sums`; the first
/// token found holding a non-finite value is an error.
fn quantize_tokens<I: W8a8Isa>(
    isa: I,
    x: &[f32],
    cols: usize,
    codes: &mut [I::Act],
    scales: &mut [f32],
    sums: &mut [i32],
    par: bool,
) -> Result<()> {
    let kp = codes.len() / scales.len();
    let row = |t: usize, c: &mut [I::Act], s: &mut f32, q: &mut i32| -> std::result::Result<(), usize> {
        let xt = &x[t * cols..(t + 1) * cols];
        let (scale, sum) = isa.quantize_row(xt, c).ok_or(t)?;
        (*s, *q) = (scale, sum);
        Ok(())
    };
    #[cfg(feature = "parallel")]
    if par && scales.len() >= PARALLEL_MIN_QUANT_M {
        use rayon::prelude::*;
        return codes
            .par_chunks_mut(kp)
            .zip(scales.par_iter_mut())
            .zip(sums.par_iter_mut())
            .enumerate()
            .try_for_each(|(t, ((c, s), q))| row(t, c, s, q))
            .map_err(|t| non_finite(x, cols, t));
    }
    let _ = par;
    codes
        .chunks_mut(kp)
        .zip(scales.iter_mut())
        .zip(sums.iter_mut())
        .enumerate()
        .try_for_each(|(t, ((c, s), q))| row(t, c, s, q))
        .map_err(|t| non_finite(x, cols, t))
}

/// The error for token `t`, which holds a NaN or an infinity.
pub(crate) fn non_finite(x: &[f32], cols: usize, t: usize) -> CpuError {
    let row = &x[t * cols..(t + 1) * cols];
    let j = row.iter().position(|v| !v.is_finite()).unwrap_or(0);
    CpuError::NonFiniteActivation { op: "Int8Linear::forward", index: t * cols + j, value: row[j] }
}

/// `out[m, rows] = x[m, cols] · Wᵀ` in W8A8 at level `isa`. Shapes are checked by the caller.
///
/// Activations are quantized per token first (threaded over tokens for large `m`). The product
/// is then split over threads by tokens when every thread gets at least [`TOKEN_SPLIT_MIN`] of
/// them (each sweeps all of W: compute bound), else by panels of W (memory bound: each thread
/// streams its share of W once).
pub(crate) fn forward<I: W8a8Isa>(isa: I, w: &Panels, x: &[f32], m: usize, out: &mut [f32]) -> Result<()> {
    let (rows, cols) = (w.rows, w.cols);
    let kp = w.kq * QUAD;
    let nthreads = threads(w, m);
    let par = nthreads > 1;
    let mut codes = vec![I::Act::default(); m * kp];
    let mut scales = vec![0f32; m];
    let mut sums = vec![0i32; m];
    quantize_tokens(isa, x, cols, &mut codes, &mut scales, &mut sums, par)?;
    let acts = Acts { codes: &codes, kp, scales: &scales, sums: &sums };
    let np = w.count();
    if !par {
        isa.gemm(w, 0, np, &acts, out, rows);
    } else if m >= TOKEN_SPLIT_MIN * nthreads {
        let per = m.div_ceil(nthreads);
        par::for_each_chunk(out, per * rows, par, |c, o| {
            let t0 = c * per;
            isa.gemm(w, 0, np, &acts.tokens(t0, t0 + o.len() / rows), o, rows);
        });
    } else {
        // A few chunks per thread so a slow thread is not the tail.
        let pp = np.div_ceil(nthreads * 4).max(1);
        let width = pp * PANEL_ROWS;
        if m == 1 {
            par::for_each_chunk(out, width, par, |c, o| isa.gemm(w, c * pp, ((c + 1) * pp).min(np), &acts, o, width));
        } else {
            let chunks = np.div_ceil(pp);
            let mut parts = vec![0f32; chunks * m * width];
            par::for_each_chunk(&mut parts, m * width, par, |c, o| {
                isa.gemm(w, c * pp, ((c + 1) * pp).min(np), &acts, o, width);
            });
            for (c, part) in parts.chunks_exact(m * width).enumerate() {
                let r0 = c * width;
                let n = width.min(rows - r0);
                for t in 0..m {
                    out[t * rows + r0..][..n].copy_from_slice(&part[t * width..][..n]);
                }
            }
        }
    }
    Ok(())
}

/// Tokens per thread from which the product is split over tokens rather than over W (one full
/// token tile of the widest kernel).
const TOKEN_SPLIT_MIN: usize = 12;
