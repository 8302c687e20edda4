//! Q8_K: 8-bit k-quant, 256 weights in 292 bytes; ggml's format for activations in k-quant dot
//! products, with the sum of each 16 codes precomputed.
//!
//! ```text
//! byte 0      4                        260                292
//!      | d:f32 | qs: i8[256]            | bsums: i16[16]   |
//! w = d * qs[j],   bsums[k] = sum of qs[16k..16k + 16]
//! ```
//! Reference quantizer: `d = max / -127` for the element of largest |x|, `qs = min(127,
//! nearest_int(x / d))`.

use super::kquants::{nearest_int, QK_K};
use super::{signed_absmax, GgmlBlock};

ggml_block! {
    /// One Q8_K super-block (`block_q8_K`).
    pub struct BlockQ8K: Q8K, QK_K, 292 bytes {
        /// Scale (f32, unlike the other blocks).
        pub d: f32,
        /// Signed codes.
        pub qs: [i8; QK_K],
        /// Sums of each 16 codes.
        pub bsums: [i16; QK_K / 16],
    }
}

impl GgmlBlock for BlockQ8K {
    fn dequantize(&self, y: &mut [f32]) {
        for (y, &q) in y.iter_mut().zip(&self.qs) {
            *y = self.d * q as f32;
        }
    }

    fn quantize(x: &[f32]) -> Self {
        let x = &x[..QK_K];
        let max = signed_absmax(x);
        if max == 0.0 {
            // ggml leaves bsums unset here; zero is what they sum to.
            return bytemuck::Zeroable::zeroed();
        }
        let iscale = -127.0 / max;
        let qs: [i8; QK_K] = std::array::from_fn(|j| nearest_int(iscale * x[j]).min(127) as i8);
        let bsums = std::array::from_fn(|k| qs[16 * k..16 * k + 16].iter().map(|&q| q as i16).sum());
        BlockQ8K { d: 1.0 / iscale, qs, bsums }
    }
}
