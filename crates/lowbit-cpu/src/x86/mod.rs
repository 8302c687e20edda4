//! x86-64 kernels: AVX2 + FMA + F16C, and AVX-512 F/BW/VL. The only place with `unsafe`.

pub(crate) mod avx2;
pub(crate) mod avx512;
