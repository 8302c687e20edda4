//! Sparse outliers: weights kept exactly (in f16) beside a quantized matrix, in compressed sparse
//! row (CSR) form. SpQR stores the weights whose quantization error is too large this way; the
//! structure knows nothing about the method, so any dense-and-sparse format can reuse it.
//!
//! ```text
//! offsets[rows + 1]  u32   row r's entries are offsets[r] .. offsets[r + 1]
//! columns[nnz]       u16   (u32 when the matrix has more than 65,536 columns), strictly
//!                          increasing within a row
//! values[nnz]        f16   finite
//! ```
//!
//! A matrix with outliers is `dequantized + S`: an outlier's position holds whatever code the
//! quantizer chose there (SpQR writes the code of 0) and its value is *added*; the SpQR solver
//! makes the dense part 0 wherever an outlier is, so the sum is the outlier's value.

use crate::{CoreError, Result};
use half::f16;

/// Column indices of a [`SparseOutliers`], as narrow as the matrix allows.
#[derive(Clone, Debug, PartialEq)]
pub enum ColumnIndex {
    /// Up to 65,536 columns.
    U16(Vec<u16>),
    /// Wider matrices.
    U32(Vec<u32>),
}

impl ColumnIndex {
    /// Number of indices.
    pub fn len(&self) -> usize {
        match self {
            ColumnIndex::U16(v) => v.len(),
            ColumnIndex::U32(v) => v.len(),
        }
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Index `i`.
    #[inline]
    pub fn get(&self, i: usize) -> usize {
        match self {
            ColumnIndex::U16(v) => usize::from(v[i]),
            ColumnIndex::U32(v) => v[i] as usize,
        }
    }
    /// Bytes of storage.
    pub fn nbytes(&self) -> usize {
        match self {
            ColumnIndex::U16(v) => 2 * v.len(),
            ColumnIndex::U32(v) => 4 * v.len(),
        }
    }
}

/// A validated CSR matrix of f16 values, shape `[rows, cols]` (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct SparseOutliers {
    rows: usize,
    cols: usize,
    offsets: Vec<u32>,
    columns: ColumnIndex,
    values: Vec<f16>,
}

impl SparseOutliers {
    /// Whether a matrix with `cols` columns stores its indices as u16.
    pub fn narrow_columns(cols: usize) -> bool {
        cols <= 1 << 16
    }

