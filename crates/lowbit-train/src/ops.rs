//! One Llama operation per function pair: `*_forward` computes the output (and keeps what the
//! backward pass needs), `*_backward` maps the output's gradient to the inputs' gradients.

use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use lowbit_cpu::ops::exp_inplace;

/// `a[m, k] · b[n, k]^T` (a linear layer: `x W^T`).
pub fn matmul_nt(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; m * n];
    let (a, b) = (MatRef::from_row_major_slice(a, m, k), MatRef::from_row_major_slice(b, n, k));
    matmul(MatMut::from_row_major_slice_mut(&mut out, m, n), Accum::Replace, a, b.transpose(), 1.0, Par::Seq);
    out
}

/// `a[m, k] · b[k, n]` (the input gradient of a linear layer: `dy W`).
pub fn matmul_nn(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; m * n];
    let (a, b) = (MatRef::from_row_major_slice(a, m, k), MatRef::from_row_major_slice(b, k, n));
    matmul(MatMut::from_row_major_slice_mut(&mut out, m, n), Accum::Replace, a, b, 1.0, Par::Seq);
    out
}

/// `a[k, m]^T · b[k, n]` (the weight gradient of a linear layer: `dy^T x`).
pub fn matmul_tn(a: &[f32], b: &[f32], k: usize, m: usize, n: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; m * n];
    let (a, b) = (MatRef::from_row_major_slice(a, k, m), MatRef::from_row_major_slice(b, k, n));
    matmul(MatMut::from_row_major_slice_mut(&mut out, m, n), Accum::Replace, a.transpose(), b, 1.0, Par::Seq);
    out
}

/// `y = x / rms(x) * g` per row of `x[t, h]`; returns `y` and each row's `1 / rms`.
pub fn rms_norm_forward(x: &[f32], g: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    let h = g.len();
    let mut y = vec![0.0f32; x.len()];
    let mut inv = Vec::with_capacity(x.len() / h);
    for (row, out) in x.chunks_exact(h).zip(y.chunks_exact_mut(h)) {
        let ms = row.iter().map(|v| v * v).sum::<f32>() / h as f32;
        let r = 1.0 / (ms + eps).sqrt();
        for ((o, &v), &w) in out.iter_mut().zip(row).zip(g) {
            *o = v * r * w;
        }
        inv.push(r);
    }
    (y, inv)
}

/// Gradients of [`rms_norm_forward`]: `(dx, dg)`.
pub fn rms_norm_backward(x: &[f32], g: &[f32], inv_rms: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let h = g.len();
    let mut dx = vec![0.0f32; x.len()];
    let mut dg = vec![0.0f32; h];
    for (((row, d), out), &r) in x.chunks_exact(h).zip(dy.chunks_exact(h)).zip(dx.chunks_exact_mut(h)).zip(inv_rms) {
        // xhat = x r, y = xhat g: dxhat = dy g, dx = r (dxhat - xhat mean(dxhat xhat)).
        let mut dot = 0.0f32;
        for j in 0..h {
            let xhat = row[j] * r;
            dg[j] += d[j] * xhat;
            dot += d[j] * g[j] * xhat;
        }
        let mean = dot / h as f32;
        for j in 0..h {
            out[j] = r * (d[j] * g[j] - row[j] * r * mean);
        }
    }
    (dx, dg)
}

