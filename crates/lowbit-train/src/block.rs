//! A Llama decoder block (pre-norm attention and SiLU-gated MLP, both residual): forward pass
//! with a tape, backward pass to the input, the weights and the norm gains.

use crate::grid::BlockGrids;
use crate::ops::{
    attention_backward, attention_forward, matmul_nn, matmul_nt, matmul_tn, rms_norm_backward, rms_norm_forward, rope,
    rope_tables, swiglu_backward, swiglu_forward, AttentionShape,
};
use crate::{check_len, Result};

/// Sizes of a block (a Llama `config.json`'s).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockConfig {
    pub hidden: usize,
    pub ffn: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f32,
    pub eps: f32,
}

/// A block's parameters: the two norm gains and the seven linear weights (`[out, in]`).
#[derive(Clone, Debug, PartialEq)]
pub struct BlockWeights {
    pub attn_norm: Vec<f32>,
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
    pub o: Vec<f32>,
    pub mlp_norm: Vec<f32>,
    pub gate: Vec<f32>,
    pub up: Vec<f32>,
    pub down: Vec<f32>,
}

/// Gradients with the layout of [`BlockWeights`].
pub type BlockGrads = BlockWeights;

/// The linear weights' names, `[out, in]` shapes and fields, in the block's order.
pub(crate) fn linears(c: &BlockConfig) -> [(&'static str, usize, usize); 7] {
    let (h, f, qd, kvd) = (c.hidden, c.ffn, c.heads * c.head_dim, c.kv_heads * c.head_dim);
    [("q", qd, h), ("k", kvd, h), ("v", kvd, h), ("o", h, qd), ("gate", f, h), ("up", f, h), ("down", h, f)]
}

impl BlockWeights {
    pub(crate) fn linears_mut(&mut self) -> [&mut Vec<f32>; 7] {
        [&mut self.q, &mut self.k, &mut self.v, &mut self.o, &mut self.gate, &mut self.up, &mut self.down]
    }

    pub(crate) fn linears(&self) -> [&Vec<f32>; 7] {
        [&self.q, &self.k, &self.v, &self.o, &self.gate, &self.up, &self.down]
    }

    /// Every buffer, norms first (the order of [`BlockWeights::params`]).
    pub fn params_mut(&mut self) -> [&mut Vec<f32>; 9] {
        let BlockWeights { attn_norm, q, k, v, o, mlp_norm, gate, up, down } = self;
        [attn_norm, mlp_norm, q, k, v, o, gate, up, down]
    }

    /// Every buffer, norms first.
    pub fn params(&self) -> [&Vec<f32>; 9] {
        [&self.attn_norm, &self.mlp_norm, &self.q, &self.k, &self.v, &self.o, &self.gate, &self.up, &self.down]
    }

    /// Zeros with `c`'s shapes.
    pub fn zeros(c: &BlockConfig) -> Self {
        let l = linears(c);
        let z = |i: usize| vec![0.0f32; l[i].1 * l[i].2];
        BlockWeights {
            attn_norm: vec![0.0; c.hidden],
            q: z(0),
            k: z(1),
            v: z(2),
            o: z(3),
            mlp_norm: vec![0.0; c.hidden],
            gate: z(4),
            up: z(5),
            down: z(6),
        }
    }

    /// Checks every buffer against `c`'s shapes.
    pub fn check(&self, c: &BlockConfig) -> Result<()> {
        check_len("attn_norm", &self.attn_norm, c.hidden)?;
        check_len("mlp_norm", &self.mlp_norm, c.hidden)?;
        for ((name, rows, cols), w) in linears(c).into_iter().zip(self.linears()) {
            check_len(name, w, rows * cols)?;
        }
        Ok(())
    }

    /// The weights the deployed model computes with on `grids`: each linear weight rounded on
    /// its fixed grid and dequantized (bit for bit what the kernels see), the norm gains
    /// unchanged. Gradients taken with these weights are the straight-through estimator's
    /// gradients of the f32 weights.
    pub fn on_grids(&self, c: &BlockConfig, grids: &BlockGrids) -> Result<Self> {
        self.check(c)?;
        let mut out = self.clone();
        for (grid, w) in grids.0.iter().zip(out.linears_mut()) {
            *w = grid.fake(w);
        }
        Ok(out)
    }
}

/// What [`forward`] keeps for [`backward`].
#[derive(Clone, Debug)]
pub struct Tape {
    tokens: usize,
    x: Vec<f32>,
    h1: Vec<f32>,
    inv1: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    probs: Vec<f32>,
    attn: Vec<f32>,
    x2: Vec<f32>,
    h2: Vec<f32>,
    inv2: Vec<f32>,
    gate: Vec<f32>,
    up: Vec<f32>,
    act: Vec<f32>,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

fn shape(c: &BlockConfig, tokens: usize) -> AttentionShape {
    AttentionShape { tokens, heads: c.heads, kv_heads: c.kv_heads, head_dim: c.head_dim }
}

/// The block's output for `x[tokens, hidden]` (positions `0..tokens`, one sequence).
pub fn forward(c: &BlockConfig, w: &BlockWeights, x: &[f32]) -> Result<(Vec<f32>, Tape)> {
    w.check(c)?;
    let t = x.len() / c.hidden;
    check_len("block input", x, t * c.hidden)?;
    let (h, f, qd, kvd) = (c.hidden, c.ffn, c.heads * c.head_dim, c.kv_heads * c.head_dim);
    let (h1, inv1) = rms_norm_forward(x, &w.attn_norm, c.eps);
    let (cos, sin) = rope_tables(t, c.head_dim, c.rope_theta);
    let mut q = matmul_nt(&h1, &w.q, t, h, qd);
    let mut k = matmul_nt(&h1, &w.k, t, h, kvd);
    let v = matmul_nt(&h1, &w.v, t, h, kvd);
    rope(&mut q, c.head_dim, &cos, &sin, false);
    rope(&mut k, c.head_dim, &cos, &sin, false);
    let (attn, probs) = attention_forward(&q, &k, &v, shape(c, t));
    let o = matmul_nt(&attn, &w.o, t, qd, h);
    let x2: Vec<f32> = x.iter().zip(&o).map(|(a, b)| a + b).collect();
    let (h2, inv2) = rms_norm_forward(&x2, &w.mlp_norm, c.eps);
    let gate = matmul_nt(&h2, &w.gate, t, h, f);
    let up = matmul_nt(&h2, &w.up, t, h, f);
    let act = swiglu_forward(&gate, &up);
    let down = matmul_nt(&act, &w.down, t, f, h);
    let y = x2.iter().zip(&down).map(|(a, b)| a + b).collect();
    let tape = Tape { tokens: t, x: x.to_vec(), h1, inv1, q, k, v, probs, attn, x2, h2, inv2, gate, up, act, cos, sin };
    Ok((y, tape))
}

/// Gradients of a loss with respect to the block's input and parameters, given `dy` (its
/// gradient with respect to the block's output) and the tape of the forward pass that used `w`.
pub fn backward(c: &BlockConfig, w: &BlockWeights, tape: &Tape, dy: &[f32]) -> Result<(Vec<f32>, BlockGrads)> {
    let t = tape.tokens;
    check_len("output gradient", dy, t * c.hidden)?;
    let (h, f, qd, kvd) = (c.hidden, c.ffn, c.heads * c.head_dim, c.kv_heads * c.head_dim);
    let mut g = BlockWeights::zeros(c);
    // MLP: y = x2 + swiglu(h2 Wg^T, h2 Wu^T) Wd^T.
    g.down = matmul_tn(dy, &tape.act, t, h, f);
    let dact = matmul_nn(dy, &w.down, t, h, f);
    let (dgate, dup) = swiglu_backward(&tape.gate, &tape.up, &dact);
    g.gate = matmul_tn(&dgate, &tape.h2, t, f, h);
    g.up = matmul_tn(&dup, &tape.h2, t, f, h);
    let mut dh2 = matmul_nn(&dgate, &w.gate, t, f, h);
    for (a, b) in dh2.iter_mut().zip(matmul_nn(&dup, &w.up, t, f, h)) {
        *a += b;
    }
    let (dx2_norm, dmlp_norm) = rms_norm_backward(&tape.x2, &w.mlp_norm, &tape.inv2, &dh2);
    g.mlp_norm = dmlp_norm;
    let dx2: Vec<f32> = dy.iter().zip(&dx2_norm).map(|(a, b)| a + b).collect();
    // Attention: x2 = x + attn(rope(h1 Wq^T), rope(h1 Wk^T), h1 Wv^T) Wo^T.
    g.o = matmul_tn(&dx2, &tape.attn, t, h, qd);
    let dattn = matmul_nn(&dx2, &w.o, t, h, qd);
    let (mut dq, mut dk, dv) = attention_backward(&tape.q, &tape.k, &tape.v, &tape.probs, &dattn, shape(c, t));
    rope(&mut dq, c.head_dim, &tape.cos, &tape.sin, true);
    rope(&mut dk, c.head_dim, &tape.cos, &tape.sin, true);
    g.q = matmul_tn(&dq, &tape.h1, t, qd, h);
    g.k = matmul_tn(&dk, &tape.h1, t, kvd, h);
    g.v = matmul_tn(&dv, &tape.h1, t, kvd, h);
    let mut dh1 = matmul_nn(&dq, &w.q, t, qd, h);
    for part in [matmul_nn(&dk, &w.k, t, kvd, h), matmul_nn(&dv, &w.v, t, kvd, h)] {
        for (a, b) in dh1.iter_mut().zip(part) {
            *a += b;
        }
    }
    let (dx_norm, dattn_norm) = rms_norm_backward(&tape.x, &w.attn_norm, &tape.inv1, &dh1);
    g.attn_norm = dattn_norm;
    let dx = dx2.iter().zip(&dx_norm).map(|(a, b)| a + b).collect();
    Ok((dx, g))
}
