//! The f32-activation kernels of the `simd128` level: four f32 lanes, codes widened from four
//! bytes at a time (lane `j` holds byte `j`, the interleaved order of [`crate::isa`] with
//! `LANES = 4`).

use super::simd::{self, int_rows, Simd};
use crate::isa::{CbBlock, IntBlock, Isa, MicroTile};
use core::arch::wasm32::*;
use half::{bf16, f16};

/// The `simd128` level. The module is compiled with `+simd128` (the parent module exists only
/// then), so every wasm engine that instantiated it runs these instructions.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Simd128(());

impl Simd128 {
    /// The level (always available in a module built with `+simd128`).
    pub(crate) fn new() -> Option<Self> {
        Some(Simd128(()))
    }
}

/// Lanes per vector.
const L: usize = 4;

/// `a * b + c`: fused in the relaxed build where the engine fuses it, else a multiply and an add
/// (these kernels are compared with the reference within the reassociation tolerance).
#[inline(always)]
pub(super) fn madd(a: v128, b: v128, c: v128) -> v128 {
    #[cfg(target_feature = "relaxed-simd")]
    {
        f32x4_relaxed_madd(a, b, c)
    }
    #[cfg(not(target_feature = "relaxed-simd"))]
    {
        f32x4_add(f32x4_mul(a, b), c)
    }
}

/// f16 bits in the low 16 bits of four u32 lanes to f32, exactly: the magnitude bits moved into
/// place and scaled by 2^112 (normals and subnormals alike), infinities and NaNs given the full
/// exponent, the sign put back.
#[inline(always)]
fn f16_bits_to_f32(h: v128) -> v128 {
    let mag = v128_and(h, u32x4_splat(0x7fff));
    let f = f32x4_mul(i32x4_shl(mag, 13), f32x4_splat(f32::from_bits(0x7780_0000))); // 2^112
    let special = u32x4_ge(mag, u32x4_splat(0x7c00));
    let inf_nan = v128_or(i32x4_shl(mag, 13), u32x4_splat(0x7f80_0000));
    let f = v128_bitselect(inf_nan, f, special);
    v128_or(f, i32x4_shl(v128_and(h, u32x4_splat(0x8000)), 16))
}

// SAFETY: a `Simd128` exists only in modules compiled with `+simd128` (the parent module is
// compiled only then), so every operation used here is available.
unsafe impl Simd for Simd128 {
    const L: usize = L;
    type V = v128;
    type I = v128;
    type H = v128;
    type Table = [f32; 16];

    #[inline(always)]
    fn zero(self) -> v128 {
        f32x4_splat(0.0)
    }
    #[inline(always)]
    fn splat(self, v: f32) -> v128 {
        f32x4_splat(v)
    }
    #[inline(always)]
    fn fma(self, a: v128, b: v128, c: v128) -> v128 {
        madd(a, b, c)
    }
    #[inline(always)]
    fn add(self, a: v128, b: v128) -> v128 {
        f32x4_add(a, b)
    }
    #[inline(always)]
    fn hsum(self, v: v128) -> f32 {
        (f32x4_extract_lane::<0>(v) + f32x4_extract_lane::<1>(v))
            + (f32x4_extract_lane::<2>(v) + f32x4_extract_lane::<3>(v))
    }
    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> v128 {
        // SAFETY: 4 readable f32 at `p` (the caller's contract); v128_load is unaligned.
        unsafe { v128_load(p.cast()) }
    }
    #[inline(always)]
    unsafe fn load_partial(self, p: *const f32, n: usize) -> v128 {
        let mut buf = [0f32; L];
        // SAFETY: `n < 4` readable f32 at `p` (the caller's contract).
        unsafe { std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), n.min(L)) };
        // SAFETY: `buf` holds 4 f32.
        unsafe { v128_load(buf.as_ptr().cast()) }
    }
    #[inline(always)]
    unsafe fn load_u16(self, p: *const u16) -> v128 {
        // SAFETY: 4 readable u16 (8 bytes) at `p` (the caller's contract).
        u32x4_extend_low_u16x8(unsafe { v128_load64_zero(p.cast()) })
    }
    #[inline(always)]
    unsafe fn load_u16_partial(self, p: *const u16, n: usize) -> v128 {
        let mut buf = [0u16; L];
        // SAFETY: `n < 4` readable u16 at `p` (the caller's contract).
        unsafe { std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), n.min(L)) };
        // SAFETY: `buf` holds 4 u16.
        unsafe { self.load_u16(buf.as_ptr()) }
    }
    #[inline(always)]
    fn f16_to_f32(self, h: v128) -> v128 {
        f16_bits_to_f32(h)
    }
    #[inline(always)]
    fn bf16_to_f32(self, h: v128) -> v128 {
        i32x4_shl(h, 16)
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, v: v128) {
        // SAFETY: 4 writable f32 at `p` (the caller's contract).
        unsafe { v128_store(p.cast(), v) }
    }
    #[inline(always)]
    unsafe fn store_partial(self, p: *mut f32, n: usize, v: v128) {
        let mut buf = [0f32; L];
        // SAFETY: `buf` holds 4 f32; `n < 4` are writable at `p` (the caller's contract).
        unsafe {
            v128_store(buf.as_mut_ptr().cast(), v);
            std::ptr::copy_nonoverlapping(buf.as_ptr(), p, n.min(L));
        }
    }
    #[inline(always)]
    unsafe fn load_codes(self, p: *const u8) -> v128 {
        // SAFETY: 4 readable bytes at `p` (the caller's contract).
        let v = unsafe { v128_load32_zero(p.cast()) };
        u32x4_extend_low_u16x8(u16x8_extend_low_u8x16(v))
    }
    #[inline(always)]
    fn next_nibble(self, v: v128) -> v128 {
        u32x4_shr(v, 4)
    }
    #[inline(always)]
    fn table16(self, table: &[f32; 16], scale: f32) -> [f32; 16] {
        table.map(|t| t * scale)
    }
    /// Four scalar lookups (simd128's byte shuffle cannot index a table of f32).
    #[inline(always)]
    fn lookup16(self, v: v128, t: [f32; 16]) -> v128 {
        let i = |l: u32| (l & 15) as usize;
        f32x4(
            t[i(u32x4_extract_lane::<0>(v))],
            t[i(u32x4_extract_lane::<1>(v))],
            t[i(u32x4_extract_lane::<2>(v))],
            t[i(u32x4_extract_lane::<3>(v))],
        )
    }
}

