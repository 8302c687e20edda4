//! Per-output-channel codebooks ("row LUTs", SqueezeLLM's non-uniform quantization, Kim et al.
//! 2023): row `r` of a `[rows, cols]` matrix has its own table of `2^bits` f16 values and each
//! weight is stored as a 3- or 4-bit index into it.
//!
//! ```text
//! qweight [packed_len(rows * cols, bits)] u8   codes, packed as every lowbit 3/4-bit code
//! lut     [rows, 2^bits]                  f16  row r's table
//! w[r, c] = lut[r, code(r, c)]   (+ the sparse outliers, if any)
//! ```
//!
//! The tables need not be sorted. [`encode`] stores given tables (the solver's centroids) with
//! each weight's nearest entry; [`quantize`] is the calibration-free reference: a uniform grid
//! over each row's min-max range (what the SqueezeLLM solver improves on).

use crate::pack::{pack_into, packed_len, unpack_into};
use crate::{check_finite, CoreError, Element, QParams, QTensor, Result, RowLutScheme, Scheme};
use half::f16;

/// Index of the entry of `table` nearest to `x` (ties to the lower index).
#[inline]
pub fn nearest(table: &[f32], x: f32) -> u8 {
    let mut best = 0;
    let mut best_d = f32::INFINITY;
    for (i, &t) in table.iter().enumerate() {
        let d = (x - t).abs();
        if d < best_d {
            best = i;
            best_d = d;
        }
    }
    best as u8
}

/// Stores `w[rows, cols]` with the given tables (`rows * 2^bits` values, rounded to f16 first,
/// so each weight gets the entry nearest among the values the file holds).
pub fn encode(w: &[f32], rows: usize, cols: usize, scheme: RowLutScheme, tables: &[f32]) -> Result<QTensor> {
    let n = scheme.entries();
    if w.len() != rows * cols || tables.len() != rows * n {
        return Err(CoreError::shape(
            "row codebook encode",
            format!("{} weights and {} table values", rows * cols, rows * n),
            format!("{} and {}", w.len(), tables.len()),
        ));
    }
    check_finite(w)?;
    let stored: Vec<f16> = tables.iter().map(|&t| f16::from_f32(t)).collect();
    if let Some(i) = stored.iter().position(|t| !t.is_finite()) {
        return Err(CoreError::NonFinite { index: i, value: tables[i] });
    }
    let rounded: Vec<f32> = stored.iter().map(|t| t.to_f32()).collect();
    let mut codes = vec![0u8; rows * cols];
    for ((crow, wrow), t) in
        codes.chunks_exact_mut(cols.max(1)).zip(w.chunks_exact(cols.max(1))).zip(rounded.chunks_exact(n))
    {
        for (c, &x) in crow.iter_mut().zip(wrow) {
            *c = nearest(t, x);
        }
    }
    let mut packed = vec![0u8; packed_len(codes.len(), scheme.bits)];
    pack_into(&codes, scheme.bits, &mut packed);
    QTensor::from_parts(vec![rows, cols], Scheme::RowLut(scheme), packed, QParams::RowLut { tables: stored })
}

/// Stores given codes (`rows * cols`, each `< 2^bits`) with given tables (`rows * 2^bits`,
/// rounded to f16): for solvers that choose codes other than the nearest (GPTQ's sweep).
pub fn from_codes(codes: &[u8], rows: usize, cols: usize, scheme: RowLutScheme, tables: &[f32]) -> Result<QTensor> {
    if codes.len() != rows * cols {
        return Err(CoreError::shape("row codebook codes", rows * cols, codes.len()));
    }
    let stored: Vec<f16> = tables.iter().map(|&t| f16::from_f32(t)).collect();
    let packed = crate::pack::pack(codes, scheme.bits)?;
    QTensor::from_parts(vec![rows, cols], Scheme::RowLut(scheme), packed, QParams::RowLut { tables: stored })
}

