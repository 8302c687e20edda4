//! Helpers the k-quant reference quantizers share (`ggml-quants.c`: `nearest_int`,
//! `make_qx_quants`, `make_q3_quants`, `make_qkx2_quants`, `get_scale_min_k4`), and those of the
//! importance-weighted quantizers (`make_qkx3_quants`, `make_qp_quants`). Each follows the C
//! code's operations in the same order so the results agree bit for bit.

use super::{positive_max, signed_absmax};

/// Weights per k-quant super-block (ggml's `QK_K`).
pub const QK_K: usize = 256;

/// Below this a group counts as all zero (`GROUP_MAX_EPS`).
const GROUP_MAX_EPS: f32 = 1e-15;

/// Round to nearest, ties to even, by ggml's trick: adding 1.5 * 2^23 leaves the integer in the
/// low mantissa bits. Valid for |x| <= 2^22 - 1 (ggml asserts it; out of range gives garbage,
/// never a panic).
pub(crate) fn nearest_int(x: f32) -> i32 {
    let v = x + 12_582_912.0;
    (v.to_bits() & 0x007f_ffff) as i32 - 0x0040_0000
}

/// `make_qx_quants(n, nmax, x, L, rmse_type, qw)`: a symmetric scale for `x`, codes
/// `L = l + nmax` in `0..2 nmax`, refined over 18 nearby scales by weighted least squares. The
/// weights are `qw` when given (an importance matrix), else chosen by `rmse_type`.
pub(crate) fn make_qx_quants(nmax: i32, x: &[f32], ls: &mut [i8], rmse_type: i32, qw: Option<&[f32]>) -> f32 {
    let max = signed_absmax(x);
    if max.abs() < GROUP_MAX_EPS {
        ls.fill(0);
        return 0.0;
    }
    let clamp = |l: i32| l.clamp(-nmax, nmax - 1);
    let mut iscale = -(nmax as f32) / max;
    if rmse_type == 0 {
        for (l, &v) in ls.iter_mut().zip(x) {
            *l = (nmax + clamp(nearest_int(iscale * v))) as i8;
        }
        return 1.0 / iscale;
    }
    let return_early = rmse_type < 0;
    let rmse_type = rmse_type.abs();
    let weight = |i: usize, v: f32| match (qw, rmse_type) {
        (Some(qw), _) => qw[i],
        (None, 1) => v * v,
        (None, 2) => 1.0,
        (None, 3) => v.abs(),
        (None, _) => v.abs().sqrt(),
    };
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for (i, (l_out, &v)) in ls.iter_mut().zip(x).enumerate() {
        let l = clamp(nearest_int(iscale * v));
        *l_out = (l + nmax) as i8;
        let (w, l) = (weight(i, v), l as f32);
        sumlx += w * v * l;
        suml2 += w * l * l;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    if return_early {
        return if suml2 > 0.0 { 0.5 * (scale + 1.0 / iscale) } else { 1.0 / iscale };
    }
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for (i, &v) in x.iter().enumerate() {
            let (w, l) = (weight(i, v), clamp(nearest_int(iscale * v)) as f32);
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (l, &v) in ls.iter_mut().zip(x) {
                *l = (nmax + clamp(nearest_int(iscale * v))) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// `make_q3_quants(n, nmax, x, L, do_rmse = true)`: a symmetric scale refined by moving single
/// codes while the x^2-weighted fit improves (at most five passes); codes `L = l + nmax`.
pub(crate) fn make_q3_quants(nmax: i32, x: &[f32], ls: &mut [i8]) -> f32 {
    let max = signed_absmax(x);
    if max.abs() < GROUP_MAX_EPS {
        ls.fill(0);
        return 0.0;
    }
    let clamp = |l: i32| l.clamp(-nmax, nmax - 1);
    let iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for (l_out, &v) in ls.iter_mut().zip(x) {
        let l = clamp(nearest_int(iscale * v));
        *l_out = l as i8;
        let w = v * v;
        sumlx += w * v * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for (l_i, &v) in ls.iter_mut().zip(x) {
            let w = v * v;
            let li = *l_i as f32;
            let mut slx = sumlx - w * v * li;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * li * li;
                let new_l = clamp(nearest_int(v * sl2 / slx));
                if new_l != *l_i as i32 {
                    slx += w * v * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *l_i = new_l as i8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    for l in ls.iter_mut() {
        *l += nmax as i8;
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// `make_qkx2_quants`: an asymmetric fit `x ~ scale * L - min` with codes `L` in `0..=nmax`,
/// searching `nstep + 1` scales around `nmax / (max - min)` for the least weighted error.
/// Returns `(scale, min)` with `min >= 0` (ggml's `the_min`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    ls: &mut [u8],
    laux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for (&v, &w) in x.iter().zip(weights).skip(1) {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
        sum_w += w;
        sum_x += w * v;
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        ls.fill(0);
        return (0.0, -min);
    }
    let err = |d: f32| if use_mad { d.abs() } else { d * d };
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for ((l, &v), &w) in ls.iter_mut().zip(x).zip(weights) {
        *l = nearest_int(iscale * (v - min)).clamp(0, nmax) as u8;
        best_error += w * err(scale * *l as f32 + min - v);
    }
    if nstep < 1 {
        return (scale, -min);
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for ((la, &v), &w) in laux.iter_mut().zip(x).zip(weights) {
            let l = nearest_int(iscale * (v - min)).clamp(0, nmax);
            *la = l as u8;
            let l = l as f32;
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * v;
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut cur_error = 0f32;
            for ((&la, &v), &w) in laux.iter().zip(x).zip(weights) {
                cur_error += w * err(this_scale * la as f32 + this_min - v);
            }
            if cur_error < best_error {
                ls.copy_from_slice(laux);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// `make_qkx3_quants(n, nmax, x, weights, L, &the_min, Laux, rmin, rdelta, nstep, use_mad)`
/// with weights given: as [`make_qkx2_quants`] (the fit `x ~ scale * L - min`, codes in
/// `0..=nmax`), but a block with `max <= min` is all zero and the scan is the weighted
/// quantizers' (`rmin = -0.9`, `rdelta = 0.05`, `nstep = 36` at every call site). Returns
/// `(scale, min)` with `min >= 0` (ggml's `the_min`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn make_qkx3_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    ls: &mut [u8],
    laux: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let (mut min, mut max) = (x[0], x[0]);
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for (&v, &w) in x.iter().zip(weights).skip(1) {
        if v < min {
            min = v;
        }
        if v > max {
            max = v;
        }
        sum_w += w;
        sum_x += w * v;
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max <= min {
        ls.fill(0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_mad = 0f32;
    for ((l, &v), &w) in ls.iter_mut().zip(x).zip(weights) {
        *l = nearest_int(iscale * (v - min)).clamp(0, nmax) as u8;
        let diff = scale * *l as f32 + min - v;
        best_mad += w * (diff * diff);
    }
    if nstep < 1 {
        return (scale, -min);
    }
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for ((la, &v), &w) in laux.iter_mut().zip(x).zip(weights) {
            let l = nearest_int(iscale * (v - min)).clamp(0, nmax);
            *la = l as u8;
            let l = l as f32;
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * v;
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut mad = 0f32;
            for ((&la, &v), &w) in laux.iter().zip(x).zip(weights) {
                let diff = this_scale * la as f32 + this_min - v;
                mad += w * (diff * diff);
            }
            if mad < best_mad {
                ls.copy_from_slice(laux);
                best_mad = mad;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// `make_qp_quants(n, nmax, x, L, quant_weights)`: codes `L` in `0..=nmax` for non-negative `x`
/// (the sub-block scales or mins of Q2_K/Q4_K/Q5_K) and one scale, chosen by weighted error over
/// 9 scales, then refined by moving single codes (at most five passes). C keeps the codes in a
/// `uint8_t`, so a negative code wraps; `as u8` does the same.
pub(crate) fn make_qp_quants(nmax: i32, x: &[f32], ls: &mut [u8], qw: &[f32]) -> f32 {
    let max = x.iter().fold(0f32, |m, &v| if m > v { m } else { v });
    if max < GROUP_MAX_EPS {
        ls.fill(0);
        return 0.0;
    }
    let mut iscale = nmax as f32 / max;
    for (l, &v) in ls.iter_mut().zip(x) {
        *l = nearest_int(iscale * v) as u8;
    }
    let scale = 1.0 / iscale;
    let mut best_mse = 0f32;
    for ((&l, &v), &w) in ls.iter().zip(x).zip(qw) {
        let diff = v - scale * l as f32;
        best_mse += w * diff * diff;
    }
    for is in -4..=4 {
        if is == 0 {
            continue;
        }
        let iscale_is = (0.1 * is as f32 + nmax as f32) / max;
        let scale_is = 1.0 / iscale_is;
        let mut mse = 0f32;
        for (&v, &w) in x.iter().zip(qw) {
            let l = nearest_int(iscale_is * v).min(nmax);
            let diff = v - scale_is * l as f32;
            mse += w * diff * diff;
        }
        if mse < best_mse {
            best_mse = mse;
            iscale = iscale_is;
        }
    }
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for ((l_out, &v), &w) in ls.iter_mut().zip(x).zip(qw) {
        let l = nearest_int(iscale * v).min(nmax);
        *l_out = l as u8;
        sumlx += w * v * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    for _ in 0..5 {
        let mut n_changed = 0;
        for ((l_i, &v), &w) in ls.iter_mut().zip(x).zip(qw) {
            let li = *l_i as f32;
            let mut slx = sumlx - w * v * li;
            let mut sl2 = suml2 - w * li * li;
            if slx > 0.0 && sl2 > 0.0 {
                let new_l = nearest_int(v * sl2 / slx).min(nmax);
                if new_l != *l_i as i32 {
                    slx += w * v * new_l as f32;
                    sl2 += w * new_l as f32 * new_l as f32;
                    if slx * slx * suml2 > sumlx * sumlx * sl2 {
                        *l_i = new_l as u8;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed += 1;
                    }
                }
            }
        }
        if n_changed == 0 {
            break;
        }
    }
    if suml2 > 0.0 {
        sumlx / suml2
    } else {
        0.0
    }
}

/// Sub-block `j`'s 6-bit (scale, min) in the 12 packed bytes of Q4_K/Q5_K
/// (`get_scale_min_k4`): sub-blocks 0..4 keep theirs in the low 6 bits of bytes `j` and `j + 4`;
/// 4..8 take 4 low bits from byte `j + 4` and their top 2 bits from the spare high bits of bytes
/// `j - 4` and `j`.
/// Scales and mins `(d1, m1, d2, m2)` of sub-blocks `2 * pair` and `2 * pair + 1` of a
/// Q4_K/Q5_K super-block (`d`, `dmin` its super-scales), as both dequantizers use them.
pub(crate) fn pair_scales(d: f32, dmin: f32, pair: usize, scales: &[u8; 12]) -> (f32, f32, f32, f32) {
    let (sc1, m1) = scale_min_k4(2 * pair, scales);
    let (sc2, m2) = scale_min_k4(2 * pair + 1, scales);
    (d * sc1 as f32, dmin * m1 as f32, d * sc2 as f32, dmin * m2 as f32)
}

pub(crate) fn scale_min_k4(j: usize, s: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        ((s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
    }
}

/// The inverse of [`scale_min_k4`] for 6-bit `sc` and `m`.
pub(crate) fn pack_scale_min_k4(sc: &[u8; 8], m: &[u8; 8]) -> [u8; 12] {
    let mut s = [0u8; 12];
    for j in 0..8 {
        let (ls, lm) = (sc[j], m[j]);
        if j < 4 {
            s[j] = ls;
            s[j + 4] = lm;
        } else {
            s[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            s[j - 4] |= (ls >> 4) << 6;
            s[j] |= (lm >> 4) << 6;
        }
    }
    s
}

/// The Q4_K/Q5_K reference quantizer's first half (shared by both): per 32-weight sub-block an
/// asymmetric fit with weights `rms + |x|`, 6-bit scales and mins relative to the largest,
/// then codes recomputed against the rounded scales. Returns `(d, dmin, scales, codes)`.
pub(crate) fn quantize_k4_k5(
    x: &[f32],
    nmax: i32,
    rmin: f32,
    nstep: i32,
) -> (half::f16, half::f16, [u8; 12], [u8; QK_K]) {
    let mut l = [0u8; QK_K];
    let mut laux = [0u8; 32];
    let mut weights = [0f32; 32];
    let (mut scales, mut mins) = ([0f32; 8], [0f32; 8]);
    for j in 0..QK_K / 32 {
        let xs = &x[32 * j..32 * j + 32];
        let mut sum_x2 = 0f32;
        for &v in xs {
            sum_x2 += v * v;
        }
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, &v) in weights.iter_mut().zip(xs) {
            *w = av_x + v.abs();
        }
        let (s, m) =
            make_qkx2_quants(nmax, xs, &weights, &mut l[32 * j..32 * j + 32], &mut laux, rmin, 0.1, nstep, false);
        scales[j] = s;
        mins[j] = m;
    }
    let (max_scale, max_min) = (positive_max(&scales), positive_max(&mins));
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let (mut ls, mut lm) = ([0u8; 8], [0u8; 8]);
    for j in 0..QK_K / 32 {
        // C stores nearest_int's int in a uint8_t (wrapping) before MIN(63, .).
        ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
    }
    let packed = pack_scale_min_k4(&ls, &lm);
    let d = half::f16::from_f32(max_scale / 63.0);
    let dmin = half::f16::from_f32(max_min / 63.0);
    for j in 0..QK_K / 32 {
        let (sc, m) = scale_min_k4(j, &packed);
        let dd = d.to_f32() * sc as f32;
        if dd == 0.0 {
            continue;
        }
        let dm = dmin.to_f32() * m as f32;
        for ii in 0..32 {
            l[32 * j + ii] = nearest_int((x[32 * j + ii] + dm) / dd).clamp(0, nmax) as u8;
        }
    }
    (d, dmin, packed, l)
}

/// The Q4_K/Q5_K importance-weighted quantizer's first half (`quantize_row_q4_K_impl`,
/// `quantize_row_q5_K_impl` with `quant_weights`): per 32-weight sub-block `make_qkx3_quants`
/// with weights `qw * sqrt(sigma2 + x^2)`, `sigma2 = 2 * mean x^2` of the super-block; the 6-bit
/// scales and mins by `make_qp_quants` weighted by each sub-block's total weight; codes
/// recomputed against the rounded scales. Q5_K clamps the 6-bit values to 63 before packing and
/// Q4_K does not (`clamp_6bit`; it differs only for a code that wrapped below zero).
pub(crate) fn quantize_k4_k5_weighted(
    x: &[f32],
    qw: &[f32],
    nmax: i32,
    clamp_6bit: bool,
) -> (half::f16, half::f16, [u8; 12], [u8; QK_K]) {
    let mut l = [0u8; QK_K];
    let mut laux = [0u8; 32];
    let mut weights = [0f32; 32];
    let (mut scales, mut mins, mut sw) = ([0f32; 8], [0f32; 8], [0f32; 8]);
    let mut sum_x2 = 0f32;
    for &v in &x[..QK_K] {
        sum_x2 += v * v;
    }
    let sigma2 = 2.0 * sum_x2 / QK_K as f32;
    for j in 0..QK_K / 32 {
        let (xs, qs) = (&x[32 * j..32 * j + 32], &qw[32 * j..32 * j + 32]);
        for ((w, &v), &q) in weights.iter_mut().zip(xs).zip(qs) {
            *w = q * (sigma2 + v * v).sqrt();
        }
        let mut sumw = 0f32;
        for &w in &weights {
            sumw += w;
        }
        sw[j] = sumw;
        let (s, m) = make_qkx3_quants(nmax, xs, &weights, &mut l[32 * j..32 * j + 32], &mut laux, -0.9, 0.05, 36);
        scales[j] = s;
        mins[j] = m;
    }
    let (mut ls, mut lm) = ([0u8; 8], [0u8; 8]);
    let d_block = make_qp_quants(63, &scales, &mut ls, &sw);
    let m_block = make_qp_quants(63, &mins, &mut lm, &sw);
    if clamp_6bit {
        ls.iter_mut().chain(lm.iter_mut()).for_each(|v| *v = (*v).min(63));
    }
    let packed = pack_scale_min_k4(&ls, &lm);
    let d = half::f16::from_f32(d_block);
    let dmin = half::f16::from_f32(m_block);
    for j in 0..QK_K / 32 {
        let (sc, m) = scale_min_k4(j, &packed);
        let dd = d.to_f32() * sc as f32;
        if dd == 0.0 {
            continue;
        }
        let dm = dmin.to_f32() * m as f32;
        for ii in 0..32 {
            l[32 * j + ii] = nearest_int((x[32 * j + ii] + dm) / dd).clamp(0, nmax) as u8;
        }
    }
    (d, dmin, packed, l)
}

/// Packs 2-bit codes as Q2_K and Q3_K do: per 128 weights, byte `l` of 32 holds weights
/// `l`, `l + 32`, `l + 64`, `l + 96` in bits 0-1, 2-3, 4-5, 6-7.
pub(crate) fn pack_2bit(l: &[u8; QK_K]) -> [u8; QK_K / 4] {
    let mut qs = [0u8; QK_K / 4];
    for j in (0..QK_K).step_by(128) {
        for k in 0..32 {
            qs[j / 4 + k] = l[j + k] | (l[j + k + 32] << 2) | (l[j + k + 64] << 4) | (l[j + k + 96] << 6);
        }
    }
    qs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_int_rounds_half_to_even() {
        for (x, n) in [(0.5, 0), (1.5, 2), (2.5, 2), (-0.5, 0), (-1.5, -2), (3.49, 3), (-3.51, -4), (100.0, 100)] {
            assert_eq!(nearest_int(x), n, "{x}");
        }
    }

    #[test]
    fn scale_min_packing_round_trips() {
        let sc: [u8; 8] = [1, 2, 3, 4, 40, 50, 60, 63];
        let mn: [u8; 8] = [0, 1, 2, 3, 33, 17, 5, 62];
        let s = pack_scale_min_k4(&sc, &mn);
        for j in 0..8 {
            assert_eq!(scale_min_k4(j, &s), (sc[j], mn[j]));
        }
    }
}
