//! Integer weights times int8-quantized activations: the decode path of 4- and 8-bit weights.
//!
//! **Activations** are quantized once per product (and once for several products sharing an
//! input, [`forward_many`]) in blocks of [`QK`] = 32 values, as llama.cpp's Q8_0:
//!
//! ```text
//! d[b]  = max_{k in b} |x[k]| / 127           (1 for a block of zeros; the W8A8 rule, scalar.rs)
//! q[k]  = clamp(round_ties_even(x[k] / d[b]), -127, 127)        (i8)
//! s[b]  = Σ_{k in b} q[k]                                        (i32, for the zero points)
//! ```
//!
//! **The product** of row `r` (codes `c`, per group `g` a scale `sc[r,g]` and zero point `z[r,g]`;
//! groups are whole blocks, the last one of a row possibly shorter) is, per token:
//!
//! ```text
//! dot[b] = Σ_{k in b} c[r,k] * q[k]  -  z[r,g] * s[b]           (i32, exact)
//! ga[g]  = fma(dot[b] as f32, d[b], ga[g])  over the blocks b of g, in order, from 0
//! y[r]   = fma(ga[g], sc[r,g], y[r])        over the groups g, in order, from 0
//! ```
//!
//! [`gemv_reference`] is that definition, on the QTensor as stored; every level returns its
//! outputs bit for bit (the i32 sums are exact, then every lane performs the same fused
//! multiply-adds in the same order).
//!
//! **Weight layout** ([`PackedInt`], built once per `Linear`). Rows are grouped in panels of 16,
//! so one 512-bit `vpdpbusd` (u8 x i8, sums of 4 into 16 i32 lanes) computes a 4-column piece of
//! 16 rows against 4 activation codes broadcast to every lane (ik_llama.cpp's row-interleaved
//! repacking, 16 rows wide). Per panel, per block of 32 columns:
//!
//! ```text
//! 8-bit: 8 lines of 64 bytes; line l, byte 4i+j = c[16p+i, 32b + 4l + j]
//! 4-bit: 4 lines of 64 bytes; line l, byte 4i+j = c[16p+i, 32b + 4l + j]
//!                                               | c[16p+i, 32b + 16 + 4l + j] << 4
//! scales: f32 [panel][group][16]   zeros: u8 [panel][group][16] (or one constant)
//! padding rows: codes 0, scales 0 (their outputs are never written)
//! ```
//!
//! The 256-bit levels read each line as two halves of 8 rows. AVX2 without VNNI uses
//! `vpmaddubsw`, which adds pairs of u8 x i8 products into saturating i16: safe for 4-bit codes
//! (`2 * 15 * 127`, and eight such sums still fit), not for 8-bit, whose codes it reads as
//! `v = c - 128` and multiplies as `|v| * sign(q, v)` (pairs at most `2 * 128 * 127`), adding
//! `128 * s[b]` back through the zero point.

use crate::isa::Portable;
use crate::scalar::{absmax_bits, quantize_i8, scale_from_absmax_bits};
use crate::weight::{Weight, WeightKind};
use crate::KernelLevel;
use lowbit_core::pack::code_at;
use lowbit_core::{Bits, Granularity, QParams, QTensor, Scheme};
use std::sync::{Mutex, OnceLock};

/// Activation values per int8 block (one scale, one code sum).
pub(crate) const QK: usize = 32;
/// Weight rows per panel.
pub(crate) const PANEL: usize = 16;
/// Chunks per thread a product is cut into (a descheduled thread's share is taken over).
const CHUNKS_PER_THREAD: usize = 3;
/// Fewest panels in a chunk.
const MIN_CHUNK_PANELS: usize = 2;
/// Tokens per thread from which a product is split over tokens (each thread sweeps every
/// weight) rather than over panels.
const TOKEN_SPLIT_MIN: usize = 16;

/// How products with integer weights treat their activations (`LOWBIT_ACTIVATIONS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activations {
    /// int8 blocks for every product with 4- or 8-bit integer weights where the kernel level
    /// has integer kernels (AVX2 and up), as llama.cpp quantizes activations to Q8_0; f32 at the
    /// scalar level. Evaluation (perplexity) computes in f32 ([`crate::Cpu`]'s
    /// `for_evaluation`), as the protocol asks.
    Auto,
    /// int8 blocks for every product with 4- or 8-bit integer weights, at every level
    /// (to measure their quality cost, e.g. the perplexity).
    Int8,
    /// f32 activations everywhere (the reference path).
    F32,
}