    /// Builds the matrix from its arrays, checking everything a reader must trust: `rows + 1`
    /// non-decreasing offsets from 0 to `nnz`, columns in bounds and strictly increasing within
    /// each row, the index width [`SparseOutliers::narrow_columns`] asks for, finite values.
    pub fn new(rows: usize, cols: usize, offsets: Vec<u32>, columns: ColumnIndex, values: Vec<f16>) -> Result<Self> {
        let nnz = values.len();
        if offsets.len() != rows + 1 {
            return Err(CoreError::shape("sparse outliers: offsets", rows + 1, offsets.len()));
        }
        if columns.len() != nnz {
            return Err(CoreError::shape("sparse outliers: column indices", nnz, columns.len()));
        }
        if matches!(columns, ColumnIndex::U16(_)) != Self::narrow_columns(cols) {
            return Err(CoreError::shape(
                "sparse outliers: column index width",
                if Self::narrow_columns(cols) { "u16" } else { "u32" },
                format!("the other width for {cols} columns"),
            ));
        }
        if offsets[0] != 0 || offsets[rows] as usize != nnz {
            return Err(CoreError::Corrupt(format!(
                "sparse outliers: offsets run from {} to {}, expected 0 to {nnz}",
                offsets[0], offsets[rows]
            )));
        }
        for r in 0..rows {
            let (a, b) = (offsets[r] as usize, offsets[r + 1] as usize);
            if a > b {
                return Err(CoreError::Corrupt(format!("sparse outliers: offsets decrease at row {r}")));
            }
            let mut prev: Option<usize> = None;
            for i in a..b {
                let c = columns.get(i);
                if c >= cols || prev.is_some_and(|p| c <= p) {
                    return Err(CoreError::Corrupt(format!(
                        "sparse outliers: row {r} column {c} is out of bounds ({cols}) or not increasing"
                    )));
                }
                prev = Some(c);
            }
        }
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(CoreError::NonFinite { index: i, value: values[i].to_f32() });
        }
        Ok(SparseOutliers { rows, cols, offsets, columns, values })
    }

    /// Builds the matrix from `(row, col, value)` entries in any order (values rounded to f16;
    /// one that overflows f16, or a repeated position, is an error).
    pub fn from_entries(rows: usize, cols: usize, entries: &[(usize, usize, f32)]) -> Result<Self> {
        let mut sorted: Vec<(usize, usize, f32)> = entries.to_vec();
        sorted.sort_by_key(|&(r, c, _)| (r, c));
        if u32::try_from(sorted.len()).is_err() {
            return Err(CoreError::shape("sparse outliers", "at most 2^32 - 1 entries", sorted.len()));
        }
        let mut offsets = vec![0u32; rows + 1];
        for &(r, c, _) in &sorted {
            if r >= rows || c >= cols {
                return Err(CoreError::shape(
                    "sparse outliers: entry",
                    format!("< [{rows}, {cols}]"),
                    format!("({r}, {c})"),
                ));
            }
            offsets[r + 1] += 1;
        }
        for r in 0..rows {
            offsets[r + 1] += offsets[r];
        }
        let columns = if Self::narrow_columns(cols) {
            // c < cols <= 65,536: the largest index, 65,535, fits.
            ColumnIndex::U16(sorted.iter().map(|e| e.1 as u16).collect())
        } else {
            ColumnIndex::U32(sorted.iter().map(|e| e.1 as u32).collect())
        };
        let values = sorted.iter().map(|e| f16::from_f32(e.2)).collect();
        Self::new(rows, cols, offsets, columns, values)
    }

    /// Rows of the matrix.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// Columns of the matrix.
    pub fn cols(&self) -> usize {
        self.cols
    }
    /// Stored entries.
    pub fn nnz(&self) -> usize {
        self.values.len()
    }
    /// Row offsets (`rows + 1`).
    pub fn offsets(&self) -> &[u32] {
        &self.offsets
    }
    /// Column indices (`nnz`).
    pub fn columns(&self) -> &ColumnIndex {
        &self.columns
    }
    /// Values (`nnz`).
    pub fn values(&self) -> &[f16] {
        &self.values
    }
    /// Bytes of storage: offsets, indices and values.
    pub fn nbytes(&self) -> usize {
        4 * self.offsets.len() + self.columns.nbytes() + 2 * self.values.len()
    }
    /// Entries of row `r`: `(column, value)`.
    pub fn row(&self, r: usize) -> impl Iterator<Item = (usize, f32)> + '_ {
        let (a, b) = (self.offsets[r] as usize, self.offsets[r + 1] as usize);
        (a..b).map(move |i| (self.columns.get(i), self.values[i].to_f32()))
    }
    /// `dense[r * cols + c] += S[r, c]` over rows `r0 .. r0 + dense.len() / cols`.
    pub fn add_to_rows(&self, r0: usize, dense: &mut [f32]) {
        for (i, row) in dense.chunks_exact_mut(self.cols).enumerate() {
            for (c, v) in self.row(r0 + i) {
                row[c] += v;
            }
        }
    }
    /// `out[i] += S[r0 + i] · x` for each `i < out.len()`: the sparse part of a matrix-vector
    /// product over a block of rows (`x` in natural column order).
    pub fn spmv_rows(&self, r0: usize, x: &[f32], out: &mut [f32]) {
        for (i, o) in out.iter_mut().enumerate() {
            let mut s = 0.0f32;
            for (c, v) in self.row(r0 + i) {
                s += v * x[c];
            }
            *o += s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_build_a_sorted_csr_and_add_back() {
        let s = SparseOutliers::from_entries(3, 5, &[(2, 4, 1.5), (0, 3, -2.0), (0, 1, 0.25)]).unwrap();
        assert_eq!(s.offsets(), [0, 2, 2, 3]);
        assert_eq!((0..3).map(|i| s.columns().get(i)).collect::<Vec<_>>(), [1, 3, 4]);
        let mut d = vec![1.0f32; 15];
        s.add_to_rows(0, &mut d);
        assert_eq!(d[1], 1.25);
        assert_eq!(d[3], -1.0);
        assert_eq!(d[14], 2.5);
        let x: Vec<f32> = (0..5).map(|i| i as f32).collect();
        let mut y = vec![10.0f32; 2];
        s.spmv_rows(1, &x, &mut y);
        assert_eq!(y, [10.0, 16.0]);
        assert_eq!(s.nbytes(), 4 * 4 + 2 * 3 + 2 * 3);
    }

    #[test]
    fn bad_arrays_are_refused() {
        let v = |n: usize| vec![f16::ONE; n];
        let ok = SparseOutliers::new(2, 4, vec![0, 1, 2], ColumnIndex::U16(vec![3, 0]), v(2));
        assert!(ok.is_ok());
        let bad = [
            SparseOutliers::new(2, 4, vec![0, 2], ColumnIndex::U16(vec![1, 2]), v(2)),
            SparseOutliers::new(2, 4, vec![0, 1, 2], ColumnIndex::U16(vec![4, 0]), v(2)),
            SparseOutliers::new(2, 4, vec![0, 2, 2], ColumnIndex::U16(vec![2, 2]), v(2)),
            SparseOutliers::new(2, 4, vec![0, 2, 1], ColumnIndex::U16(vec![1, 2]), v(2)),
            SparseOutliers::new(2, 4, vec![1, 1, 2], ColumnIndex::U16(vec![1, 2]), v(2)),
            SparseOutliers::new(2, 4, vec![0, 1, 2], ColumnIndex::U32(vec![1, 2]), v(2)),
            SparseOutliers::new(2, 4, vec![0, 1, 2], ColumnIndex::U16(vec![1, 2]), vec![f16::ONE, f16::NAN]),
            SparseOutliers::from_entries(2, 4, &[(0, 1, 1e6)]),
            SparseOutliers::from_entries(2, 4, &[(0, 1, 1.0), (0, 1, 2.0)]),
            SparseOutliers::from_entries(2, 4, &[(2, 1, 1.0)]),
        ];
        for (i, b) in bad.into_iter().enumerate() {
            assert!(b.is_err(), "case {i}");
        }
        let wide = SparseOutliers::from_entries(1, 70_000, &[(0, 69_999, 1.0)]).unwrap();
        assert!(matches!(wide.columns(), ColumnIndex::U32(_)));
    }
}
