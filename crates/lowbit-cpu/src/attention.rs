//! Causal grouped-query attention over the KV cache.
//!
//! The fast path is flash-attention style (Dao et al. 2022, algorithm 1) in safe Rust that the
//! compiler vectorizes: for each block of query tokens and each KV head, the queries of all
//! heads sharing that KV head (GQA) are stacked into rows; keys are walked in tiles of
//! [`KEY_BLOCK`], each tile's scores computed as a small `ROWS x KEY_BLOCK` register-tiled GEMM
//! against the transposed keys, and folded into a running max / running sum / output (online
//! softmax), so no `n x n` score matrix exists. `exp` is [`ops::exp_approx`] (no libm call).
//! Query blocks run in parallel (feature `parallel`); each block's loops are compiled for every
//! [`KernelLevel`] (`leveled!`: baseline, AVX2 + FMA, AVX-512), so `LOWBIT_KERNELS` governs them.
//!
//! [`crate::scalar::attention`] (a per-query loop with libm `exp`) is the spec the tests hold the
//! fast path to, within [`ATTENTION_TOL`].

use crate::dispatch::{leveled, Level};
use crate::ops::{self, exp_approx};
use crate::{par, KernelLevel, Result};

/// Keys per tile: one score row of a register tile is this many lanes.
const KEY_BLOCK: usize = 32;
/// Query rows per register tile.
const ROWS: usize = 4;
/// Head-dim lanes per output accumulator (one AVX-512 register).
const LANES: usize = 16;
/// Query tokens per parallel task, at most.
const MAX_QUERY_BLOCK: usize = 32;

/// Largest difference between the fast path and [`crate::scalar::attention`], relative to the
/// largest absolute value of V (outputs are convex combinations of V rows). Both sum in f32 in
/// different orders and the fast path uses a polynomial `exp` (about 2e-7 relative).
pub const ATTENTION_TOL: f32 = 2e-5;

/// The geometry of one attention call (defined with the backend seam in lowbit-core).
pub use lowbit_core::backend::AttnShape;

/// Causal attention of `n` new queries `q [n][heads*hd]` at positions `past..past + n` over the
/// cache `kc`/`vc` `[past + n][kv_heads*hd]` (which already holds the new keys), into
/// `out [n][heads*hd]`.
pub fn attention(shape: &AttnShape, q: &[f32], kc: &[f32], vc: &[f32], past: usize, out: &mut [f32]) {
    attention_in(Level::current(), shape, q, kc, vc, past, out, true)
}

/// [`attention`] with the kernels of `level` (for tests and benchmarks); a level this CPU lacks
/// is an error.
pub fn attention_with(
    level: KernelLevel,
    shape: &AttnShape,
    q: &[f32],
    kc: &[f32],
    vc: &[f32],
    past: usize,
    out: &mut [f32],
) -> Result<()> {
    attention_in(Level::new(level)?, shape, q, kc, vc, past, out, true);
    Ok(())
}

/// One decode sequence of [`attention_decode_batch`]: its query, keys, values, past and output.
pub type DecodeSeq<'a> = (&'a [f32], &'a [f32], &'a [f32], usize, &'a mut [f32]);

/// [`attention`] for a batch of single-query (decode) sequences: the sequences run side by side
/// on the rayon pool, each on one thread (a batch has far more work than one sequence's heads).
pub fn attention_decode_batch(shape: &AttnShape, seqs: Vec<DecodeSeq<'_>>) {
    let level = Level::current();
    let work: usize = seqs.iter().map(|s| (s.3 + 1) * shape.q_dim()).sum();
    par::for_each_item(seqs, par::pays(work), |(q, kc, vc, past, out)| {
        attention_in(level, shape, q, kc, vc, past, out, false)
    });
}