impl Activations {
    /// Name as accepted by `LOWBIT_ACTIVATIONS`.
    pub fn name(self) -> &'static str {
        match self {
            Activations::Auto => "auto",
            Activations::Int8 => "int8",
            Activations::F32 => "f32",
        }
    }
    /// Parses a `LOWBIT_ACTIVATIONS` value.
    pub fn parse(value: &str) -> Option<Activations> {
        match value.trim().to_ascii_lowercase().as_str() {
            "auto" | "" => Some(Activations::Auto),
            "int8" => Some(Activations::Int8),
            "f32" => Some(Activations::F32),
            _ => None,
        }
    }
    /// Whether a product at `level` quantizes its activations.
    pub(crate) fn int8_for(self, level: KernelLevel) -> bool {
        match self {
            Activations::Auto => level != KernelLevel::Scalar,
            Activations::Int8 => true,
            Activations::F32 => false,
        }
    }
}

/// The mode in use: `LOWBIT_ACTIVATIONS` (`auto`, `int8`, `f32`) if set (an unknown value falls
/// back to `auto` with a warning on stderr), else `auto`. Read once per process.
pub fn activations() -> Activations {
    static MODE: OnceLock<Activations> = OnceLock::new();
    *MODE.get_or_init(|| match std::env::var("LOWBIT_ACTIVATIONS") {
        Ok(v) => Activations::parse(&v).unwrap_or_else(|| {
            eprintln!("lowbit: LOWBIT_ACTIVATIONS={v} is not auto, int8 or f32; using auto");
            Activations::Auto
        }),
        Err(_) => Activations::Auto,
    })
}

/// Zero points of a packed weight.
#[derive(Clone, Debug)]
pub(crate) enum Zp {
    /// The same for every group (symmetric schemes, per-tensor asymmetric).
    Const(u8),
    /// `[panel][group][16]`.
    PerGroup(Vec<u8>),
}

/// An integer weight repacked for the int8-activation kernels (module docs).
#[derive(Clone)]
pub(crate) struct PackedInt {
    pub rows: usize,
    pub cols: usize,
    /// 4 or 8.
    pub bits: u32,
    /// Blocks of 32 columns per row.
    pub nblk: usize,
    /// Blocks per group (the last group of a row may have fewer).
    pub bpg: usize,
    /// Groups per row.
    pub gpr: usize,
    /// `[panel][block][lines]`, `64 * bits` bytes per panel and block.
    pub codes: Vec<u8>,
    /// `[panel][group][16]`.
    pub scales: Vec<f32>,
    pub zeros: Zp,
}

impl std::fmt::Debug for PackedInt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedInt {{ {}x{}, {} bits, {} groups per row }}", self.rows, self.cols, self.bits, self.gpr)
    }
}

impl PackedInt {
    /// Bytes of codes of one panel and block.
    #[inline]
    pub(crate) fn block_bytes(&self) -> usize {
        64 * self.bits as usize
    }
    /// Panels.
    #[inline]
    pub(crate) fn panels(&self) -> usize {
        self.rows.div_ceil(PANEL)
    }

    /// Repacks an integer weight the kernels take: 4 or 8 bits, rows a multiple of 32 long,
    /// groups a multiple of 32 (or per channel, per tensor). `None` for anything else.
    pub(crate) fn from_weight(w: &Weight) -> Option<Self> {
        let WeightKind::Quant(q) = w.kind() else { return None };
        Self::from_qtensor(q)
    }

