//! Run-time choice of kernel level, and [`leveled!`]: portable f32 kernels compiled once per
//! level so that `LOWBIT_KERNELS` governs them as it governs the hand-written ones.

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
    /// wasm32 SIMD128 (and relaxed SIMD when the module is built with it); chosen when the
    /// module is built, as a wasm module has no run-time feature detection.
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    Simd128,
}

impl KernelLevel {
    /// Name as accepted by `LOWBIT_KERNELS`.
    pub fn name(self) -> &'static str {
        match self {
            KernelLevel::Scalar => "scalar",
            KernelLevel::Avx2 => "avx2",
            KernelLevel::Avx512 => "avx512",
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128", not(target_feature = "relaxed-simd")))]
            KernelLevel::Simd128 => "simd128",
            #[cfg(all(target_arch = "wasm32", target_feature = "relaxed-simd"))]
            KernelLevel::Simd128 => "relaxed-simd",
        }
    }

    /// The best level this CPU supports: every feature that level's kernels enable (the
    /// `#[target_feature]` lists of `x86::avx2`, `x86::avx512` and [`leveled!`]) is present.
    /// (AVX-512 DQ comes with BW and VL on every CPU that has them; the compiler uses it in the
    /// vectorized loops of [`leveled!`].)
    pub fn detect() -> KernelLevel {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 =
                is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c");
            if avx2
                && is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512dq")
            {
                return KernelLevel::Avx512;
            }
            if avx2 {
                return KernelLevel::Avx2;
            }
        }
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        return KernelLevel::Simd128;
        #[allow(unreachable_code)]
        KernelLevel::Scalar
    }

    /// Parses a `LOWBIT_KERNELS` value, refusing levels this CPU lacks.
    pub fn parse(value: &str) -> crate::Result<KernelLevel> {
        let wanted = match value.trim().to_ascii_lowercase().as_str() {
            "scalar" => KernelLevel::Scalar,
            "avx2" => KernelLevel::Avx2,
            "avx512" => KernelLevel::Avx512,
            #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
            "simd128" | "relaxed-simd" => KernelLevel::Simd128,
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

/// A kernel level this CPU runs: the proof the dispatch points of [`leveled!`] rely on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Level(KernelLevel);

impl Level {
    /// `level`, if this CPU runs it ([`crate::CpuError::KernelLevel`] otherwise).
    pub(crate) fn new(level: KernelLevel) -> crate::Result<Level> {
        if level <= KernelLevel::detect() {
            Ok(Level(level))
        } else {
            Err(crate::CpuError::KernelLevel(level.name().into()))
        }
    }
    /// [`kernel_level`], which only ever holds a level this CPU runs.
    pub(crate) fn current() -> Level {
        Level(kernel_level())
    }
    /// The level.
    pub(crate) fn get(self) -> KernelLevel {
        self.0
    }
}

/// `leveled! { /// docs
///             pub(crate) fn name(a: A, b: B) -> R { body } }`
/// defines `name(level: Level, a: A, b: B) -> R`: `body`, written once in portable Rust that the
/// compiler vectorizes, compiled for each [`KernelLevel`] (baseline, AVX2 + FMA, AVX-512) and run
/// at `level`. Arguments are plain identifiers; the body may call `#[inline(always)]` helpers,
/// which then take the level's width too. Written `fn name<const FMA: bool>(..)`, the body sees
/// `FMA = true` at levels with fused multiply-add (where `f32::mul_add` is one instruction rather
/// than a libm call).
macro_rules! leveled {
    ($(#[$doc:meta])* $vis:vis fn $name:ident($($a:ident: $t:ty),* $(,)?) $(-> $r:ty)? $body:block) => {
        $crate::dispatch::leveled! {
            $(#[$doc])* $vis fn $name<const _FMA: bool>($($a: $t),*) $(-> $r)? $body
        }
    };
    ($(#[$doc:meta])* $vis:vis fn $name:ident<const $fma:ident: bool>($($a:ident: $t:ty),* $(,)?) $(-> $r:ty)?
        $body:block) => {
        $(#[$doc])*
        #[allow(unsafe_code)] // the two calls below, on the strength of `Level`
        $vis fn $name(level: $crate::dispatch::Level, $($a: $t),*) $(-> $r)? {
            #[inline(always)]
            fn body<const $fma: bool>($($a: $t),*) $(-> $r)? $body

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma,f16c")]
            fn avx2($($a: $t),*) $(-> $r)? {
                body::<true>($($a),*)
            }

            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
            fn avx512($($a: $t),*) $(-> $r)? {
                body::<true>($($a),*)
            }

            match level.get() {
                $crate::KernelLevel::Scalar => body::<false>($($a),*),
                // SAFETY: a `Level` holds only levels this CPU runs, and `KernelLevel::detect`
                // checks every feature these functions enable.
                #[cfg(target_arch = "x86_64")]
                $crate::KernelLevel::Avx2 => unsafe { avx2($($a),*) },
                // SAFETY: as above.
                #[cfg(target_arch = "x86_64")]
                $crate::KernelLevel::Avx512 => unsafe { avx512($($a),*) },
                // The module is compiled with simd128 throughout; fused multiply-adds are exact
                // emulations there (`wasm::fma_f32`), so results equal the FMA levels'.
                #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
                $crate::KernelLevel::Simd128 => body::<true>($($a),*),
                #[cfg(not(target_arch = "x86_64"))]
                _ => body::<false>($($a),*),
            }
        }
    };
}
pub(crate) use leveled;
