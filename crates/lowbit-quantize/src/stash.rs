//! Activations a block holds between a layer's statistics pass and the residual that follows its
//! solve (o_proj's input, down_proj's input: `tokens x intermediate_size` floats, the largest
//! buffer of the pipeline). A batch is kept in f16 when it fits f16's range, halving that
//! memory; the Hessians always see the f32 values, and only the residual's input is rounded
//! (relative 2^-12, far below the quantization error it carries). A batch with a value beyond
//! f16's range stays f32.

use half::f16;
use half::slice::HalfFloatSliceExt;
use lowbit_core::par;

enum Stored {
    F16(Vec<f16>),
    F32(Vec<f32>),
}

pub(crate) struct Stash {
    batches: Vec<Stored>,
}

/// Largest magnitude stored as f16 (its max finite value, 65504, less a rounding margin).
const F16_LIMIT: f32 = 65000.0;
/// Values per part converted on one thread.
const PART: usize = 1 << 16;

impl Stash {
    pub(crate) fn new() -> Self {
        Stash { batches: Vec::new() }
    }

    /// Appends the next batch.
    pub(crate) fn push(&mut self, batch: &[f32]) {
        let too_large = |c: &[f32]| c.iter().fold(0f32, |m, v| m.max(v.abs())) > F16_LIMIT;
        let fits = par::position_first_chunk(batch, PART, par::pays(batch.len()), too_large).is_none();
        self.batches.push(if fits {
            // Slice conversions: the same rounding as `f16::from_f32`, eight lanes at a time.
            let mut h = vec![f16::ZERO; batch.len()];
            par::for_each_chunk(&mut h, PART, par::pays(batch.len()), |i, h| {
                h.convert_from_f32_slice(&batch[i * PART..i * PART + h.len()])
            });
            Stored::F16(h)
        } else {
            Stored::F32(batch.to_vec())
        });
    }

    /// Batch `i` as f32 into `out`, each column `c` divided by `divide[c]` when given (a fold
    /// applied after the batch was stored).
    pub(crate) fn read(&self, i: usize, divide: Option<&[f32]>, out: &mut Vec<f32>) {
        let len = match &self.batches[i] {
            Stored::F16(v) => v.len(),
            Stored::F32(v) => v.len(),
        };
        out.resize(len, 0.0);
        // Parts of whole rows, so each part divides its own columns.
        let part = divide.map_or(PART, |s| s.len().max(1) * (PART / s.len().max(1)).max(1));
        par::for_each_chunk(out, part, par::pays(len), |j, o| {
            let src = j * part..j * part + o.len();
            match &self.batches[i] {
                Stored::F16(v) => v[src].convert_to_f32_slice(o),
                Stored::F32(v) => o.copy_from_slice(&v[src]),
            }
            if let Some(s) = divide {
                for row in o.chunks_exact_mut(s.len()) {
                    row.iter_mut().zip(s).for_each(|(v, s)| *v /= s);
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_round_trip_through_f16_or_stay_f32() {
        let mut st = Stash::new();
        st.push(&[1.0, -2.5, 0.1, 3.0]);
        st.push(&[1e6, 2.0, 0.1, 4.0]);
        let mut out = vec![];
        st.read(0, Some(&[1.0, 2.0]), &mut out);
        assert_eq!(out, vec![1.0, -1.25, f16::from_f32(0.1).to_f32(), 1.5]);
        st.read(1, None, &mut out);
        assert_eq!(out, vec![1e6, 2.0, 0.1, 4.0]);
        // The slice conversions round as the scalar ones do, lane tails included.
        let batch: Vec<f32> = (0..37).map(|i| (i as f32 - 18.3) * 1.37e-3 * (i * i) as f32).collect();
        st.push(&batch);
        st.read(2, None, &mut out);
        let want: Vec<f32> = batch.iter().map(|&v| f16::from_f32(v).to_f32()).collect();
        assert_eq!(
            out.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            want.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
    }
}
