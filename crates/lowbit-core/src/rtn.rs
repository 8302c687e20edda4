//! Round-to-nearest quantization of integer schemes.
//!
//! `q = clamp(round(w / scale) + zero, 0, maxq)`, `w ~ (q - zero) * scale`, with `round` half to
//! even. Scales are rounded to their storage dtype *before* zero points and codes are computed,
//! so stored parameters reproduce exactly the codes chosen here.

use crate::pack::{pack_into, packed_len};
use crate::par::{self, for_each_chunk, try_for_each_row};
use crate::Element;
use crate::{
    check_finite, Bits, ClipSearch, CoreError, Granularity, IntScheme, QParams, QTensor, Result, ScaleDtype, Scales,
    Scheme, ZeroPoints,
};

/// Scale and zero point of one group, as stored.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GroupParams {
    /// Step between codes, already rounded to the storage dtype.
    pub scale: f32,
    /// Integer zero point (`2^(bits-1)` for symmetric schemes).
    pub zero: u8,
}

impl GroupParams {
    /// The code of `w`: `clamp(round(w / scale) + zero, 0, maxq)`.
    #[inline]
    pub fn quantize(self, w: f32, maxq: u8) -> u8 {
        // Integer arithmetic on the rounded value's bits (see `round_ties_even_small`) avoids a
        // saturating float-to-int conversion per element, so the loop vectorizes.
        let rounded = (round_ties_even_small(w / self.scale) + MAGIC).to_bits() as i32 - MAGIC.to_bits() as i32;
        (rounded + i32::from(self.zero)).clamp(0, i32::from(maxq)) as u8
    }

    /// Codes of a run of weights that share these parameters.
    pub fn quantize_slice(self, weights: &[f32], maxq: u8, out: &mut [u8]) {
        for (o, &w) in out.iter_mut().zip(weights) {
            *o = self.quantize(w, maxq);
        }
    }

    /// Values of a run of codes that share these parameters.
    pub fn dequantize_slice(self, codes: &[u8], out: &mut [f32]) {
        for (o, &q) in out.iter_mut().zip(codes) {
            *o = self.dequantize(q);
        }
    }
    /// The value of code `q`.
    #[inline]
    pub fn dequantize(self, q: u8) -> f32 {
        (f32::from(q) - f32::from(self.zero)) * self.scale
    }
}

/// Scale and zero point of one group as the decoder uses them: `w = (q - zero) * scale`, the zero
/// an integer code or a float (see [`crate::ZeroPoints`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Affine {
    /// Step between codes.
    pub scale: f32,
    /// Zero point in code units.
    pub zero: f32,
}

impl Affine {
    /// Values of a run of codes that share these parameters.
    pub fn dequantize_slice(self, codes: &[u8], out: &mut [f32]) {
        for (o, &q) in out.iter_mut().zip(codes) {
            *o = (f32::from(q) - self.zero) * self.scale;
        }
    }
}

impl From<GroupParams> for Affine {
    fn from(p: GroupParams) -> Self {
        Affine { scale: p.scale, zero: f32::from(p.zero) }
    }
}

/// `x.round_ties_even()` for the code arithmetic, in a form that vectorizes on every x86-64
/// (the std call lowers to a libm call without SSE4.1). `x` is first clamped to +-512, beyond
/// every code range (codes are at most 255 and zero points at most 255), so the result after
/// adding the zero and clamping to `[0, maxq]` is unchanged; below 2^22 adding and subtracting
/// 1.5 * 2^23 rounds half to even in the default rounding mode.
#[inline]
pub fn round_ties_even_small(x: f32) -> f32 {
    (x.clamp(-512.0, 512.0) + MAGIC) - MAGIC
}

/// 1.5 * 2^23: adding it leaves a value below 2^22 in magnitude rounded to an integer that sits
/// in the low mantissa bits.
const MAGIC: f32 = 12_582_912.0;

/// Parameters for the range `[lo, hi]` (which must contain 0 for asymmetric schemes).
fn params_for_range(lo: f32, hi: f32, bits: Bits, symmetric: bool, scale_dtype: ScaleDtype) -> Result<GroupParams> {
    let (raw, absmax) = raw_scale(lo, hi, bits, symmetric);
    params_from_scale(lo, raw, scale_dtype.round(raw), absmax, bits, symmetric)
}

