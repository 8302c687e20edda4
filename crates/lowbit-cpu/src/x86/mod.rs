//! x86-64 kernels: AVX2 + FMA + F16C, and AVX-512 F/BW/VL; W8A8 integer kernels with AVX2 and
//! AVX512-VNNI; int8-activation kernels for 4/8-bit weights with AVX2, AVX-VNNI and AVX512-VNNI. The only place with `unsafe`.

pub(crate) mod avx2;
pub(crate) mod avx512;
pub(crate) mod q8_avx2;
pub(crate) mod q8_avx512;
mod simd;
pub(crate) mod w8a8_avx2;
pub(crate) mod w8a8_avx512;

/// The [`crate::w8a8::W8a8Isa`] table of a level: forwards to the module's `quantize_row` and
/// `gemm` (`unsafe fn`s with the level's features) after checking the bounds they rely on.
macro_rules! w8a8_isa {
    ($tok:ident, $act:ty) => {
        // SAFETY (both methods): `self` exists only on CPUs with the features `quantize_row` and
        // `gemm` enable (see `new`).
        impl crate::w8a8::W8a8Isa for $tok {
            type Act = $act;

            fn quantize_row(self, x: &[f32], codes: &mut [$act]) -> Option<(f32, i32)> {
                assert!(codes.len() >= x.len());
                // SAFETY: see above; `codes` covers `x` (asserted).
                unsafe { quantize_row(x, codes) }
            }

            fn gemm(
                self,
                w: &crate::w8a8::Panels,
                p0: usize,
                p1: usize,
                a: &crate::w8a8::Acts<$act>,
                out: &mut [f32],
                os: usize,
            ) {
                crate::w8a8::check_gemm_bounds(w, p0, p1, a, out, os);
                // SAFETY: see above; the slices cover every access (checked above).
                unsafe { gemm(w, p0, p1, a, out, os) }
            }
        }
    };
}
use w8a8_isa;

/// Where one W8A8 tile reads and writes: panels from `w`, tokens from `a` (as many of each as the
/// level's `tile` runs).
#[derive(Clone, Copy)]
struct W8a8Tile<A> {
    /// First panel of the tile.
    w: *const u8,
    /// Bytes per panel.
    pstride: usize,
    /// Column quads.
    kq: usize,
    /// First token's codes.
    a: *const A,
    /// Codes per token.
    kp: usize,
    /// First token's scale and code sum.
    sx: *const f32,
    sums: *const i32,
    /// The first panel's row scales.
    ws: *const f32,
    /// `out[t * os + j]`: token `t`, row `j` of the tile.
    out: *mut f32,
    os: usize,
    /// Valid rows of the tile, from its first.
    valid: usize,
}

/// The tiles of a W8A8 product over panels `p0..` (`out[t * os + j]`: token `t`, row `j` of panel
/// `p0`): `at(p, t, np)` is the tile of `np` panels from `p` and the tokens from `t`.
fn w8a8_tiles<'a, A>(
    w: &'a crate::w8a8::Panels,
    p0: usize,
    a: &'a crate::w8a8::Acts<A>,
    out: &'a mut [f32],
    os: usize,
) -> impl Fn(usize, usize, usize) -> W8a8Tile<A> + 'a {
    use crate::w8a8::PANEL_ROWS;
    let pstride = w.panel_bytes();
    let out = out.as_mut_ptr();
    move |p, t, np| W8a8Tile {
        w: w.codes[p * pstride..].as_ptr(),
        pstride,
        kq: w.kq,
        a: a.codes[t * a.kp..].as_ptr(),
        kp: a.kp,
        sx: a.scales[t..].as_ptr(),
        sums: a.sums[t..].as_ptr(),
        ws: w.scales[p * PANEL_ROWS..].as_ptr(),
        // in `out` for the tiles of a checked product (check_gemm_bounds); read only by `tile`
        out: out.wrapping_add(t * os + (p - p0) * PANEL_ROWS),
        os,
        valid: w.valid_rows(p, p + np),
    }
}

/// The [`crate::q8::Q8Isa`] table of a level: checks the bounds, then forwards to `$quantize` and
/// `$gemv` (`unsafe fn`s with the level's features).
macro_rules! q8_isa {
    ($tok:ident, $quantize:ident, $gemv:ident) => {
        // SAFETY (both methods): `self` exists only on CPUs with the features `$quantize` and
        // `$gemv` enable (see `new`).
        impl crate::q8::Q8Isa for $tok {
            fn quantize_row(self, x: &[f32], codes: &mut [i8], scales: &mut [f32], sums: &mut [i32]) -> bool {
                crate::q8::check_quantize_bounds(x, codes, scales, sums);
                // SAFETY: see above; the slices cover every access (checked above).
                unsafe { $quantize(x, codes, scales, sums) }
            }
            fn gemv(
                self,
                w: &crate::q8::PackedInt,
                p0: usize,
                p1: usize,
                a: &crate::q8::Acts,
                out: &mut [f32],
                os: usize,
            ) {
                crate::q8::check_gemv_bounds(w, p0, p1, a, out, os);
                // SAFETY: see above; the slices cover every access (checked above).
                unsafe { $gemv(w, p0, p1, a, out, os) }
            }
        }
    };
}
use q8_isa;