    /// Float zero points (HQQ) are declined: the exact i32 sums need integer zeros.
    pub(crate) fn from_qtensor(q: &QTensor) -> Option<Self> {
        let Scheme::Int(s) = q.scheme() else { return None };
        let QParams::Int { scales, zeros } = q.params() else { return None };
        // Outliers are added on the f32 path only.
        if q.outliers().is_some() {
            return None;
        }
        let zeros = match zeros {
            Some(z) => Some(z.codes()?),
            None => None,
        };
        let (rows, cols) = q.matrix_dims();
        if !matches!(s.bits, Bits::B4 | Bits::B8) || cols % QK != 0 || rows == 0 {
            return None;
        }
        let group = match s.granularity {
            Granularity::Group(g) if g % QK == 0 => g,
            Granularity::Group(_) => return None,
            Granularity::PerChannel | Granularity::PerTensor => cols,
        };
        let per_tensor = s.granularity == Granularity::PerTensor;
        let (nblk, bpg, gpr) = (cols / QK, group / QK, cols.div_ceil(group));
        let bits = s.bits.get();
        let np = rows.div_ceil(PANEL);
        let bb = 64 * bits as usize;
        let mut codes = vec![0u8; np * nblk * bb];
        let mut packed_scales = vec![0f32; np * gpr * PANEL];
        let zeros = match zeros {
            None => Zp::Const(s.bits.symmetric_zero()),
            Some(z) if per_tensor => Zp::Const(z[0]),
            Some(_) => Zp::PerGroup(vec![0u8; np * gpr * PANEL]),
        };
        let mut zeros = zeros;
        let mut row = vec![0u8; cols];
        let row_bytes = cols * bits as usize / 8;
        for r in 0..rows {
            let (p, i) = (r / PANEL, r % PANEL);
            lowbit_core::pack::unpack_into(&q.codes()[r * row_bytes..], s.bits, &mut row);
            for b in 0..nblk {
                let blk = &mut codes[(p * nblk + b) * bb..][..bb];
                let src = &row[b * QK..(b + 1) * QK];
                if bits == 8 {
                    for (l, quad) in src.chunks_exact(4).enumerate() {
                        blk[l * 64 + 4 * i..][..4].copy_from_slice(quad);
                    }
                } else {
                    for l in 0..4 {
                        for j in 0..4 {
                            blk[l * 64 + 4 * i + j] = src[4 * l + j] | (src[16 + 4 * l + j] << 4);
                        }
                    }
                }
            }
            for g in 0..gpr {
                let src = if per_tensor { 0 } else { r * gpr + g };
                packed_scales[(p * gpr + g) * PANEL + i] = scales.get(src);
                if let (Zp::PerGroup(dst), Some(z)) = (&mut zeros, zeros_of(q)) {
                    dst[(p * gpr + g) * PANEL + i] = z[src];
                }
            }
        }
        Some(PackedInt { rows, cols, bits, nblk, bpg, gpr, codes, scales: packed_scales, zeros })
    }
}

fn zeros_of(q: &QTensor) -> Option<&[u8]> {
    match q.params() {
        QParams::Int { zeros: Some(z), .. } => z.codes(),
        _ => None,
    }
}

/// Quantized activations of some tokens (`cols` codes, `cols / 32` scales and sums per token).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Acts<'a> {
    pub codes: &'a [i8],
    pub scales: &'a [f32],
    pub sums: &'a [i32],
    pub cols: usize,
}

impl<'a> Acts<'a> {
    /// Tokens.
    #[inline]
    pub(crate) fn m(&self) -> usize {
        self.codes.len() / self.cols
    }
    /// Tokens `t0..t1`.
    pub(crate) fn tokens(&self, t0: usize, t1: usize) -> Acts<'a> {
        let nb = self.cols / QK;
        Acts {
            codes: &self.codes[t0 * self.cols..t1 * self.cols],
            scales: &self.scales[t0 * nb..t1 * nb],
            sums: &self.sums[t0 * nb..t1 * nb],
            cols: self.cols,
        }
    }
}

/// Quantizes one block of 32 activations (module docs); `None` if it holds a NaN or infinity.
pub(crate) fn quantize_block_ref(x: &[f32], q: &mut [i8]) -> Option<(f32, i32)> {
    let d = scale_from_absmax_bits(absmax_bits(x))?;
    let mut s = 0;
    for (q, &v) in q.iter_mut().zip(x) {
        *q = quantize_i8(v, d);
        s += i32::from(*q);
    }
    Some((d, s))
}

/// The definition of the product (module docs), on the weight as stored: `out[t * rows + r]`
/// for every token of `a`. Slow; the oracle of the tests.
pub(crate) fn gemv_reference(q: &QTensor, a: &Acts, out: &mut [f32]) {
    let Scheme::Int(s) = q.scheme() else { panic!("gemv_reference: integer weights only") };
    let QParams::Int { scales, zeros } = q.params() else { unreachable!() };
    let (rows, cols) = q.matrix_dims();
    let group = match s.granularity {
        Granularity::Group(g) => g,
        _ => cols,
    };
    let per_tensor = s.granularity == Granularity::PerTensor;
    let gpr = cols.div_ceil(group);
    let nb = cols / QK;
    for t in 0..a.m() {
        let xq = &a.codes[t * cols..(t + 1) * cols];
        for r in 0..rows {
            let mut y = 0f32;
            for g in 0..gpr {
                let pi = if per_tensor { 0 } else { r * gpr + g };
                let z = zeros.as_ref().map_or(i32::from(s.bits.symmetric_zero()), |z| {
                    i32::from(z.codes().expect("the int8-activation path has integer zeros")[pi])
                });
                let mut ga = 0f32;
                for b in g * group / QK..((g + 1) * group / QK).min(nb) {
                    let dot: i32 = (b * QK..(b + 1) * QK)
                        .map(|k| i32::from(code_at(q.codes(), s.bits, r * cols + k)) * i32::from(xq[k]))
                        .sum::<i32>()
                        - z * a.sums[t * nb + b];
                    ga = (dot as f32).mul_add(a.scales[t * nb + b], ga);
                }
                y = ga.mul_add(scales.get(pi), y);
            }
            out[t * rows + r] = y;
        }
    }
}