/// The unrounded scale of the range `[lo, hi]` and its largest magnitude.
#[inline]
fn raw_scale(lo: f32, hi: f32, bits: Bits, symmetric: bool) -> (f32, f32) {
    if symmetric {
        let absmax = lo.abs().max(hi.abs());
        (absmax / f32::from(bits.symmetric_zero() - 1), absmax)
    } else {
        ((hi - lo) / f32::from(bits.maxq()), lo.abs().max(hi.abs()))
    }
}

/// Parameters of a range starting at `lo` whose raw scale `raw` rounds to `rounded` in storage.
#[inline]
fn params_from_scale(lo: f32, raw: f32, rounded: f32, absmax: f32, bits: Bits, symmetric: bool) -> Result<GroupParams> {
    let maxq = bits.maxq();
    let scale = if raw == 0.0 {
        1.0
    } else {
        if !rounded.is_finite() {
            return Err(CoreError::ScaleOverflow { scale: raw, absmax });
        }
        // A scale that underflows f16 becomes its smallest positive value, never 0.
        if rounded == 0.0 {
            half::f16::from_bits(1).to_f32()
        } else {
            rounded
        }
    };
    let zero = if symmetric {
        bits.symmetric_zero()
    } else {
        // `round_ties_even_small` clamps to +-512 first, which the clamp to [0, maxq] makes
        // invisible; it avoids a libm call per candidate.
        round_ties_even_small(-lo / scale).clamp(0.0, f32::from(maxq)) as u8
    };
    Ok(GroupParams { scale, zero })
}

/// Sum of squared reconstruction errors of `values` under `p`, or `None` once it provably
/// reaches `bound` (the candidate cannot win then).
///
/// The early exit never changes a result: every term is `>= 0` and round-to-nearest addition is
/// monotone, so the final sum is at least any partial sum of the same lanes, in the same order.
fn squared_error(values: &[f32], p: GroupParams, maxq: u8, bound: f32) -> Option<f32> {
    // Sixteen independent partial sums: a single f32 accumulator is a serial chain the compiler
    // may not reorder, and this loop is the whole cost of the MSE range search.
    const LANES: usize = 16;
    // Lane chunks between checks of the bound.
    const CHECK: usize = 2;
    let err = |w: f32| {
        let d = w - p.dequantize(p.quantize(w, maxq));
        d * d
    };
    let mut acc = [0.0f32; LANES];
    let chunks = values.chunks_exact(LANES);
    let rem = chunks.remainder();
    let n = chunks.len();
    for (k, c) in chunks.enumerate() {
        for (a, &w) in acc.iter_mut().zip(c) {
            *a += err(w);
        }
        if (k + 1) % CHECK == 0 && k + 1 < n && acc.iter().sum::<f32>() >= bound {
            return None;
        }
    }
    let tail: f32 = rem.iter().map(|&w| err(w)).sum();
    Some(acc.iter().sum::<f32>() + tail)
}

/// Candidate ranges scored per batch of the range search (their scales are rounded together).
const CANDIDATES: usize = 16;

