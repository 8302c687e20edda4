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
