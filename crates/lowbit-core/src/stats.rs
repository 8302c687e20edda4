//! Quantized group statistics (SpQR's "bi-level" quantization): the scale and the zero point of
//! every group of an integer tensor are themselves small codes (3 bits in SpQR), quantized
//! asymmetrically in *statistics groups* of `group` consecutive output rows of one column group
//! (SpQR's 16x16 tiles at group size 16), each with its own f16 scale and zero.
//!
//! For a `[rows, cols]` tensor with `gpr` groups per row, first-level statistic `(r, g)` (row `r`,
//! column group `g`) is stored at flat index `g * rows + r` of the packed codes, and belongs to
//! statistics group `g * rows.div_ceil(group) + r / group`:
//!
//! ```text
//! scale(r, g) = (scale_codes[g * rows + r] - scale_zero[sg]) * scale_scale[sg]
//! zero(r, g)  = (zero_codes[g * rows + r]  - zero_zero[sg])  * zero_scale[sg]
//! w[r, c]     = (q[r, c] - zero(r, c / group_size)) * scale(r, c / group_size)
//! ```
//!
//! all in f32, the f16 values widened. The zero point is a float (SpQR does not round it).

use crate::pack::{code_at, pack, packed_len};
use crate::rtn::round_ties_even_small;
use crate::{Bits, CoreError, Result};
use half::f16;

/// One statistic (the scales, or the zeros) of every group: packed codes and, per statistics
/// group, the f16 scale and zero that decode them.
#[derive(Clone, Debug, PartialEq)]
pub struct StatCodes {
    /// Packed codes, flat index `g * rows + r`.
    pub codes: Vec<u8>,
    /// Second-level scale per statistics group.
    pub scale: Vec<f16>,
    /// Second-level (float) zero per statistics group.
    pub zero: Vec<f16>,
}

impl StatCodes {
    fn nbytes(&self) -> usize {
        self.codes.len() + 2 * (self.scale.len() + self.zero.len())
    }
}

/// The quantized scales and zeros of a group-wise integer tensor (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct QuantStats {
    /// Code width of the statistics.
    pub bits: Bits,
    /// Output rows per statistics group.
    pub group: usize,
    /// The scales.
    pub scales: StatCodes,
    /// The zero points.
    pub zeros: StatCodes,
}

impl QuantStats {
    /// Statistics groups of a `[rows, _]` tensor with `gpr` groups per row.
    pub fn stat_groups(&self, rows: usize, gpr: usize) -> usize {
        gpr * rows.div_ceil(self.group)
    }

    /// Checks every size against a `[rows, _]` tensor with `gpr` groups per row, and that the
    /// second-level values are finite.
    pub fn validate(&self, rows: usize, gpr: usize) -> Result<()> {
        if self.group == 0 {
            return Err(CoreError::shape("quantized statistics", "a statistics group of at least 1 row", 0));
        }
        let n = rows * gpr;
        let sg = self.stat_groups(rows, gpr);
        for (what, s) in [("scales", &self.scales), ("zeros", &self.zeros)] {
            if s.codes.len() != packed_len(n, self.bits) {
                return Err(CoreError::shape("quantized statistics: codes", packed_len(n, self.bits), s.codes.len()));
            }
            if s.scale.len() != sg || s.zero.len() != sg {
                return Err(CoreError::shape(
                    "quantized statistics: second-level values",
                    sg,
                    format!("{} and {}", s.scale.len(), s.zero.len()),
                ));
            }
            if s.scale.iter().chain(&s.zero).any(|v| !v.is_finite()) {
                return Err(CoreError::Corrupt(format!("non-finite second-level {what}")));
            }
        }
        Ok(())
    }

    /// Bytes of storage: both code arrays and the four f16 arrays.
    pub fn nbytes(&self) -> usize {
        self.scales.nbytes() + self.zeros.nbytes()
    }

    /// The f32 `(scale, zero)` of row `r`, column group `g`, of a tensor with `rows` rows.
    #[inline]
    pub fn get(&self, rows: usize, r: usize, g: usize) -> (f32, f32) {
        let (i, sg) = (g * rows + r, g * rows.div_ceil(self.group) + r / self.group);
        (decode(&self.scales, self.bits, i, sg), decode(&self.zeros, self.bits, i, sg))
    }