/// [`attention`] at `level`; a single query's heads may split over the decode pool when
/// `may_split`.
#[allow(clippy::too_many_arguments)]
fn attention_in(
    level: Level,
    shape: &AttnShape,
    q: &[f32],
    kc: &[f32],
    vc: &[f32],
    past: usize,
    out: &mut [f32],
    may_split: bool,
) {
    let qd = shape.q_dim();
    let n = out.len() / qd;
    if n == 0 {
        return;
    }
    if n == 1 {
        // Decode: one query per head; keys and values are read in place (no tiles to fill), the
        // heads split over the pool once there are enough keys to pay for it.
        let hd = shape.head_dim;
        let keys = past + 1 - shape.first_key(past);
        let split = may_split && keys * shape.heads >= DECODE_SPLIT_KEYS;
        let one = |h: usize, o: &mut [f32]| {
            let mut scores = Vec::with_capacity(keys);
            attend_one(level, shape, &q[h * hd..(h + 1) * hd], kc, vc, past, h, o, &mut scores);
        };
        if split {
            crate::pool::for_each_chunk(out, hd, |h, o| one(h, o));
        } else {
            out.chunks_exact_mut(hd).enumerate().for_each(|(h, o)| one(h, o));
        }
        return;
    }
    // Enough tasks to keep every thread busy (later blocks cost more under the causal mask),
    // no more queries per task than a few register tiles' worth of K/V reuse needs.
    let block = n.div_ceil(4 * par::threads()).clamp(1, MAX_QUERY_BLOCK);
    par::for_each_chunk(out, block * qd, true, |bi, o| {
        attend_block(level, shape, q, kc, vc, past, bi * block, o);
    });
}

/// Keys x heads of a decode step from which its heads run on the pool.
const DECODE_SPLIT_KEYS: usize = 2048;

leveled! {
/// The one query `q` (head `head`, at position `pos`) over its keys: scores read each key row in
/// place, then an exact softmax (max, `exp`, sum) and the weighted sum of the value rows.
#[allow(clippy::too_many_arguments)]
fn attend_one<const FMA: bool>(
    shape: &AttnShape,
    q: &[f32],
    kc: &[f32],
    vc: &[f32],
    pos: usize,
    head: usize,
    out: &mut [f32],
    scores: &mut Vec<f32>,
) {
    let (hd, kvd) = (shape.head_dim, shape.kv_dim());
    let off = head / (shape.heads / shape.kv_heads) * hd;
    let scale = 1.0 / (hd as f32).sqrt();
    let first = shape.first_key(pos);
    scores.clear();
    let mut max = f32::NEG_INFINITY;
    for j in first..=pos {
        let k = &kc[j * kvd + off..j * kvd + off + hd];
        let mut acc = [0f32; LANES];
        let (qc, kc) = (q.chunks_exact(LANES), k.chunks_exact(LANES));
        let mut tail = 0f32;
        for (a, b) in qc.remainder().iter().zip(kc.remainder()) {
            tail = fmadd::<FMA>(*a, *b, tail);
        }
        for (a, b) in qc.zip(kc) {
            for l in 0..LANES {
                acc[l] = fmadd::<FMA>(a[l], b[l], acc[l]);
            }
        }
        let sc = (ops::sum_lanes(&acc) + tail) * scale;
        max = if sc > max { sc } else { max };
        scores.push(sc);
    }
    let mut sum = 0f32;
    for x in scores.iter_mut() {
        *x = exp_approx(*x - max);
        sum += *x;
    }
    out.fill(0.0);
    for (j, &p) in (first..=pos).zip(scores.iter()) {
        let v = &vc[j * kvd + off..j * kvd + off + hd];
        for (o, &x) in out.iter_mut().zip(v) {
            *o = fmadd::<FMA>(p, x, *o);
        }
    }
    let inv = 1.0 / sum;
    out.iter_mut().for_each(|o| *o *= inv);
}
}

/// Per-task scratch: stacked queries, the transposed key tile, the value tile, and the
/// online-softmax state of each row.
struct Scratch {
    /// Padded head dim (a multiple of [`LANES`]).
    hdp: usize,
    q: Vec<f32>,
    kt: Vec<f32>,
    v: Vec<f32>,
    o: Vec<f32>,
    max: Vec<f32>,
    sum: Vec<f32>,
    pos: Vec<usize>,
    first: Vec<usize>,
}

