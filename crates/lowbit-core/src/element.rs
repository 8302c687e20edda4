//! Input element types: weights arrive as f32, f16 or bf16 and are widened to f32 a row (or
//! block) at a time, so half-precision inputs are never copied whole.

use half::{bf16, f16};

/// A floating-point weight element lowbit can quantize.
pub trait Element: Copy + Send + Sync + 'static {
    /// The value as f32 (exact for every implementor).
    fn to_f32(self) -> f32;

    /// Widens `src` into `dst` (same length).
    fn widen(src: &[Self], dst: &mut [f32]) {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = s.to_f32();
        }
    }

    /// `src` as f32: borrowed when it already is, else widened into `buf`.
    fn as_f32<'a>(src: &'a [Self], buf: &'a mut Vec<f32>) -> &'a [f32];
}

impl Element for f32 {
    fn to_f32(self) -> f32 {
        self
    }
    fn as_f32<'a>(src: &'a [f32], _buf: &'a mut Vec<f32>) -> &'a [f32] {
        src
    }
}

macro_rules! half_element {
    ($t:ty) => {
        impl Element for $t {
            fn to_f32(self) -> f32 {
                <$t>::to_f32(self)
            }
            fn as_f32<'a>(src: &'a [$t], buf: &'a mut Vec<f32>) -> &'a [f32] {
                buf.resize(src.len(), 0.0);
                Self::widen(src, buf);
                buf
            }
        }
    };
}

half_element!(f16);
half_element!(bf16);

/// Index of the first NaN or infinity in `x`. Each chunk is scanned without branches (the
/// largest exponent field, which vectorizes), large inputs on all threads; only the first bad
/// chunk is searched element by element.
pub fn first_non_finite(x: &[f32]) -> Option<usize> {
    const CHUNK: usize = 8192;
    const EXPONENT: u32 = 0x7f80_0000;
    let bad = |c: &[f32]| c.iter().fold(0u32, |m, v| m.max(v.to_bits() & EXPONENT)) == EXPONENT;
    let chunk = crate::par::position_first_chunk(x, CHUNK, crate::par::pays(x.len()), bad)?;
    let start = chunk * CHUNK;
    x[start..].iter().position(|v| !v.is_finite()).map(|i| start + i)
}

/// Checks that every weight is finite, naming the first offender.
pub fn check_finite<T: Element>(weights: &[T]) -> crate::Result<()> {
    match weights.iter().position(|w| !w.to_f32().is_finite()) {
        Some(index) => Err(crate::CoreError::NonFinite { index, value: weights[index].to_f32() }),
        None => Ok(()),
    }
}