    /// The f32 scale and zero of rows `r0..r1`, row-major `[(r1 - r0), gpr]` into `scales` and
    /// `zeros` (each `(r1 - r0) * gpr` long), of a tensor with `rows` rows.
    pub fn decode_rows(&self, rows: usize, gpr: usize, r0: usize, r1: usize, scales: &mut [f32], zeros: &mut [f32]) {
        // This runs once per row block of every product, so it must cost little against the
        // product itself: statistics group by statistics group (its rows' outputs stay in L1),
        // and within it, per column group, the rows' codes are one contiguous run, read as one
        // little-endian word where it fits.
        let spc = rows.div_ceil(self.group);
        let bits = self.bits.get() as usize;
        let mask = u64::from(self.bits.maxq());
        let mut r = r0;
        while r < r1 {
            let end = ((r / self.group + 1) * self.group).min(r1);
            let n = end - r;
            for g in 0..gpr {
                let sg = g * spc + r / self.group;
                for (st, out) in [(&self.scales, &mut *scales), (&self.zeros, &mut *zeros)] {
                    let (s2, z2) = (st.scale[sg].to_f32(), st.zero[sg].to_f32());
                    let start = g * rows + r;
                    let value = |c: u64| (c as f32 - z2) * s2;
                    if (start * bits) % 8 == 0 && n * bits <= 64 {
                        let byte = start * bits / 8;
                        let avail = st.codes.len().saturating_sub(byte).min(8);
                        let mut word = [0u8; 8];
                        word[..avail].copy_from_slice(&st.codes[byte..byte + avail]);
                        let word = u64::from_le_bytes(word);
                        for k in 0..n {
                            out[(r - r0 + k) * gpr + g] = value((word >> (k * bits)) & mask);
                        }
                    } else {
                        for k in 0..n {
                            out[(r - r0 + k) * gpr + g] = value(u64::from(code_at(&st.codes, self.bits, start + k)));
                        }
                    }
                }
            }
            r = end;
        }
    }

    /// Quantizes first-level statistics given as `scales[g * rows + r]`, `zeros[g * rows + r]`
    /// (the stored order), in statistics groups of `group` rows.
    pub fn quantize(rows: usize, gpr: usize, bits: Bits, group: usize, scales: &[f32], zeros: &[f32]) -> Result<Self> {
        if group == 0 || scales.len() != rows * gpr || zeros.len() != rows * gpr {
            return Err(CoreError::shape(
                "QuantStats::quantize",
                format!("{} values, group >= 1", rows * gpr),
                scales.len(),
            ));
        }
        let one = |v: &[f32]| -> Result<StatCodes> {
            let mut codes = vec![0u8; v.len()];
            let (mut scale, mut zero) = (Vec::new(), Vec::new());
            // Statistics groups never straddle column groups: walk each column group's rows.
            let mut k = 0;
            for col in v.chunks(rows) {
                for chunk in col.chunks(group) {
                    let p = StatParams::fit(chunk, bits);
                    p.quantize_into(chunk, bits, &mut codes[k..k + chunk.len()]);
                    scale.push(p.scale);
                    zero.push(p.zero);
                    k += chunk.len();
                }
            }
            Ok(StatCodes { codes: pack(&codes, bits)?, scale, zero })
        };
        let stats = QuantStats { bits, group, scales: one(scales)?, zeros: one(zeros)? };
        stats.validate(rows, gpr)?;
        Ok(stats)
    }
}

fn decode(s: &StatCodes, bits: Bits, i: usize, sg: usize) -> f32 {
    (f32::from(code_at(&s.codes, bits, i)) - s.zero[sg].to_f32()) * s.scale[sg].to_f32()
}

/// The f16 scale and zero of one statistics group: asymmetric min-max, both stored in f16 and
/// rounded *before* the codes are chosen, so the codes are the nearest under the stored values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StatParams {
    /// Step.
    pub scale: f16,
    /// Float zero point.
    pub zero: f16,
}