/// Chooses the scale and zero point of one group (min-max, or the clipping search).
///
/// The clipping search keeps the first candidate with the least squared error, candidates in
/// the order of [`ClipSearch::factors`].
pub fn group_params(
    values: &[f32],
    bits: Bits,
    symmetric: bool,
    scale_dtype: ScaleDtype,
    clip: ClipSearch,
) -> Result<GroupParams> {
    let (mut lo, mut hi) = values.iter().fold((0.0f32, 0.0f32), |(lo, hi), &w| (lo.min(w), hi.max(w)));
    if symmetric {
        hi = hi.max(-lo);
        lo = -hi;
    }
    let steps = clip.steps();
    if steps == 1 {
        let f = clip.factor(0);
        return params_for_range(lo * f, hi * f, bits, symmetric, scale_dtype);
    }
    let maxq = bits.maxq();
    let mut best: Option<(GroupParams, f32)> = None;
    let (mut los, mut raws, mut absmaxs, mut rounded) =
        ([0.0f32; CANDIDATES], [0.0f32; CANDIDATES], [0.0f32; CANDIDATES], [0.0f32; CANDIDATES]);
    for first in (0..steps).step_by(CANDIDATES) {
        let n = CANDIDATES.min(steps - first);
        for j in 0..n {
            let f = clip.factor(first + j);
            let (l, h) = (lo * f, hi * f);
            los[j] = l;
            (raws[j], absmaxs[j]) = raw_scale(l, h, bits, symmetric);
        }
        scale_dtype.round_slice(&raws[..n], &mut rounded[..n]);
        for j in 0..n {
            let cand = params_from_scale(los[j], raws[j], rounded[j], absmaxs[j], bits, symmetric)?;
            let bound = best.map_or(f32::INFINITY, |(_, e)| e);
            match (best, squared_error(values, cand, maxq, bound)) {
                (None, Some(err)) => best = Some((cand, err)),
                // The first candidate is kept whatever its error (even +inf).
                (None, None) => best = Some((cand, f32::INFINITY)),
                (Some((_, best_err)), Some(err)) if err < best_err => best = Some((cand, err)),
                _ => {}
            }
        }
    }
    Ok(best.expect("at least one candidate").0)
}

/// `(rows, cols)` of a tensor quantized as a matrix over its last dimension.
pub fn matrix_dims(shape: &[usize]) -> Result<(usize, usize)> {
    if shape.len() > QTensor::MAX_DIMS {
        return Err(CoreError::shape("tensor shape", format!("at most {} dimensions", QTensor::MAX_DIMS), shape.len()));
    }
    let numel = shape
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d as u64))
        .filter(|&n| n <= QTensor::MAX_ELEMENTS)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| {
            CoreError::shape(
                "tensor shape",
                format!("at most {} elements", QTensor::MAX_ELEMENTS),
                format!("{shape:?}"),
            )
        })?;
    if shape.is_empty() || numel == 0 {
        return Err(CoreError::Empty { shape: shape.to_vec() });
    }
    let cols = *shape.last().expect("non-empty shape");
    Ok((numel / cols, cols))
}

/// Quantizes `weights` (row-major, `shape`; f32, f16 or bf16) with round-to-nearest under
/// `scheme`. Each row is widened, given its parameters and encoded in one pass while it is in
/// cache; only a per-tensor scheme widens the whole tensor (to find its one range).
///
/// ```
/// use lowbit_core::{rtn, Bits, IntScheme};
/// let (rows, cols) = (4, 256);
/// let weights: Vec<f32> = (0..rows * cols).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
/// let q = rtn::quantize(&weights, &[rows, cols], IntScheme::group(Bits::B4, 128))?;
/// let w_hat = q.dequantize();
/// assert_eq!(w_hat.len(), weights.len());
/// // Asymmetric 4-bit groups: every weight lies within half a step (range / 15 / 2) of its code.
/// assert!(weights.iter().zip(&w_hat).all(|(w, h)| (w - h).abs() <= 2.0 / 15.0 / 2.0 + 1e-3));
/// # Ok::<(), lowbit_core::CoreError>(())
/// ```
pub fn quantize<T: Element>(weights: &[T], shape: &[usize], scheme: IntScheme) -> Result<QTensor> {
    let (rows, cols) = matrix_dims(shape)?;
    let numel = rows * cols;
    if weights.len() != numel {
        return Err(CoreError::shape("quantize", format!("{numel} elements for shape {shape:?}"), weights.len()));
    }
    scheme.granularity.validate(cols, scheme.bits)?;
    check_finite(weights)?;
    let IntScheme { bits, symmetric, scale_dtype, clip, granularity } = scheme;
    let per_tensor = match granularity {
        Granularity::PerTensor => {
            let mut buf = Vec::new();
            Some(group_params(T::as_f32(weights, &mut buf), bits, symmetric, scale_dtype, clip)?)
        }
        _ => None,
    };
    let per_row = granularity.groups_per_row(cols);
    let mut params = vec![GroupParams { scale: 1.0, zero: 0 }; rows * per_row];
    let seg = segment_len(granularity, cols);
    let row_bits = cols * bits.get() as usize;
    // Byte-aligned rows are packed as they are encoded; otherwise codes are packed at the end.
    let aligned = row_bits % 8 == 0;
    let (out_len, row_out) = if aligned { (packed_len(numel, bits), row_bits / 8) } else { (numel, cols) };
    let mut out = vec![0u8; out_len];
    try_for_each_row(
        &mut params,
        per_row,
        &mut out,
        row_out,
        par::pays(numel * clip.steps()),
        |r, row_params, out_row| {
            let mut buf = Vec::new();
            let row = T::as_f32(&weights[r * cols..(r + 1) * cols], &mut buf);
            if per_tensor.is_none() {
                for (p, group) in row_params.iter_mut().zip(row.chunks(seg)) {
                    *p = group_params(group, bits, symmetric, scale_dtype, clip)?;
                }
            }
            let param = |k: usize| per_tensor.unwrap_or(row_params[k]);
            if aligned {
                let mut codes = vec![0u8; cols];
                encode_segments(row, seg, bits.maxq(), param, &mut codes);
                pack_into(&codes, bits, out_row);
            } else {
                encode_segments(row, seg, bits.maxq(), param, out_row);
            }
            Ok(())
        },
    )?;
    let packed = if aligned {
        out
    } else {
        let mut packed = vec![0u8; packed_len(numel, bits)];
        pack_into(&out, bits, &mut packed);
        packed
    };
    let params = per_tensor.map_or(params, |p| vec![p]);
    Ok(QTensor::from_int_parts(shape.to_vec(), scheme, packed, &params))
}