leveled! {
/// Queries `t0..t0 + out.len() / qd`, all heads, at `level`.
#[allow(clippy::too_many_arguments)]
fn attend_block<const FMA: bool>(
    shape: &AttnShape,
    q: &[f32],
    kc: &[f32],
    vc: &[f32],
    past: usize,
    t0: usize,
    out: &mut [f32],
) {
    let (hd, qd, kvd) = (shape.head_dim, shape.q_dim(), shape.kv_dim());
    let group = shape.heads / shape.kv_heads;
    let nt = out.len() / qd;
    let rows = (nt * group).div_ceil(ROWS) * ROWS;
    let hdp = hd.div_ceil(LANES) * LANES;
    let mut s = Scratch {
        hdp,
        q: vec![0.0; rows * hdp],
        kt: vec![0.0; hdp * KEY_BLOCK],
        v: vec![0.0; KEY_BLOCK * hdp],
        o: vec![0.0; rows * hdp],
        max: vec![0.0; rows],
        sum: vec![0.0; rows],
        pos: vec![0; rows],
        first: vec![0; rows],
    };
    let scale = 1.0 / (hd as f32).sqrt();
    for kvh in 0..shape.kv_heads {
        // Row r = (token r / group, head kvh * group + r % group); padding rows repeat the last.
        for r in 0..rows {
            let rr = r.min(nt * group - 1);
            let (t, head) = (rr / group, kvh * group + rr % group);
            let src = &q[(t0 + t) * qd + head * hd..(t0 + t) * qd + (head + 1) * hd];
            s.q[r * hdp..r * hdp + hd].iter_mut().zip(src).for_each(|(d, &x)| *d = x * scale);
            s.pos[r] = past + t0 + t;
            s.first[r] = shape.first_key(s.pos[r]);
        }
        s.max.fill(f32::NEG_INFINITY);
        s.sum.fill(0.0);
        s.o.fill(0.0);
        let key_end = past + t0 + nt;
        let mut kb = s.first[0] / KEY_BLOCK * KEY_BLOCK;
        while kb < key_end {
            let nk = KEY_BLOCK.min(key_end - kb);
            for j in 0..nk {
                let off = (kb + j) * kvd + kvh * hd;
                for (d, &x) in kc[off..off + hd].iter().enumerate() {
                    s.kt[d * KEY_BLOCK + j] = x;
                }
                s.v[j * hdp..j * hdp + hd].copy_from_slice(&vc[off..off + hd]);
            }
            key_tile::<FMA>(&mut s, kb, nk);
            kb += KEY_BLOCK;
        }
        for r in 0..nt * group {
            let (t, head) = (r / group, kvh * group + r % group);
            let inv = 1.0 / s.sum[r];
            let dst = &mut out[t * qd + head * hd..t * qd + (head + 1) * hd];
            dst.iter_mut().zip(&s.o[r * hdp..r * hdp + hd]).for_each(|(d, &x)| *d = x * inv);
        }
    }
}
}

