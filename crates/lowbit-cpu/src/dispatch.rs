//! Run-time choice of kernel level.

use std::sync::OnceLock;

/// The instruction-set level kernels use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum KernelLevel {
    /// Portable scalar reference.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C.
    Avx2,
    /// x86-64 AVX-512 F/BW/VL (+VNNI where present).
    Avx512,
}

impl KernelLevel {
    /// Name as accepted by `LOWBIT_KERNELS`.
    pub fn name(self) -> &'static str {
        match self {
            KernelLevel::Scalar => "scalar",
            KernelLevel::Avx2 => "avx2",
            KernelLevel::Avx512 => "avx512",
        }
    }

    /// The best level this CPU supports.
    pub fn detect() -> KernelLevel {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
            {
                return KernelLevel::Avx512;
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c") {
                return KernelLevel::Avx2;
            }
        }
        KernelLevel::Scalar
    }

    /// Parses a `LOWBIT_KERNELS` value, refusing levels this CPU lacks.
    pub fn parse(value: &str) -> crate::Result<KernelLevel> {
        let wanted = match value.trim().to_ascii_lowercase().as_str() {
            "scalar" => KernelLevel::Scalar,
            "avx2" => KernelLevel::Avx2,
            "avx512" => KernelLevel::Avx512,
            _ => return Err(crate::CpuError::KernelLevel(value.to_string())),
        };
        if wanted > KernelLevel::detect() {
            return Err(crate::CpuError::KernelLevel(value.to_string()));
        }
        Ok(wanted)
    }
}

/// The level in use: `LOWBIT_KERNELS` if set (an unusable value falls back to detection with a
/// warning on stderr, once), else the best detected. Chosen once per process.
pub fn kernel_level() -> KernelLevel {
    static LEVEL: OnceLock<KernelLevel> = OnceLock::new();
    *LEVEL.get_or_init(|| match std::env::var("LOWBIT_KERNELS") {
        Ok(v) => KernelLevel::parse(&v).unwrap_or_else(|e| {
            eprintln!("lowbit: {e}; using {}", KernelLevel::detect().name());
            KernelLevel::detect()
        }),
        Err(_) => KernelLevel::detect(),
    })
}
