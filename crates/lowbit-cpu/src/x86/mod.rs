//! x86-64 kernels: AVX2 + FMA + F16C, and AVX-512 F/BW/VL; W8A8 integer kernels with AVX2 and
//! AVX512-VNNI. The only place with `unsafe`.

pub(crate) mod avx2;
pub(crate) mod avx512;
mod simd;
pub(crate) mod w8a8_avx2;
pub(crate) mod w8a8_avx512;