/// One level's int8-activation kernels.
pub(crate) trait Q8Isa: Copy + Send + Sync {
    /// Quantizes one token (`x.len()` a multiple of 32) into `codes`, `scales`, `sums`
    /// (module docs); false if it holds a NaN or an infinity.
    fn quantize_row(self, x: &[f32], codes: &mut [i8], scales: &mut [f32], sums: &mut [i32]) -> bool;
    /// `out[t * os + r - 16 * p0] = y[t, r]` for every token `t` of `a` and every valid row `r`
    /// of panels `p0..p1`; nothing else of `out` is written.
    fn gemv(self, w: &PackedInt, p0: usize, p1: usize, a: &Acts, out: &mut [f32], os: usize);
}

/// Checks the slices a level's [`Q8Isa::quantize_row`] reads and writes, so its `unsafe` code can
/// rely on them.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) fn check_quantize_bounds(x: &[f32], codes: &[i8], scales: &[f32], sums: &[i32]) {
    let nb = x.len() / QK;
    assert!(x.len().is_multiple_of(QK) && codes.len() >= x.len() && scales.len() >= nb && sums.len() >= nb);
}

/// Checks the slices a level's [`Q8Isa::gemv`] reads and writes, so its `unsafe` code can rely
/// on them.
pub(crate) fn check_gemv_bounds(w: &PackedInt, p0: usize, p1: usize, a: &Acts, out: &[f32], os: usize) {
    let m = a.m();
    let nb = w.nblk;
    assert!(p0 < p1 && p1 <= w.panels(), "panels {p0}..{p1} of {}", w.panels());
    assert!(w.codes.len() >= p1 * nb * w.block_bytes() && w.scales.len() >= p1 * w.gpr * PANEL);
    if let Zp::PerGroup(z) = &w.zeros {
        assert!(z.len() >= p1 * w.gpr * PANEL);
    }
    assert!(w.bpg >= 1 && w.gpr == nb.div_ceil(w.bpg) && matches!(w.bits, 4 | 8));
    assert!(a.cols == w.cols && w.cols == nb * QK && a.codes.len() == m * a.cols);
    assert!(a.scales.len() == m * nb && a.sums.len() == m * nb);
    let valid = (p1 * PANEL).min(w.rows) - p0 * PANEL;
    assert!(m == 0 || ((valid <= os || m == 1) && out.len() >= (m - 1) * os + valid), "output too short");
}

impl Q8Isa for Portable {
    fn quantize_row(self, x: &[f32], codes: &mut [i8], scales: &mut [f32], sums: &mut [i32]) -> bool {
        for ((xb, qb), (d, s)) in x.chunks_exact(QK).zip(codes.chunks_exact_mut(QK)).zip(scales.iter_mut().zip(sums)) {
            match quantize_block_ref(xb, qb) {
                Some(v) => (*d, *s) = v,
                None => return false,
            }
        }
        true
    }

