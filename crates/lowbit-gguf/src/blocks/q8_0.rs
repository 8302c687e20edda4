//! Q8_0: 8-bit symmetric, 32 weights in 34 bytes.
//!
//! ```text
//! byte 0      2                                  34
//!      | d:f16 | qs: i8[32]                       |
//! w = qs[j] * d
//! ```
//! Reference quantizer: `d = amax / 127`, `qs = roundf(x / d)` (ties away from zero).

use super::GgmlBlock;
use half::f16;

/// Weights per Q8_0 block.
pub const QK8_0: usize = 32;

ggml_block! {
    /// One Q8_0 block (`block_q8_0`).
    pub struct BlockQ8_0: Q8_0, QK8_0, 34 bytes {
        /// Scale.
        pub d: f16,
        /// Signed codes.
        pub qs: [i8; QK8_0],
    }
}

impl GgmlBlock for BlockQ8_0 {
    fn dequantize(&self, y: &mut [f32]) {
        let d = self.d.to_f32();
        for (y, &q) in y.iter_mut().zip(&self.qs) {
            *y = q as f32 * d;
        }
    }

    fn quantize(x: &[f32]) -> Self {
        let mut amax = 0f32;
        for &v in &x[..QK8_0] {
            amax = if amax > v.abs() { amax } else { v.abs() };
        }
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        BlockQ8_0 { d: f16::from_f32(d), qs: std::array::from_fn(|j| (x[j] * id).round() as i8) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_block() {
        let b = BlockQ8_0 { d: f16::from_f32(2.0), qs: std::array::from_fn(|j| j as i8 - 16) };
        let mut y = [0f32; 32];
        b.dequantize(&mut y);
        assert_eq!((y[0], y[31]), (-32.0, 30.0));
    }
}