/// `out[r] = x · row r` for 2-, 4- and 8-bit codes, R rows per pass sharing the x loads.
fn gemv_int_rows<const BITS: u32, const R: usize>(s: Simd128, b: &IntBlock, x: &[f32], r0: usize, out: &mut [f32]) {
    let per_byte = (8 / BITS) as usize;
    let chunk = L * per_byte;
    b.check_gemv(x, r0, R, out, chunk);
    let gpr = b.gpr();
    let mask = u32x4_splat((1 << BITS) - 1);
    let xp = x.as_ptr();
    int_rows(s, b, r0, out, |gi, ks| {
        let mut acc = [f32x4_splat(0.0); R];
        let z: [v128; R] = std::array::from_fn(|r| f32x4_splat(b.zeros.get((r0 + r) * gpr + gi)));
        for k in ks.step_by(chunk) {
            // SAFETY: k + chunk <= cols: x and 4 code bytes per row at byte k / per_byte are in
            // bounds (asserted by check_gemv).
            unsafe {
                let mut v: [v128; R] =
                    std::array::from_fn(|r| s.load_codes(b.codes.as_ptr().add((r0 + r) * b.row_bytes + k / per_byte)));
                for t in 0..per_byte {
                    let xv = v128_load(xp.add(k + t * L).cast());
                    for r in 0..R {
                        let q = if BITS == 8 { v[r] } else { v128_and(v[r], mask) };
                        acc[r] = madd(f32x4_sub(f32x4_convert_i32x4(q), z[r]), xv, acc[r]);
                        if BITS < 8 {
                            v[r] = u32x4_shr(v[r], BITS);
                        }
                    }
                }
            }
        }
        acc
    });
}

/// Code `t` of lane `j` of a 64-element chunk of 3-bit codes (24 bytes: eight lanes of 24 bits,
/// the layout [`crate::driver`] interleaves for 3 bits at every level).
#[inline(always)]
fn code3(chunk: &[u8], j: usize, t: usize) -> u32 {
    let lane = u32::from(chunk[3 * j]) | u32::from(chunk[3 * j + 1]) << 8 | u32::from(chunk[3 * j + 2]) << 16;
    (lane >> (3 * t)) & 7
}

/// `out[r] = x · row r` for 3-bit codes (portable: 3-bit weights are rare on this target).
fn gemv_q3(b: &IntBlock, x: &[f32], out: &mut [f32]) {
    const CHUNK: usize = 64;
    b.check_gemv(x, 0, out.len(), out, CHUNK);
    let gpr = b.gpr();
    for (r, o) in out.iter_mut().enumerate() {
        let mut tot = 0f32;
        for gi in 0..gpr {
            let p = r * gpr + gi;
            let z = b.zeros.get(p);
            let mut acc = 0f32;
            let (k0, k1) = (gi * b.group, ((gi + 1) * b.group).min(b.cols));
            for k in (k0..k1).step_by(CHUNK) {
                let c = &b.codes[r * b.row_bytes + k * 3 / 8..][..24];
                for t in 0..8 {
                    for j in 0..8 {
                        acc += (code3(c, j, t) as f32 - z) * x[k + t * 8 + j];
                    }
                }
            }
            tot += acc * b.scales[p];
        }
        *o = tot;
    }
}