    fn gemv(self, w: &PackedInt, p0: usize, p1: usize, a: &Acts, out: &mut [f32], os: usize) {
        check_gemv_bounds(w, p0, p1, a, out, os);
        let (nb, bb) = (w.nblk, w.block_bytes());
        for p in p0..p1 {
            let valid = (w.rows - p * PANEL).min(PANEL);
            for t in 0..a.m() {
                let xq = &a.codes[t * w.cols..(t + 1) * w.cols];
                let mut y = [0f32; PANEL];
                for g in 0..w.gpr {
                    let gi = (p * w.gpr + g) * PANEL;
                    let mut ga = [0f32; PANEL];
                    for b in g * w.bpg..((g + 1) * w.bpg).min(nb) {
                        let blk = &w.codes[(p * nb + b) * bb..][..bb];
                        let x = &xq[b * QK..(b + 1) * QK];
                        let (d, s) = (a.scales[t * nb + b], a.sums[t * nb + b]);
                        for i in 0..PANEL {
                            let mut dot = 0i32;
                            for l in 0..QK / 4 {
                                for j in 0..4 {
                                    let c = if w.bits == 8 {
                                        blk[l * 64 + 4 * i + j]
                                    } else {
                                        let byte = blk[(l % 4) * 64 + 4 * i + j];
                                        if l < 4 {
                                            byte & 15
                                        } else {
                                            byte >> 4
                                        }
                                    };
                                    dot += i32::from(c) * i32::from(x[4 * l + j]);
                                }
                            }
                            let z = match &w.zeros {
                                Zp::Const(z) => *z,
                                Zp::PerGroup(zs) => zs[gi + i],
                            };
                            let dot = dot - i32::from(z) * s;
                            ga[i] = (dot as f32).mul_add(d, ga[i]);
                        }
                    }
                    for i in 0..PANEL {
                        y[i] = ga[i].mul_add(w.scales[gi + i], y[i]);
                    }
                }
                out[t * os + (p - p0) * PANEL..][..valid].copy_from_slice(&y[..valid]);
            }
        }
    }
}

/// The int8-activation kernels a kernel level runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Q8Level {
    /// Portable Rust (the definition's arithmetic on the packed layout).
    Portable,
    /// AVX2 `vpmaddubsw`.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// AVX-VNNI (256-bit `vpdpbusd`).
    #[cfg(target_arch = "x86_64")]
    AvxVnni,
    /// AVX512-VNNI (512-bit `vpdpbusd`).
    #[cfg(target_arch = "x86_64")]
    Avx512Vnni,
    /// wasm32 SIMD128 (`i32x4_dot_i16x8`; relaxed SIMD's `i32x4_relaxed_dot_i8x16_i7x16_add`
    /// for 4-bit codes in the relaxed build).
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    Simd128,
}

/// Whether `LOWBIT_VNNI=0` turned the VNNI kernels off (to measure the `vpmaddubsw` ones on a
/// CPU with VNNI).
#[cfg(target_arch = "x86_64")]
fn vnni_allowed() -> bool {
    static ALLOWED: OnceLock<bool> = OnceLock::new();
    *ALLOWED.get_or_init(|| std::env::var("LOWBIT_VNNI").map_or(true, |v| v.trim() != "0"))
}

impl Q8Level {
    /// The best int8 kernels of `level` on this CPU: AVX-512 uses VNNI where present, else the
    /// 256-bit kernels; AVX2 uses AVX-VNNI where present, else `vpmaddubsw`.
    pub(crate) fn of(level: KernelLevel) -> Q8Level {
        #[cfg(target_arch = "x86_64")]
        {
            let vnni = vnni_allowed();
            if level == KernelLevel::Avx512 && vnni && crate::x86::q8_avx512::Vnni512::new().is_some() {
                return Q8Level::Avx512Vnni;
            }
            if level >= KernelLevel::Avx2 {
                if vnni && crate::x86::q8_avx2::AvxVnni::new().is_some() {
                    return Q8Level::AvxVnni;
                }
                if crate::x86::q8_avx2::Avx2::new().is_some() {
                    return Q8Level::Avx2;
                }
            }
        }
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        if level == KernelLevel::Simd128 {
            return Q8Level::Simd128;
        }
        let _ = level;
        Q8Level::Portable
    }

    /// Every level this CPU runs (for tests and benchmarks).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn available() -> Vec<Q8Level> {
        #[allow(unused_mut)]
        let mut v = vec![Q8Level::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if crate::x86::q8_avx2::Avx2::new().is_some() {
                v.push(Q8Level::Avx2);
            }
            if crate::x86::q8_avx2::AvxVnni::new().is_some() {
                v.push(Q8Level::AvxVnni);
            }
            if crate::x86::q8_avx512::Vnni512::new().is_some() {
                v.push(Q8Level::Avx512Vnni);
            }
        }
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        v.push(Q8Level::Simd128);
        v
    }
}