/// Codes of one row whose `k`-th run of `seg` elements uses `param(k)`.
fn encode_segments(row: &[f32], seg: usize, maxq: u8, param: impl Fn(usize) -> GroupParams, codes: &mut [u8]) {
    for (k, (group, out)) in row.chunks(seg).zip(codes.chunks_mut(seg)).enumerate() {
        param(k).quantize_slice(group, maxq, out);
    }
}

/// Parameters of every group, row-major `[rows, groups_per_row]` (a single entry per tensor).
pub fn choose_params(weights: &[f32], rows: usize, cols: usize, scheme: IntScheme) -> Result<Vec<GroupParams>> {
    let IntScheme { bits, symmetric, scale_dtype, clip, .. } = scheme;
    if scheme.granularity == Granularity::PerTensor {
        return Ok(vec![group_params(weights, bits, symmetric, scale_dtype, clip)?]);
    }
    let seg = segment_len(scheme.granularity, cols);
    let per_row = scheme.granularity.groups_per_row(cols);
    let mut out = vec![GroupParams { scale: 1.0, zero: 0 }; rows * per_row];
    let mut unused = vec![(); rows];
    // A range search scores every candidate over the group: that is the work to split.
    let work = weights.len() * clip.steps();
    try_for_each_row(&mut out, per_row, &mut unused, 1, par::pays(work), |r, row_params, _| {
        let row = &weights[r * cols..(r + 1) * cols];
        for (p, group) in row_params.iter_mut().zip(row.chunks(seg)) {
            *p = group_params(group, bits, symmetric, scale_dtype, clip)?;
        }
        Ok(())
    })?;
    Ok(out)
}

/// Elements that share one parameter entry within a row (the whole row unless grouped).
fn segment_len(granularity: Granularity, cols: usize) -> usize {
    match granularity {
        Granularity::Group(g) => g.min(cols),
        Granularity::PerTensor | Granularity::PerChannel => cols,
    }
}

/// Calls `f(params, start, end)` for each run `[start, end)` of row `r` sharing parameters.
fn for_each_segment(granularity: Granularity, cols: usize, r: usize, mut f: impl FnMut(usize, usize, usize)) {
    let seg = segment_len(granularity, cols);
    let mut start = 0;
    while start < cols {
        let end = (start + seg).min(cols);
        f(granularity.param_index(cols, r * cols + start), start, end);
        start = end;
    }
}