impl StatParams {
    /// Min-max parameters of `v` at `bits` (a constant run gets scale `|v|` or 1, exact).
    pub fn fit(v: &[f32], bits: Bits) -> Self {
        let (lo, hi) = v.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
        let maxq = f32::from(bits.maxq());
        let big = lo.abs().max(hi.abs());
        // Keep |zero| = |lo| / scale within f16's exact-ish range: a range tiny against the
        // values themselves gets a wider step instead of a zero that overflows f16.
        let mut scale = ((hi - lo) / maxq).max(big / 2048.0);
        if scale.is_nan() || scale <= 0.0 {
            scale = 1.0;
        }
        // Values beyond f16 (never from a sane first level) saturate: wrong but finite codes.
        let scale = f16::from_f32(scale.min(f16::MAX.to_f32()));
        let scale = if scale.to_f32() > 0.0 { scale } else { f16::MIN_POSITIVE_SUBNORMAL };
        let zero = f16::from_f32((-lo / scale.to_f32()).clamp(f16::MIN.to_f32(), f16::MAX.to_f32()));
        StatParams { scale, zero }
    }

    /// The code of `x`: `clamp(round(x / scale + zero), 0, maxq)`.
    #[inline]
    pub fn code(self, x: f32, bits: Bits) -> u8 {
        let q = round_ties_even_small(x / self.scale.to_f32() + self.zero.to_f32());
        q.clamp(0.0, f32::from(bits.maxq())) as u8
    }

    /// The value of code `q`.
    #[inline]
    pub fn value(self, q: u8) -> f32 {
        (f32::from(q) - self.zero.to_f32()) * self.scale.to_f32()
    }

    fn quantize_into(self, v: &[f32], bits: Bits, out: &mut [u8]) {
        for (o, &x) in out.iter_mut().zip(v) {
            *o = self.code(x, bits);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_matches_the_fitted_values() {
        let (rows, gpr) = (37, 3);
        let scales: Vec<f32> = (0..rows * gpr).map(|i| 0.01 + (i as f32 * 0.37).sin().abs() * 0.02).collect();
        let zeros: Vec<f32> = (0..rows * gpr).map(|i| 7.5 + (i as f32 * 1.3).cos() * 4.0).collect();
        let q = QuantStats::quantize(rows, gpr, Bits::B3, 16, &scales, &zeros).unwrap();
        assert_eq!(q.stat_groups(rows, gpr), 9);
        let (mut s, mut z) = (vec![0f32; rows * gpr], vec![0f32; rows * gpr]);
        q.decode_rows(rows, gpr, 0, rows, &mut s, &mut z);
        for r in 0..rows {
            for g in 0..gpr {
                let i = g * rows + r;
                let p = StatParams { scale: q.scales.scale[g * 3 + r / 16], zero: q.scales.zero[g * 3 + r / 16] };
                assert_eq!(s[r * gpr + g], p.value(p.code(scales[i], Bits::B3)));
                // 3-bit min-max: within half a step of the group's range / 7.
                assert!((s[r * gpr + g] - scales[i]).abs() <= 0.02 / 7.0 * 0.5 + 1e-4, "{r} {g}");
                assert!((z[r * gpr + g] - zeros[i]).abs() <= 8.0 / 7.0 * 0.5 + 1e-2, "{r} {g}");
            }
        }
        // A block of rows decodes as the same rows of the whole.
        let (mut s2, mut z2) = (vec![0f32; 5 * gpr], vec![0f32; 5 * gpr]);
        q.decode_rows(rows, gpr, 14, 19, &mut s2, &mut z2);
        assert_eq!(s2, s[14 * gpr..19 * gpr]);
        assert_eq!(q.get(rows, 15, 2), (s[15 * gpr + 2], z[15 * gpr + 2]));
        assert_eq!(z2, z[14 * gpr..19 * gpr]);
        assert!(q.validate(rows + 1, gpr).is_err());
    }

    #[test]
    fn constant_and_tiny_ranges_stay_finite() {
        for v in [[0.0f32; 4], [5.0; 4], [1.0, 1.0 + 1e-7, 1.0, 1.0]] {
            let p = StatParams::fit(&v, Bits::B3);
            assert!(p.scale.is_finite() && p.zero.is_finite());
            for &x in &v {
                assert!((p.value(p.code(x, Bits::B3)) - x).abs() <= 1e-3 * x.abs().max(1.0), "{v:?}");
            }
        }
    }
}