/// Runs `$body` with `$isa` bound to the kernels of `$level`.
macro_rules! with_q8 {
    ($level:expr, $isa:ident => $body:expr) => {
        match $level {
            Q8Level::Portable => {
                let $isa = Portable;
                $body
            }
            #[cfg(target_arch = "x86_64")]
            Q8Level::Avx2 => {
                let $isa = crate::x86::q8_avx2::Avx2::new().expect("checked by Q8Level::of");
                $body
            }
            #[cfg(target_arch = "x86_64")]
            Q8Level::AvxVnni => {
                let $isa = crate::x86::q8_avx2::AvxVnni::new().expect("checked by Q8Level::of");
                $body
            }
            #[cfg(target_arch = "x86_64")]
            Q8Level::Avx512Vnni => {
                let $isa = crate::x86::q8_avx512::Vnni512::new().expect("checked by Q8Level::of");
                $body
            }
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            Q8Level::Simd128 => {
                let $isa = crate::wasm::q8::Simd128Q8::new().expect("always in a +simd128 module");
                $body
            }
        }
    };
}

/// Quantizes every token of `x` (`m` rows of `cols`) at `level`; `None` if one holds a NaN or an
/// infinity.
pub(crate) fn quantize(level: Q8Level, x: &[f32], cols: usize) -> Option<(Vec<i8>, Vec<f32>, Vec<i32>)> {
    let m = x.len() / cols;
    let nb = cols / QK;
    let (mut codes, mut scales, mut sums) = (vec![0i8; m * cols], vec![0f32; m * nb], vec![0i32; m * nb]);
    let ok = with_q8!(level, isa => {
        let quant = |t0: usize, codes: &mut [i8], scales: &mut [f32], sums: &mut [i32]| {
            codes
                .chunks_exact_mut(cols)
                .zip(scales.chunks_exact_mut(nb).zip(sums.chunks_exact_mut(nb)))
                .enumerate()
                .all(|(i, (c, (s, q)))| isa.quantize_row(&x[(t0 + i) * cols..(t0 + i + 1) * cols], c, s, q))
        };
        if m < TOKEN_SPLIT_MIN || crate::pool::threads() <= 1 {
            quant(0, &mut codes, &mut scales, &mut sums)
        } else {
            let per = m.div_ceil(crate::pool::threads() * CHUNKS_PER_THREAD);
            let parts: Vec<_> = codes
                .chunks_mut(per * cols)
                .zip(scales.chunks_mut(per * nb).zip(sums.chunks_mut(per * nb)))
                .map(|(c, (s, q))| Mutex::new((c, s, q, true)))
                .collect();
            crate::pool::run(parts.len(), &|i| {
                let mut g = parts[i].lock().unwrap_or_else(|e| e.into_inner());
                let (c, s, q, ok) = &mut *g;
                *ok = quant(i * per, c, s, q);
            });
            parts.into_iter().all(|p| p.into_inner().unwrap_or_else(|e| e.into_inner()).3)
        }
    });
    ok.then_some((codes, scales, sums))
}

/// Where a chunk of a fused product writes.
enum ChunkOut<'a> {
    /// Straight into the product's output (one token, or a token split).
    Direct(&'a mut [f32]),
    /// Into a buffer `[m][16 * panels]`, copied into place afterwards.
    Temp(Vec<f32>),
}

struct Chunk<'a> {
    /// Which weight.
    w: usize,
    /// Panels `p0..p1` (all of them for a token split).
    p0: usize,
    p1: usize,
    /// Tokens `t0..t1`.
    t0: usize,
    t1: usize,
    out: Mutex<ChunkOut<'a>>,
}