/// Rotate-half RoPE tables for positions `0..t`: `cos[p * d/2 + i]`, `sin[...]` of
/// `p * theta^(-2i/d)`, as Hugging Face's Llama computes them.
pub fn rope_tables(t: usize, head_dim: usize, theta: f32) -> (Vec<f32>, Vec<f32>) {
    let half = head_dim / 2;
    let inv_freq: Vec<f32> = (0..half).map(|i| 1.0 / theta.powf((2 * i) as f32 / head_dim as f32)).collect();
    let mut cos = Vec::with_capacity(t * half);
    let mut sin = Vec::with_capacity(t * half);
    for p in 0..t {
        for &f in &inv_freq {
            let a = p as f32 * f;
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    (cos, sin)
}

/// Rotates every head of `x[t, heads * head_dim]` in place (`inverse`: by the opposite angle,
/// which is the backward pass: the rotation's transpose).
pub fn rope(x: &mut [f32], head_dim: usize, cos: &[f32], sin: &[f32], inverse: bool) {
    let half = head_dim / 2;
    let width = x.len() / (cos.len() / half);
    let sign = if inverse { -1.0 } else { 1.0 };
    for (p, row) in x.chunks_exact_mut(width).enumerate() {
        let (c, s) = (&cos[p * half..(p + 1) * half], &sin[p * half..(p + 1) * half]);
        for head in row.chunks_exact_mut(head_dim) {
            for i in 0..half {
                let (x1, x2, si) = (head[i], head[i + half], sign * s[i]);
                head[i] = x1 * c[i] - x2 * si;
                head[i + half] = x2 * c[i] + x1 * si;
            }
        }
    }
}

/// Shape of a grouped-query attention: `heads` query heads share `kv_heads` key/value heads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    pub tokens: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
}

impl AttentionShape {
    fn kv_of(&self, h: usize) -> usize {
        h / (self.heads / self.kv_heads)
    }
}

/// Head `h`'s columns of `x[t, heads * d]`, contiguous (`[t, d]`).
fn head_of(x: &[f32], h: usize, heads: usize, d: usize) -> Vec<f32> {
    x.chunks_exact(heads * d).flat_map(|row| &row[h * d..(h + 1) * d]).copied().collect()
}

/// Adds `src[t, d]` into head `h`'s columns of `x[t, heads * d]`.
fn add_head(x: &mut [f32], src: &[f32], h: usize, heads: usize, d: usize) {
    for (row, s) in x.chunks_exact_mut(heads * d).zip(src.chunks_exact(d)) {
        row[h * d..(h + 1) * d].iter_mut().zip(s).for_each(|(a, b)| *a += b);
    }
}

/// Causal attention `softmax(q k^T / sqrt(d)) v` per head; `q` is `[t, heads * d]`, `k` and `v`
/// are `[t, kv_heads * d]`. Returns the output and the probabilities `p[head][i][j]` (row-major
/// `t x t`, zero for `j > i`). Each head's products are matrix products: the masked half is
/// computed and discarded, still far faster than a scalar loop over the causal half.
pub fn attention_forward(q: &[f32], k: &[f32], v: &[f32], s: AttentionShape) -> (Vec<f32>, Vec<f32>) {
    let AttentionShape { tokens: t, heads, kv_heads, head_dim: d } = s;
    let scale = 1.0 / (d as f32).sqrt();
    let mut out = vec![0.0f32; t * heads * d];
    let mut probs = Vec::with_capacity(heads * t * t);
    let kvs: Vec<(Vec<f32>, Vec<f32>)> =
        (0..kv_heads).map(|kv| (head_of(k, kv, kv_heads, d), head_of(v, kv, kv_heads, d))).collect();
    for h in 0..heads {
        let (kh, vh) = &kvs[s.kv_of(h)];
        let mut p = matmul_nt(&head_of(q, h, heads, d), kh, t, d, t);
        for (i, row) in p.chunks_exact_mut(t).enumerate() {
            let max = row[..=i].iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x * scale));
            row[..=i].iter_mut().for_each(|x| *x = *x * scale - max);
            exp_inplace(&mut row[..=i]);
            let sum: f32 = row[..=i].iter().sum();
            row[..=i].iter_mut().for_each(|x| *x /= sum);
            row[i + 1..].fill(0.0);
        }
        add_head(&mut out, &matmul_nn(&p, vh, t, t, d), h, heads, d);
        probs.extend_from_slice(&p);
    }
    (out, probs)
}

/// Gradients of [`attention_forward`]: `(dq, dk, dv)`.
pub fn attention_backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    probs: &[f32],
    dout: &[f32],
    s: AttentionShape,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let AttentionShape { tokens: t, heads, kv_heads, head_dim: d } = s;
    let scale = 1.0 / (d as f32).sqrt();
    let (mut dq, mut dk, mut dv) = (vec![0.0f32; q.len()], vec![0.0f32; k.len()], vec![0.0f32; v.len()]);
    let kvs: Vec<(Vec<f32>, Vec<f32>)> =
        (0..kv_heads).map(|kv| (head_of(k, kv, kv_heads, d), head_of(v, kv, kv_heads, d))).collect();
    for h in 0..heads {
        let kv = s.kv_of(h);
        let (kh, vh) = &kvs[kv];
        let p = &probs[h * t * t..(h + 1) * t * t];
        let (qh, doh) = (head_of(q, h, heads, d), head_of(dout, h, heads, d));
        // dv += p^T do; dp = do v^T; ds = p (dp - sum_l p_l dp_l) / sqrt(d).
        add_head(&mut dv, &matmul_tn(p, &doh, t, t, d), kv, kv_heads, d);
        let mut ds = matmul_nt(&doh, vh, t, d, t);
        for (prow, dsrow) in p.chunks_exact(t).zip(ds.chunks_exact_mut(t)) {
            let dot: f32 = prow.iter().zip(dsrow.iter()).map(|(a, b)| a * b).sum();
            dsrow.iter_mut().zip(prow).for_each(|(x, &pj)| *x = pj * (*x - dot) * scale);
        }
        add_head(&mut dq, &matmul_nn(&ds, kh, t, t, d), h, heads, d);
        add_head(&mut dk, &matmul_tn(&ds, &qh, t, t, d), kv, kv_heads, d);
    }
    (dq, dk, dv)
}

/// `1 / (1 + exp(-x))` of every element (vectorized exponentials).
fn sigmoid(x: &[f32]) -> Vec<f32> {
    let mut s: Vec<f32> = x.iter().map(|v| -v).collect();
    exp_inplace(&mut s);
    s.iter_mut().for_each(|e| *e = 1.0 / (1.0 + *e));
    s
}

/// The SiLU-gated product `silu(gate) * up`, elementwise.
pub fn swiglu_forward(gate: &[f32], up: &[f32]) -> Vec<f32> {
    let mut out = sigmoid(gate);
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g * *o * u;
    }
    out
}

/// Gradients of [`swiglu_forward`]: `(dgate, dup)`.
pub fn swiglu_backward(gate: &[f32], up: &[f32], dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let mut dg = sigmoid(gate);
    let mut du = vec![0.0f32; gate.len()];
    for ((((dg, du), &g), &u), &d) in dg.iter_mut().zip(&mut du).zip(gate).zip(up).zip(dy) {
        let s = *dg;
        *dg = d * u * s * (1.0 + g * (1.0 - s));
        *du = d * g * s;
    }
    (dg, du)
}