/// The calibration-free reference: each row's table is `2^bits` evenly spaced values from its
/// minimum to its maximum (a constant row gets one repeated value), each weight its nearest entry.
pub fn quantize<T: Element>(weights: &[T], shape: &[usize], scheme: RowLutScheme) -> Result<QTensor> {
    let scheme = RowLutScheme::new(scheme.bits)?;
    let (rows, cols) = crate::rtn::matrix_dims(shape)?;
    if rows * cols == 0 {
        return Err(CoreError::Empty { shape: shape.to_vec() });
    }
    check_finite(weights)?;
    let w: Vec<f32> = weights.iter().map(|v| v.to_f32()).collect();
    let n = scheme.entries();
    let mut tables = vec![0f32; rows * n];
    for (t, row) in tables.chunks_exact_mut(n).zip(w.chunks_exact(cols)) {
        let (lo, hi) = row.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
        for (i, v) in t.iter_mut().enumerate() {
            *v = lo + (hi - lo) * i as f32 / (n - 1) as f32;
        }
    }
    let q = encode(&w, rows, cols, scheme, &tables)?;
    if shape.len() == 2 {
        Ok(q)
    } else {
        let QParams::RowLut { tables } = q.params().clone() else { unreachable!("encode builds row tables") };
        QTensor::from_parts(shape.to_vec(), Scheme::RowLut(scheme), q.codes().to_vec(), QParams::RowLut { tables })
    }
}

/// `out = lut[r, code]` for all `rows * cols` elements (`codes` packed).
pub(crate) fn dequantize_into(scheme: RowLutScheme, codes: &[u8], tables: &[f16], cols: usize, out: &mut [f32]) {
    let n = scheme.entries();
    let mut q = vec![0u8; out.len()];
    unpack_into(codes, scheme.bits, &mut q);
    for ((o, q), t) in out.chunks_exact_mut(cols).zip(q.chunks_exact(cols)).zip(tables.chunks_exact(n)) {
        let t: Vec<f32> = t.iter().map(|v| v.to_f32()).collect();
        for (o, &c) in o.iter_mut().zip(q) {
            *o = t[usize::from(c)];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Bits;

    #[test]
    fn encode_picks_the_nearest_entry_and_dequantize_reads_the_row_table() {
        let s = RowLutScheme::new(Bits::B3).unwrap();
        let tables: Vec<f32> = (0..2 * 8).map(|i| if i < 8 { i as f32 } else { -(i as f32) }).collect();
        let w = [0.2, 6.7, 3.4, -8.1, -15.0, -9.6];
        let q = encode(&w, 2, 3, s, &tables).unwrap();
        assert_eq!(q.dequantize(), [0.0, 7.0, 3.0, -8.0, -15.0, -10.0]);
        assert_eq!(q.nbytes(), packed_len(6, Bits::B3) + 2 * 16);
        assert!(RowLutScheme::new(Bits::B2).is_err() && RowLutScheme::new(Bits::B8).is_err());
    }

    #[test]
    fn reference_quantizer_error_is_within_half_a_step() {
        let (rows, cols) = (3, 37);
        let w: Vec<f32> = (0..rows * cols).map(|i| ((i * 29 % 53) as f32 - 26.0) / 7.0).collect();
        for bits in [Bits::B3, Bits::B4] {
            let q = quantize(&w, &[rows, cols], RowLutScheme { bits }).unwrap();
            let d = q.dequantize();
            for (r, (a, b)) in w.chunks(cols).zip(d.chunks(cols)).enumerate() {
                let (lo, hi) = a.iter().fold((f32::MAX, f32::MIN), |(x, y), &v| (x.min(v), y.max(v)));
                let step = (hi - lo) / ((1 << bits.get()) - 1) as f32;
                for (x, y) in a.iter().zip(b) {
                    assert!((x - y).abs() <= step / 2.0 + 1e-2, "row {r}: {x} -> {y}");
                }
            }
        }
    }
}