fn gemv_int(s: Simd128, b: &IntBlock, x: &[f32], out: &mut [f32]) {
    macro_rules! rows {
        ($bits:literal) => {{
            let mut r = 0;
            while r + 2 <= out.len() {
                gemv_int_rows::<$bits, 2>(s, b, x, r, out);
                r += 2;
            }
            if r < out.len() {
                gemv_int_rows::<$bits, 1>(s, b, x, r, out);
            }
        }};
    }
    match b.bits {
        4 => rows!(4),
        2 => rows!(2),
        8 => rows!(8),
        3 => gemv_q3(b, x, out),
        _ => unreachable!("codes are 2, 3, 4 or 8 bits"),
    }
}

/// Row `r`, elements `k0..k0 + dst.len()` (chunk aligned) of an integer block, interleaved.
fn dequant_int(s: Simd128, b: &IntBlock, r: usize, k0: usize, dst: &mut [f32]) {
    let gpr = b.gpr();
    if b.bits == 3 {
        const CHUNK: usize = 64;
        b.check_dequant(r, k0, dst.len(), CHUNK);
        for (ci, d) in dst.chunks_exact_mut(CHUNK).enumerate() {
            let k = k0 + ci * CHUNK;
            let p = r * gpr + k / b.group;
            let (z, sc) = (b.zeros.get(p), b.scales[p]);
            let c = &b.codes[r * b.row_bytes + k * 3 / 8..][..24];
            for t in 0..8 {
                for j in 0..8 {
                    d[t * 8 + j] = (code3(c, j, t) as f32 - z) * sc;
                }
            }
        }
        return;
    }
    let bits = b.bits;
    let per_byte = (8 / bits) as usize;
    let chunk = L * per_byte;
    b.check_dequant(r, k0, dst.len(), chunk);
    let mask = u32x4_splat((1 << bits) - 1);
    let dp = dst.as_mut_ptr();
    for c in (0..dst.len()).step_by(chunk) {
        let k = k0 + c;
        let p = r * gpr + k / b.group;
        let z = f32x4_splat(b.zeros.get(p));
        let sc = f32x4_splat(b.scales[p]);
        // SAFETY: 4 code bytes of row r at k / per_byte and `chunk` f32 at dst[c..] are in bounds
        // (asserted by check_dequant).
        unsafe {
            let mut v = s.load_codes(b.codes.as_ptr().add(r * b.row_bytes + k / per_byte));
            for t in 0..per_byte {
                let q = f32x4_sub(f32x4_convert_i32x4(v128_and(v, mask)), z);
                v128_store(dp.add(c + t * L).cast(), f32x4_mul(q, sc));
                v = u32x4_shr(v, bits);
            }
        }
    }
}

/// MR = 4 rows of x per micro-kernel call (8 accumulators of the 16 v128 locals wasm engines
/// keep in registers comfortably).
fn kernel(s: Simd128, t: MicroTile) {
    match t.mr {
        1 => simd::kernel::<Simd128, 1>(s, t),
        2 => simd::kernel::<Simd128, 2>(s, t),
        3 => simd::kernel::<Simd128, 3>(s, t),
        4 => simd::kernel::<Simd128, 4>(s, t),
        _ => unreachable!("at most MR rows"),
    }
}

impl Isa for Simd128 {
    const LANES: usize = L;
    const PANEL: usize = 2 * L;
    const MR: usize = 4;

    fn dot(self, x: &[f32], w: &[f32]) -> f32 {
        simd::dot(self, x, w)
    }
    fn gemv_f32(self, x: &[f32], w: &[f32], out: &mut [f32]) {
        simd::gemv(self, x, w, out)
    }
    fn gemv_f16(self, x: &[f32], w: &[f16], out: &mut [f32]) {
        simd::gemv(self, x, w, out)
    }
    fn gemv_bf16(self, x: &[f32], w: &[bf16], out: &mut [f32]) {
        simd::gemv(self, x, w, out)
    }
    fn widen_f16(self, src: &[f16], dst: &mut [f32]) {
        simd::widen(self, src, dst)
    }
    fn widen_bf16(self, src: &[bf16], dst: &mut [f32]) {
        simd::widen(self, src, dst)
    }
    fn kernel(self, t: MicroTile) {
        kernel(self, t)
    }
    fn gemv_int(self, b: &IntBlock, x: &[f32], out: &mut [f32]) {
        gemv_int(self, b, x, out)
    }
    fn dequant_int(self, b: &IntBlock, r: usize, k0: usize, dst: &mut [f32]) {
        dequant_int(self, b, r, k0, dst)
    }
    fn gemv_cb(self, b: &CbBlock, x: &[f32], out: &mut [f32]) {
        simd::gemv_cb(self, b, x, out)
    }
    fn dequant_cb(self, b: &CbBlock, r: usize, k0: usize, dst: &mut [f32]) {
        simd::dequant_cb(self, b, r, k0, dst)
    }
}