/// Codes of row `r` (unpacked) into `codes`.
fn encode_row(row: &[f32], r: usize, scheme: IntScheme, params: &[GroupParams], codes: &mut [u8]) {
    let cols = row.len();
    let seg = segment_len(scheme.granularity, cols);
    let first = scheme.granularity.param_index(cols, r * cols);
    let per_tensor = scheme.granularity == Granularity::PerTensor;
    encode_segments(row, seg, scheme.bits.maxq(), |k| params[if per_tensor { 0 } else { first + k }], codes);
}

/// Values of row `r` from its unpacked codes.
pub(crate) fn decode_row(codes: &[u8], r: usize, granularity: Granularity, params: &[Affine], out: &mut [f32]) {
    decode_row_with(codes, r, granularity, |p| params[p], out);
}

/// [`decode_row`] with the parameters of group `p` given by `param(p)` (no table of all groups).
pub(crate) fn decode_row_with(
    codes: &[u8],
    r: usize,
    granularity: Granularity,
    param: impl Fn(usize) -> Affine,
    out: &mut [f32],
) {
    for_each_segment(granularity, out.len(), r, |p, a, b| param(p).dequantize_slice(&codes[a..b], &mut out[a..b]));
}

/// Encodes weights with known group parameters into packed codes.
pub fn encode(weights: &[f32], cols: usize, scheme: IntScheme, params: &[GroupParams]) -> Vec<u8> {
    let bits = scheme.bits;
    let numel = weights.len();
    let mut packed = vec![0u8; packed_len(numel, bits)];
    let row_bits = cols * bits.get() as usize;
    if row_bits % 8 == 0 {
        // Rows start on byte boundaries: encode and pack each row independently.
        let row_bytes = row_bits / 8;
        for_each_chunk(&mut packed, row_bytes, par::pays(numel), |r, out| {
            let mut codes = vec![0u8; cols];
            encode_row(&weights[r * cols..(r + 1) * cols], r, scheme, params, &mut codes);
            pack_into(&codes, bits, out);
        });
    } else {
        let mut codes = vec![0u8; numel];
        for_each_chunk(&mut codes, cols, par::pays(numel), |r, out| {
            encode_row(&weights[r * cols..(r + 1) * cols], r, scheme, params, out)
        });
        pack_into(&codes, bits, &mut packed);
    }
    packed
}

/// Stores group parameters as the scheme's scales and (asymmetric only) zeros.
pub fn store_params(scheme: IntScheme, params: &[GroupParams]) -> QParams {
    let scales = Scales::from_f32(params.iter().map(|p| p.scale), scheme.scale_dtype);
    let zeros = (!scheme.symmetric).then(|| ZeroPoints::Codes(params.iter().map(|p| p.zero).collect()));
    QParams::Int { scales, zeros }
}