#[inline(always)]
fn fmadd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        // wasm has no fused multiply-add (libm's `fmaf` is a call): the exact emulation keeps
        // the simd128 level's attention bit-identical to the FMA levels'.
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        return crate::wasm::fma_f32(a, b, c);
        #[allow(unreachable_code)]
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// Folds keys `kb..kb + nk` (already in `s.kt` / `s.v`) into every row of `s`.
#[inline(always)]
fn key_tile<const FMA: bool>(s: &mut Scratch, kb: usize, nk: usize) {
    let hdp = s.hdp;
    let rows = s.pos.len();
    for rt in (0..rows).step_by(ROWS) {
        let pos = &s.pos[rt..rt + ROWS];
        let first = &s.first[rt..rt + ROWS];
        let (min_pos, max_pos) = (pos[0], pos[ROWS - 1]);
        let (min_first, max_first) = (first[0], first[ROWS - 1]);
        if kb > max_pos || kb + nk <= min_first {
            continue;
        }
        let mut p = scores::<FMA>(&s.q[rt * hdp..(rt + ROWS) * hdp], &s.kt, hdp);
        let unmasked = nk == KEY_BLOCK && kb + KEY_BLOCK - 1 <= min_pos && kb >= max_first;
        if !unmasked {
            for (r, pr) in p.iter_mut().enumerate() {
                for (j, x) in pr.iter_mut().enumerate() {
                    let key = kb + j;
                    if j >= nk || key > pos[r] || key < first[r] {
                        *x = f32::NEG_INFINITY;
                    }
                }
            }
        }
        // Online softmax: rescale what was accumulated under the old max.
        for (r, pr) in p.iter_mut().enumerate() {
            let row = rt + r;
            let block_max = ops::max_lanes(pr);
            if block_max == f32::NEG_INFINITY {
                pr.fill(0.0);
                continue;
            }
            let new_max = s.max[row].max(block_max);
            let corr = exp_approx(s.max[row] - new_max);
            let mut lanes = [0f32; KEY_BLOCK];
            for (x, l) in pr.iter_mut().zip(lanes.iter_mut()) {
                *x = exp_approx(*x - new_max);
                *l = *x;
            }
            s.sum[row] = s.sum[row] * corr + ops::sum_lanes(&lanes);
            s.max[row] = new_max;
            if corr != 1.0 {
                s.o[row * hdp..(row + 1) * hdp].iter_mut().for_each(|x| *x *= corr);
            }
        }
        pv::<FMA>(&p, &s.v, hdp, nk, &mut s.o[rt * hdp..(rt + ROWS) * hdp]);
    }
}

/// Scores of `ROWS` stacked queries `q [ROWS][hdp]` against the transposed key tile
/// `kt [hdp][KEY_BLOCK]`: the accumulators are `ROWS x KEY_BLOCK` lanes held in registers,
/// each step one key row load for `ROWS` broadcast multiply-adds.
#[inline(always)]
fn scores<const FMA: bool>(q: &[f32], kt: &[f32], hdp: usize) -> [[f32; KEY_BLOCK]; ROWS] {
    let mut acc = [[0f32; KEY_BLOCK]; ROWS];
    let (q0, rest) = q.split_at(hdp);
    let (q1, rest) = rest.split_at(hdp);
    let (q2, q3) = rest.split_at(hdp);
    for ((((k, &a), &b), &c), &d) in kt.chunks_exact(KEY_BLOCK).zip(q0).zip(q1).zip(q2).zip(q3) {
        let k: &[f32; KEY_BLOCK] = k.try_into().expect("tile width");
        for l in 0..KEY_BLOCK {
            acc[0][l] = fmadd::<FMA>(a, k[l], acc[0][l]);
            acc[1][l] = fmadd::<FMA>(b, k[l], acc[1][l]);
            acc[2][l] = fmadd::<FMA>(c, k[l], acc[2][l]);
            acc[3][l] = fmadd::<FMA>(d, k[l], acc[3][l]);
        }
    }
    acc
}

/// `o [ROWS][hdp] += p [ROWS][..nk] · v [nk][hdp]`, `LANES` output lanes per row at a time.
#[inline(always)]
fn pv<const FMA: bool>(p: &[[f32; KEY_BLOCK]; ROWS], v: &[f32], hdp: usize, nk: usize, o: &mut [f32]) {
    for c in (0..hdp).step_by(LANES) {
        let mut acc = [[0f32; LANES]; ROWS];
        for (r, a) in acc.iter_mut().enumerate() {
            a.copy_from_slice(&o[r * hdp + c..r * hdp + c + LANES]);
        }
        for j in 0..nk {
            let vj: &[f32; LANES] = v[j * hdp + c..j * hdp + c + LANES].try_into().expect("lanes");
            let (a, b, cc, d) = (p[0][j], p[1][j], p[2][j], p[3][j]);
            for l in 0..LANES {
                acc[0][l] = fmadd::<FMA>(a, vj[l], acc[0][l]);
                acc[1][l] = fmadd::<FMA>(b, vj[l], acc[1][l]);
                acc[2][l] = fmadd::<FMA>(cc, vj[l], acc[2][l]);
                acc[3][l] = fmadd::<FMA>(d, vj[l], acc[3][l]);
            }
        }
        for (r, a) in acc.iter().enumerate() {
            o[r * hdp + c..r * hdp + c + LANES].copy_from_slice(a);
        }
    }
}