/// `outs[i][m, rows_i] = x[m, cols] · W_iᵀ` for packed weights sharing their input: `x` is
/// quantized once and every product runs in one job of the pool (one synchronisation). False
/// if `x` holds a NaN or an infinity (nothing is written then).
pub(crate) fn forward_many(level: Q8Level, ws: &[&PackedInt], x: &[f32], m: usize, outs: &mut [&mut [f32]]) -> bool {
    let cols = ws[0].cols;
    debug_assert!(ws.iter().all(|w| w.cols == cols) && x.len() == m * cols);
    let Some((codes, scales, sums)) = quantize(level, x, cols) else { return false };
    let acts = Acts { codes: &codes, scales: &scales, sums: &sums, cols };
    let threads = crate::pool::threads();
    let mut chunks = Vec::new();
    if m >= TOKEN_SPLIT_MIN * threads {
        // Compute bound: each chunk runs every weight over its tokens, so its outputs are
        // contiguous rows.
        let per = m.div_ceil(threads * CHUNKS_PER_THREAD).next_multiple_of(4);
        let mut splits: Vec<_> =
            outs.iter_mut().zip(ws).map(|(o, w)| o.chunks_mut(per * w.rows).collect::<Vec<_>>().into_iter()).collect();
        for t0 in (0..m).step_by(per) {
            for (wi, s) in splits.iter_mut().enumerate() {
                let o = s.next().expect("one output chunk per token chunk");
                let (p1, t1) = (ws[wi].panels(), (t0 + per).min(m));
                chunks.push(Chunk { w: wi, p0: 0, p1, t0, t1, out: Mutex::new(ChunkOut::Direct(o)) });
            }
        }
    } else {
        // Memory bound: panels of every weight, a few chunks per thread.
        let total: usize = ws.iter().map(|w| w.panels()).sum();
        let per = total.div_ceil(threads * CHUNKS_PER_THREAD).max(MIN_CHUNK_PANELS);
        for (wi, (w, o)) in ws.iter().zip(outs.iter_mut()).enumerate() {
            let np = w.panels();
            let mut rest: &mut [f32] = o;
            for p0 in (0..np).step_by(per) {
                let p1 = (p0 + per).min(np);
                let out = if m == 1 {
                    let n = (p1 * PANEL).min(w.rows) - p0 * PANEL;
                    let (head, tail) = std::mem::take(&mut rest).split_at_mut(n);
                    rest = tail;
                    ChunkOut::Direct(head)
                } else {
                    ChunkOut::Temp(vec![0f32; m * (p1 - p0) * PANEL])
                };
                chunks.push(Chunk { w: wi, p0, p1, t0: 0, t1: m, out: Mutex::new(out) });
            }
        }
    }
    with_q8!(level, isa => {
        crate::pool::run(chunks.len(), &|i| {
            let c = &chunks[i];
            let w = ws[c.w];
            let a = acts.tokens(c.t0, c.t1);
            let mut g = c.out.lock().unwrap_or_else(|e| e.into_inner());
            match &mut *g {
                ChunkOut::Direct(o) if c.p0 == 0 && c.p1 == w.panels() => isa.gemv(w, c.p0, c.p1, &a, o, w.rows),
                ChunkOut::Direct(o) => isa.gemv(w, c.p0, c.p1, &a, o, PANEL * (c.p1 - c.p0)),
                ChunkOut::Temp(o) => isa.gemv(w, c.p0, c.p1, &a, o, PANEL * (c.p1 - c.p0)),
            }
        })
    });
    let temps: Vec<(usize, usize, usize, Vec<f32>)> = chunks
        .into_iter()
        .filter_map(|c| match c.out.into_inner().unwrap_or_else(|e| e.into_inner()) {
            ChunkOut::Temp(part) => Some((c.w, c.p0, c.p1, part)),
            ChunkOut::Direct(_) => None,
        })
        .collect();
    for (wi, p0, p1, part) in temps {
        let rows = ws[wi].rows;
        let (width, r0) = (PANEL * (p1 - p0), p0 * PANEL);
        let n = (p1 * PANEL).min(rows) - r0;
        for t in 0..m {
            outs[wi][t * rows + r0..][..n].copy_from_slice(&part[t * width..][..n]);
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use lowbit_core::{rtn, ClipSearch, IntScheme, ScaleDtype};

    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f32 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        }
        fn vec(&mut self, n: usize) -> Vec<f32> {
            (0..n).map(|_| self.next()).collect()
        }
    }

    fn scheme(bits: Bits, symmetric: bool, granularity: Granularity, scale_dtype: ScaleDtype) -> IntScheme {
        IntScheme { bits, symmetric, granularity, scale_dtype, clip: ClipSearch::MinMax }
    }

    fn acts_ref(x: &[f32], cols: usize) -> (Vec<i8>, Vec<f32>, Vec<i32>) {
        let (m, nb) = (x.len() / cols, cols / QK);
        let (mut c, mut s, mut q) = (vec![0i8; m * cols], vec![0f32; m * nb], vec![0i32; m * nb]);
        for (i, (xb, cb)) in x.chunks_exact(QK).zip(c.chunks_exact_mut(QK)).enumerate() {
            (s[i], q[i]) = quantize_block_ref(xb, cb).unwrap();
        }
        (c, s, q)
    }

    #[test]
    fn quantization_matches_the_reference_at_every_level() {
        let mut rng = Rng(7);
        for cols in [32, 96, 576] {
            let mut x = rng.vec(3 * cols);
            x[5] = 0.0;
            x[cols..cols + 32].fill(0.0); // a block of zeros
            x[40] = 1e-42; // a subnormal
            let want = acts_ref(&x, cols);
            for level in Q8Level::available() {
                let got = quantize(level, &x, cols).unwrap();
                assert_eq!(got, want, "{level:?} cols {cols}");
            }
            x[cols + cols / 2 + 1] = f32::NAN;
            for level in Q8Level::available() {
                assert!(quantize(level, &x, cols).is_none(), "{level:?}");
            }
        }
    }

    #[test]
    fn every_level_equals_the_reference_bit_for_bit() {
        let mut rng = Rng(11);
        let grans = [Granularity::Group(32), Granularity::Group(64), Granularity::Group(128), Granularity::PerChannel];
        let mut cases = Vec::new();
        for bits in [Bits::B4, Bits::B8] {
            for sym in [true, false] {
                for g in grans {
                    cases.push(scheme(bits, sym, g, ScaleDtype::F16));
                }
            }
            cases.push(scheme(bits, false, Granularity::PerTensor, ScaleDtype::F32));
            cases.push(scheme(bits, true, Granularity::Group(96), ScaleDtype::F32));
        }
        for (ci, sch) in cases.into_iter().enumerate() {
            for &(rows, cols) in &[(1, 32), (17, 64), (33, 160), (50, 576), (7, 1536)] {
                let w = rng.vec(rows * cols);
                let q = rtn::quantize(&w, &[rows, cols], sch).unwrap();
                let packed = PackedInt::from_qtensor(&q).unwrap();
                for m in [1, 3, 13] {
                    let x: Vec<f32> = rng.vec(m * cols).iter().map(|v| v * 4.0).collect();
                    let (c, s, sums) = acts_ref(&x, cols);
                    let a = Acts { codes: &c, scales: &s, sums: &sums, cols };
                    let mut want = vec![0f32; m * rows];
                    gemv_reference(&q, &a, &mut want);
                    for level in Q8Level::available() {
                        with_q8!(level, isa => {
                            let mut got = vec![f32::NAN; m * rows];
                            isa.gemv(&packed, 0, packed.panels(), &a, &mut got, rows);
                            assert_eq!(got, want, "{level:?} case {ci} {sch:?} [{rows}, {cols}] m {m}");
                            // a panel range into a narrower output
                            if packed.panels() > 1 {
                                let width = PANEL;
                                let mut part = vec![f32::NAN; m * width];
                                isa.gemv(&packed, 1, 2, &a, &mut part, width);
                                let n = (2 * PANEL).min(rows) - PANEL;
                                for t in 0..m {
                                    assert_eq!(&part[t * width..][..n], &want[t * rows + PANEL..][..n]);
                                }
                            }
                        });
                    }
                }
            }
        }
    }

    #[test]
    fn fused_products_equal_separate_ones() {
        let mut rng = Rng(3);
        let cols = 192;
        let shapes = [(40, cols), (16, cols), (101, cols)];
        let qs: Vec<QTensor> = shapes
            .iter()
            .map(|&(r, c)| rtn::quantize(&rng.vec(r * c), &[r, c], IntScheme::group(Bits::B4, 64)).unwrap())
            .collect();
        let ps: Vec<PackedInt> = qs.iter().map(|q| PackedInt::from_qtensor(q).unwrap()).collect();
        let refs: Vec<&PackedInt> = ps.iter().collect();
        for m in [1, 2, 5, 11, 40, 77] {
            let x = rng.vec(m * cols);
            let (c, s, sums) = acts_ref(&x, cols);
            let a = Acts { codes: &c, scales: &s, sums: &sums, cols };
            for level in Q8Level::available() {
                let mut outs: Vec<Vec<f32>> = shapes.iter().map(|&(r, _)| vec![f32::NAN; m * r]).collect();
                let mut views: Vec<&mut [f32]> = outs.iter_mut().map(|o| &mut o[..]).collect();
                assert!(forward_many(level, &refs, &x, m, &mut views));
                for (q, got) in qs.iter().zip(&outs) {
                    let mut want = vec![0f32; got.len()];
                    gemv_reference(q, &a, &mut want);
                    assert_eq!(got, &want, "{level:?} m {m}");
                }
            }
        }
    }

    #[test]
    fn unsupported_formats_are_not_packed() {
        let w = vec![0.5f32; 4 * 48];
        let q = rtn::quantize(&w, &[4, 48], IntScheme::group(Bits::B4, 16)).unwrap();
        assert!(PackedInt::from_qtensor(&q).is_none());
        let q = rtn::quantize(&w, &[4, 48], IntScheme::group(Bits::B3, 48)).unwrap();
        assert!(PackedInt::from_qtensor(&q).is_none());
    }
}