impl QTensor {
    fn from_int_parts(shape: Vec<usize>, scheme: IntScheme, codes: Vec<u8>, params: &[GroupParams]) -> QTensor {
        QTensor::from_parts_unchecked(shape, Scheme::Int(scheme), codes, store_params(scheme, params))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn scheme(bits: Bits, symmetric: bool, granularity: Granularity, scale_dtype: ScaleDtype) -> IntScheme {
        IntScheme { bits, symmetric, granularity, scale_dtype, clip: ClipSearch::MinMax }
    }

    fn any_bits() -> impl Strategy<Value = Bits> {
        prop_oneof![Just(Bits::B2), Just(Bits::B3), Just(Bits::B4), Just(Bits::B8)]
    }

    proptest! {
        #[test]
        fn rtn_error_is_at_most_half_a_step(
            bits in any_bits(), symmetric in any::<bool>(), f32_scales in any::<bool>(),
            rows in 1usize..6, groups in 1usize..4, gsel in 0usize..3, ragged in any::<bool>(),
            seed in proptest::collection::vec(-100.0f32..100.0, 1..2000),
        ) {
            let g = [8usize, 16, 32][gsel];
            // a ragged row ends in a half group, as 576-wide layers do at group 128
            let cols = g * groups + if ragged { g / 2 } else { 0 };
            let w: Vec<f32> = (0..rows * cols).map(|i| seed[i % seed.len()] * (1.0 + (i % 7) as f32 * 0.1)).collect();
            let dtype = if f32_scales { ScaleDtype::F32 } else { ScaleDtype::F16 };
            let s = scheme(bits, symmetric, Granularity::Group(g), dtype);
            let qt = quantize(&w, &[rows, cols], s).unwrap();
            let dq = qt.dequantize();
            let params = choose_params(&w, rows, cols, s).unwrap();
            let maxq = f32::from(bits.maxq());
            for (i, (&x, &y)) in w.iter().zip(&dq).enumerate() {
                let p = params[s.granularity.param_index(cols, i)];
                let lo_rep = -f32::from(p.zero) * p.scale;
                let hi_rep = (maxq - f32::from(p.zero)) * p.scale;
                // f32 arithmetic slack on top of the half-step bound
                let slack = 1e-5 * x.abs().max(p.scale);
                if x >= lo_rep && x <= hi_rep {
                    prop_assert!((x - y).abs() <= p.scale / 2.0 + slack, "w={x} dq={y} scale={}", p.scale);
                }
                if symmetric && x == 0.0 {
                    prop_assert_eq!(y, 0.0);
                }
            }
        }
    }

    proptest! {
        #[test]
        fn fast_rounding_is_round_half_even(x in -600.0f32..600.0, half in -300i32..300) {
            let clamp = |v: f32| v.clamp(-512.0, 512.0);
            prop_assert_eq!(round_ties_even_small(x), clamp(x).round_ties_even());
            let tie = half as f32 + 0.5;
            prop_assert_eq!(round_ties_even_small(tie), tie.round_ties_even());
        }

        #[test]
        fn code_is_the_spec_formula(w in -1e4f32..1e4, scale in 1e-3f32..10.0, zero in 0u8..=255, b in 0usize..4) {
            let maxq = [3u8, 7, 15, 255][b];
            let zero = zero.min(maxq);
            let p = GroupParams { scale, zero };
            let spec = ((w / scale).round_ties_even() + f32::from(zero)).clamp(0.0, f32::from(maxq)) as u8;
            prop_assert_eq!(p.quantize(w, maxq), spec);
        }
    }

    /// The range search as first written: one candidate at a time, scalar scale rounding, the
    /// std rounding of the zero point, every error summed to the end.
    fn group_params_spec(
        values: &[f32],
        bits: Bits,
        symmetric: bool,
        dtype: ScaleDtype,
        clip: ClipSearch,
    ) -> GroupParams {
        let (mut lo, mut hi) = values.iter().fold((0.0f32, 0.0f32), |(lo, hi), &w| (lo.min(w), hi.max(w)));
        if symmetric {
            hi = hi.max(-lo);
            lo = -hi;
        }
        let params = |lo: f32, hi: f32| {
            let (raw, _) = raw_scale(lo, hi, bits, symmetric);
            let s = dtype.round(raw);
            let scale = if raw == 0.0 {
                1.0
            } else if s == 0.0 {
                half::f16::from_bits(1).to_f32()
            } else {
                s
            };
            let zero = if symmetric {
                bits.symmetric_zero()
            } else {
                (-lo / scale).round_ties_even().clamp(0.0, f32::from(bits.maxq())) as u8
            };
            GroupParams { scale, zero }
        };
        let error = |p: GroupParams| {
            let mut acc = [0.0f32; 16];
            let chunks = values.chunks_exact(16);
            let tail: f32 =
                chunks.remainder().iter().map(|&w| (w - p.dequantize(p.quantize(w, bits.maxq()))).powi(2)).sum();
            for c in chunks {
                for (a, &w) in acc.iter_mut().zip(c) {
                    let d = w - p.dequantize(p.quantize(w, bits.maxq()));
                    *a += d * d;
                }
            }
            acc.iter().sum::<f32>() + tail
        };
        let factors = clip.factors();
        let mut best = params(lo * factors[0], hi * factors[0]);
        let mut best_err = error(best);
        for f in factors.into_iter().skip(1) {
            let cand = params(lo * f, hi * f);
            let err = error(cand);
            if err < best_err {
                best = cand;
                best_err = err;
            }
        }
        best
    }

    proptest! {
        #[test]
        fn range_search_matches_the_spec_bit_for_bit(
            bits in any_bits(), symmetric in any::<bool>(), f32_scales in any::<bool>(),
            grid in prop_oneof![Just(100u32), 1u32..40], shrink in prop_oneof![Just(0.8f32), 0.05f32..1.0],
            spread in prop_oneof![Just(1.0f32), Just(1e-6), Just(3e4)],
            values in proptest::collection::vec(-1.0f32..1.0, 1..300), on_grid in any::<bool>(),
        ) {
            // Values on a coarse grid make ties between candidates common (the first must win).
            let shape = |v: f32| if on_grid { (v * 8.0).round() / 8.0 } else { v * v * v };
            let values: Vec<f32> = values.iter().map(|&v| shape(v) * spread).collect();
            let dtype = if f32_scales { ScaleDtype::F32 } else { ScaleDtype::F16 };
            for clip in [ClipSearch::MinMax, ClipSearch::Mse { grid, max_shrink: shrink }] {
                let got = group_params(&values, bits, symmetric, dtype, clip).unwrap();
                let want = group_params_spec(&values, bits, symmetric, dtype, clip);
                prop_assert_eq!((got.scale.to_bits(), got.zero), (want.scale.to_bits(), want.zero));
            }
        }
    }

    #[test]
    fn range_search_ties_keep_the_first_candidate() {
        // -7 is exact both at scale 1 (code -7) and at shrink 0.875, scale 0.875 (code -8).
        let w = [-7.0f32; 40];
        for dtype in [ScaleDtype::F32, ScaleDtype::F16] {
            let p = group_params(&w, Bits::B4, true, dtype, ClipSearch::MSE_DEFAULT).unwrap();
            assert_eq!(p, group_params_spec(&w, Bits::B4, true, dtype, ClipSearch::MSE_DEFAULT));
            assert_eq!(p.scale, 1.0);
        }
    }

    #[test]
    fn constant_and_zero_groups_do_not_divide_by_zero() {
        for symmetric in [false, true] {
            for value in [0.0f32, 3.5, -2.0] {
                let w = vec![value; 64];
                let qt = quantize(&w, &[2, 32], scheme(Bits::B4, symmetric, Granularity::Group(32), ScaleDtype::F16))
                    .unwrap();
                let dq = qt.dequantize();
                for &y in &dq {
                    assert!(y.is_finite());
                    assert!((y - value).abs() <= value.abs() / 7.0 + 1e-6, "{value} -> {y}");
                }
            }
        }
    }

    #[test]
    fn mse_clip_is_never_worse_than_min_max() {
        let w: Vec<f32> =
            (0..256).map(|i| ((i * 37 % 101) as f32 - 50.0) * if i % 50 == 0 { 8.0 } else { 1.0 }).collect();
        let base = scheme(Bits::B3, false, Granularity::Group(64), ScaleDtype::F32);
        let err = |s: IntScheme| {
            let dq = quantize(&w, &[4, 64], s).unwrap().dequantize();
            w.iter().zip(dq).map(|(a, b)| (a - b) * (a - b)).sum::<f32>()
        };
        let mse = IntScheme { clip: ClipSearch::MSE_DEFAULT, ..base };
        assert!(err(mse) < err(base));
    }

    #[test]
    fn bad_inputs_are_named_errors() {
        let s = scheme(Bits::B4, false, Granularity::Group(32), ScaleDtype::F16);
        assert!(matches!(quantize(&[f32::NAN; 32], &[1, 32], s), Err(CoreError::NonFinite { index: 0, .. })));
        assert!(matches!(Granularity::Group(32).require_dividing(48), Err(CoreError::GroupSize { .. })));
        assert!(matches!(
            quantize(&[0.0; 48], &[1, 48], IntScheme { granularity: Granularity::Group(0), ..s }),
            Err(CoreError::GroupSize { .. })
        ));
        assert!(matches!(quantize::<f32>(&[], &[0, 32], s), Err(CoreError::Empty { .. })));
        assert!(matches!(quantize(&[0.0; 3], &[1, 32], s), Err(CoreError::Shape { .. })));
        assert!(matches!(Bits::try_from(5), Err(CoreError::UnsupportedBits { bits: 5 })));
        assert!(matches!(quantize(&[1e9; 32], &[1, 32], s), Err(CoreError::ScaleOverflow { .. })));
    }
}
