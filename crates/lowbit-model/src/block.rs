//! The decoder block, once, in stages: attention input → q/k/v → attention → o's input →
//! residual → MLP input → gate/up → down's input → residual.
//!
//! [`Model::forward_batch`](crate::Model::forward_batch) runs the stages back to back over a
//! batch of sequences with their KV caches ([`Block::forward_cached`]); the quantization pipeline
//! (crate `lowbit-quantize`) stops between them to collect each linear layer's input and to
//! swap in its quantized weights, over `nseq` sequences of `seqlen` tokens that each start from
//! an empty context ([`Block::attend_fresh`]). Both run the same arithmetic, so with unquantized
//! weights the pipeline's activations are the model's (tested against `Model::forward`).
//!
//! Activations are row-major `[rows, width]`; a [`Span`] says which rows belong to which
//! sequence and at which position they start.

use crate::attention::{self, AttnShape};
use crate::config::ModelConfig;
use crate::model::{KvCache, Layer, Model};
use crate::{ops, par, ModelError, Result};
use lowbit_cpu::Linear;

/// One sequence's rows in a batch: rows `start..start + len`, at positions `past..past + len`
/// (`past` tokens of context before them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// First row.
    pub start: usize,
    /// Rows (tokens).
    pub len: usize,
    /// Position of the first row.
    pub past: usize,
}

impl Span {
    /// `nseq` sequences of `seqlen` rows each, every one from an empty context.
    pub fn fresh(nseq: usize, seqlen: usize) -> impl Iterator<Item = Span> {
        (0..nseq).map(move |i| Span { start: i * seqlen, len: seqlen, past: 0 })
    }
}

/// RoPE `cos`/`sin` per position, `[position][head_dim / 2]`, for the first [`Rope::CACHED`]
/// positions; later positions are computed when needed. Same values as computing them per call
/// (the angle rounded to f32, then cos/sin in f64).
#[derive(Clone, Debug)]
pub struct Rope {
    inv_freq: Vec<f32>,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl Rope {
    /// Positions tabulated at load (256 KiB per table for head_dim 64).
    pub const CACHED: usize = 4096;

    pub(crate) fn new(inv_freq: Vec<f32>) -> Self {
        let half = inv_freq.len();
        let mut t = Rope { inv_freq, cos: vec![0.0; Self::CACHED * half], sin: vec![0.0; Self::CACHED * half] };
        let (mut cos, mut sin) = (std::mem::take(&mut t.cos), std::mem::take(&mut t.sin));
        for p in 0..Self::CACHED {
            t.compute(p, &mut cos[p * half..(p + 1) * half], &mut sin[p * half..(p + 1) * half]);
        }
        (t.cos, t.sin) = (cos, sin);
        t
    }

    fn compute(&self, pos: usize, cos: &mut [f32], sin: &mut [f32]) {
        for ((c, s), &f) in cos.iter_mut().zip(sin.iter_mut()).zip(&self.inv_freq) {
            let angle = (pos as f32 * f) as f64;
            *c = angle.cos() as f32;
            *s = angle.sin() as f32;
        }
    }

    /// Fills `cos`/`sin` (`head_dim / 2` each) for `pos`.
    pub fn fill(&self, pos: usize, cos: &mut [f32], sin: &mut [f32]) {
        let half = self.inv_freq.len();
        if pos < Self::CACHED {
            cos.copy_from_slice(&self.cos[pos * half..(pos + 1) * half]);
            sin.copy_from_slice(&self.sin[pos * half..(pos + 1) * half]);
        } else {
            self.compute(pos, cos, sin);
        }
    }
}

/// The buffers of one pass of the stages over `rows` rows, reused across blocks (allocated once
/// per forward call, not per block).
#[derive(Clone, Debug, Default)]
pub struct Scratch {
    rows: usize,
    xn: Vec<f32>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    o: Vec<f32>,
    g: Vec<f32>,
    u: Vec<f32>,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl Scratch {
    /// Buffers for `rows` rows of `cfg`'s model.
    pub fn new(cfg: &ModelConfig, rows: usize) -> Self {
        let mut s = Scratch::default();
        s.resize(cfg, rows);
        s
    }

    /// Resizes for `rows` rows (allocates only when growing).
    pub fn resize(&mut self, cfg: &ModelConfig, rows: usize) {
        let (h, qd, kvd, ff, half) =
            (cfg.hidden_size, cfg.q_dim(), cfg.kv_dim(), cfg.intermediate_size, cfg.head_dim / 2);
        self.rows = rows;
        for (buf, width) in [
            (&mut self.xn, h),
            (&mut self.q, qd),
            (&mut self.k, kvd),
            (&mut self.v, kvd),
            (&mut self.attn, qd),
            (&mut self.o, h),
            (&mut self.g, ff),
            (&mut self.u, ff),
            (&mut self.cos, half),
            (&mut self.sin, half),
        ] {
            buf.resize(rows * width, 0.0);
        }
    }

    /// Rows the buffers hold.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// The normed input of the last [`Block::attn_input`] or [`Block::mlp_input`]: the input of
    /// q/k/v or of gate/up.
    pub fn normed(&self) -> &[f32] {
        &self.xn
    }
    /// The heads' output of the last attention stage: o_proj's input.
    pub fn attn_out(&self) -> &[f32] {
        &self.attn
    }
    /// `silu(gate) * up` of the last [`Block::gate_up`]: down_proj's input.
    pub fn mlp_act(&self) -> &[f32] {
        &self.g
    }
}

/// One decoder layer with what its stages need: the config and the RoPE table.
#[derive(Clone, Copy, Debug)]
pub struct Block<'a> {
    cfg: &'a ModelConfig,
    layer: &'a Layer,
    rope: &'a Rope,
    split_rows: bool,
}

impl<'a> Block<'a> {
    /// The stages of `layer` (one of `model`'s or a replacement being built for it).
    pub fn new(model: &'a Model, layer: &'a Layer) -> Self {
        Block { cfg: model.config(), layer, rope: model.rope(), split_rows: true }
    }

    /// Keeps every weight product whole instead of splitting large batches' rows over threads,
    /// so results do not depend on the thread count (the quantization pipeline's output must
    /// not).
    pub fn unsplit(mut self) -> Self {
        self.split_rows = false;
        self
    }

    fn attn_shape(&self) -> AttnShape {
        let c = self.cfg;
        AttnShape {
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
            window: c.sliding_window,
        }
    }

    fn linear(&self, lin: &Linear, x: &[f32], m: usize, out: &mut [f32]) -> Result<()> {
        if self.split_rows {
            linear(lin, x, m, out)
        } else {
            Ok(lin.forward(x, m, out)?)
        }
    }

    /// Stage 1: the attention input `rms_norm(x) * input_norm` into [`Scratch::normed`].
    pub fn attn_input(&self, x: &[f32], s: &mut Scratch) {
        ops::rms_norm(x, &self.layer.input_norm, self.cfg.rms_norm_eps, &mut s.xn);
    }

    /// Stage 2: q, k, v from [`Scratch::normed`], with bias (Qwen2), per-head norm (Qwen3) and
    /// RoPE at the positions `spans` give.
    pub fn qkv(&self, spans: &[Span], s: &mut Scratch) -> Result<()> {
        let (c, l, m) = (self.cfg, self.layer, s.rows);
        let (qd, kvd, hd) = (c.q_dim(), c.kv_dim(), c.head_dim);
        let Scratch { xn, q, k, v, cos, sin, .. } = s;
        // Independent products run side by side: at decode most of these matrices are under
        // lowbit-cpu's threshold for splitting one product over threads.
        let (rq, (rk, rv)) = join(
            || self.linear(&l.q_proj, xn, m, q),
            || join(|| self.linear(&l.k_proj, xn, m, k), || self.linear(&l.v_proj, xn, m, v)),
        );
        rq.and(rk).and(rv)?;
        if let (Some(qb), Some(kb), Some(vb)) = (&l.q_bias, &l.k_bias, &l.v_bias) {
            ops::add_bias(q, qb);
            ops::add_bias(k, kb);
            ops::add_bias(v, vb);
        }
        if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
            ops::rms_norm_inplace(q, qn, c.rms_norm_eps);
            ops::rms_norm_inplace(k, kn, c.rms_norm_eps);
        }
        let half = hd / 2;
        for sp in spans {
            for (i, t) in (sp.start..sp.start + sp.len).enumerate() {
                self.rope.fill(sp.past + i, &mut cos[t * half..(t + 1) * half], &mut sin[t * half..(t + 1) * half]);
            }
        }
        for t in 0..m {
            let (cs, sn) = (&cos[t * half..(t + 1) * half], &sin[t * half..(t + 1) * half]);
            q[t * qd..(t + 1) * qd].chunks_exact_mut(hd).for_each(|hq| ops::rope_head(hq, cs, sn));
            k[t * kvd..(t + 1) * kvd].chunks_exact_mut(hd).for_each(|hk| ops::rope_head(hk, cs, sn));
        }
        Ok(())
    }

    /// Stage 3, runtime: appends each sequence's keys and values to its cache (layer `li`), then
    /// its queries attend over the whole cache, into [`Scratch::attn_out`]. `caches` go with
    /// `spans`, in order; their lengths are the spans' `past` (the caller advances them once
    /// all layers ran).
    pub fn attend_cached<'c>(
        &self,
        spans: &[Span],
        caches: impl Iterator<Item = &'c mut KvCache>,
        li: usize,
        s: &mut Scratch,
    ) {
        let (qd, kvd) = (self.cfg.q_dim(), self.cfg.kv_dim());
        let shape = self.attn_shape();
        for (sp, cache) in spans.iter().zip(caches) {
            let rows = sp.start..sp.start + sp.len;
            let (kc, vc) = cache.layer_mut(li);
            kc.extend_from_slice(&s.k[rows.start * kvd..rows.end * kvd]);
            vc.extend_from_slice(&s.v[rows.start * kvd..rows.end * kvd]);
            let out = &mut s.attn[rows.start * qd..rows.end * qd];
            attention::attention(&shape, &s.q[rows.start * qd..rows.end * qd], kc, vc, sp.past, out);
        }
    }

    /// Stage 3, pipeline: each sequence (starting from an empty context, `past` 0) attends over
    /// its own rows, into [`Scratch::attn_out`].
    pub fn attend_fresh(&self, spans: &[Span], s: &mut Scratch) -> Result<()> {
        let (qd, kvd) = (self.cfg.q_dim(), self.cfg.kv_dim());
        let shape = self.attn_shape();
        for sp in spans {
            if sp.past != 0 {
                return Err(ModelError::input("attend_fresh", "a sequence with context needs its KV cache"));
            }
            let (a, b) = (sp.start, sp.start + sp.len);
            let out = &mut s.attn[a * qd..b * qd];
            attention::attention(&shape, &s.q[a * qd..b * qd], &s.k[a * kvd..b * kvd], &s.v[a * kvd..b * kvd], 0, out);
        }
        Ok(())
    }

    /// Stage 4: `x += o_proj(attn)`, `attn` being [`Scratch::attn_out`] when `None`.
    pub fn o_residual(&self, x: &mut [f32], attn: Option<&[f32]>, s: &mut Scratch) -> Result<()> {
        let Scratch { attn: own, o, rows, .. } = s;
        self.linear(&self.layer.o_proj, attn.unwrap_or(own), *rows, o)?;
        x.iter_mut().zip(o.iter()).for_each(|(a, b)| *a += b);
        Ok(())
    }

    /// Stage 5: the MLP input `rms_norm(x) * post_attention_norm` into [`Scratch::normed`].
    pub fn mlp_input(&self, x: &[f32], s: &mut Scratch) {
        ops::rms_norm(x, &self.layer.post_attention_norm, self.cfg.rms_norm_eps, &mut s.xn);
    }

    /// Stage 6: `silu(gate(xn)) * up(xn)` from [`Scratch::normed`] into [`Scratch::mlp_act`].
    pub fn gate_up(&self, s: &mut Scratch) -> Result<()> {
        let (l, m) = (self.layer, s.rows);
        let Scratch { xn, g, u, .. } = s;
        let (rg, ru) = join(|| self.linear(&l.gate_proj, xn, m, g), || self.linear(&l.up_proj, xn, m, u));
        rg.and(ru)?;
        ops::swiglu(g, u);
        Ok(())
    }

    /// Stage 7: `x += down_proj(act)`, `act` being [`Scratch::mlp_act`] when `None`.
    pub fn down_residual(&self, x: &mut [f32], act: Option<&[f32]>, s: &mut Scratch) -> Result<()> {
        let Scratch { g, o, rows, .. } = s;
        self.linear(&self.layer.down_proj, act.unwrap_or(g), *rows, o)?;
        x.iter_mut().zip(o.iter()).for_each(|(a, b)| *a += b);
        Ok(())
    }

    /// The whole block in place on `x`, runtime flavour (see [`Block::attend_cached`]).
    pub fn forward_cached<'c>(
        &self,
        x: &mut [f32],
        spans: &[Span],
        caches: impl Iterator<Item = &'c mut KvCache>,
        li: usize,
        s: &mut Scratch,
    ) -> Result<()> {
        self.attn_input(x, s);
        self.qkv(spans, s)?;
        self.attend_cached(spans, caches, li, s);
        self.mlp_half(x, s)
    }

    /// The whole block in place on `x`, every sequence from an empty context.
    pub fn forward_fresh(&self, x: &mut [f32], spans: &[Span], s: &mut Scratch) -> Result<()> {
        self.attn_input(x, s);
        self.qkv(spans, s)?;
        self.attend_fresh(spans, s)?;
        self.mlp_half(x, s)
    }

    fn mlp_half(&self, x: &mut [f32], s: &mut Scratch) -> Result<()> {
        self.o_residual(x, None, s)?;
        self.mlp_input(x, s);
        self.gate_up(s)?;
        self.down_residual(x, None, s)
    }
}

/// Logits of `nseq` sequences of `seqlen` tokens (row-major `[nseq * seqlen, vocab]`) computed
/// through the stages the quantization pipeline runs ([`Block::forward_fresh`], unsplit). It
/// equals [`Model::forward`] on each sequence from an empty cache up to float rounding; it
/// exists so that equality can be tested.
pub fn staged_logits(model: &Model, tokens: &[u32], seqlen: usize) -> Result<Vec<f32>> {
    let cfg = model.config();
    if seqlen == 0 || tokens.is_empty() || tokens.len() % seqlen != 0 {
        return Err(ModelError::input("staged_logits", "tokens must be whole sequences of seqlen"));
    }
    let h = cfg.hidden_size;
    let mut x = vec![0f32; tokens.len() * h];
    model.embed(tokens, &mut x)?;
    let spans: Vec<Span> = Span::fresh(tokens.len() / seqlen, seqlen).collect();
    let mut s = Scratch::new(cfg, tokens.len());
    for layer in model.layers() {
        Block::new(model, layer).unsplit().forward_fresh(&mut x, &spans, &mut s)?;
    }
    let mut hidden = vec![0f32; x.len()];
    ops::rms_norm(&x, model.final_norm(), cfg.rms_norm_eps, &mut hidden);
    let mut logits = vec![0f32; tokens.len() * cfg.vocab_size];
    model.lm_head().forward(&hidden, tokens.len(), &mut logits)?;
    Ok(logits)
}

/// `(a(), b())`, side by side on the rayon pool when the `parallel` feature is on.
pub(crate) fn join<A, B, RA, RB>(a: A, b: B) -> (RA, RB)
where
    A: FnOnce() -> RA + Send,
    B: FnOnce() -> RB + Send,
    RA: Send,
    RB: Send,
{
    #[cfg(feature = "parallel")]
    {
        rayon::join(a, b)
    }
    #[cfg(not(feature = "parallel"))]
    {
        (a(), b())
    }
}

/// `out = x · Wᵀ` through `Linear`, splitting the rows of `x` over threads for large `m`.
pub(crate) fn linear(lin: &Linear, x: &[f32], m: usize, out: &mut [f32]) -> Result<()> {
    let threads = par::threads();
    if threads <= 1 || m < 4 * threads {
        lin.forward(x, m, out)?;
        return Ok(());
    }
    let per = m.div_ceil(threads);
    let (rows, cols) = (lin.rows(), lin.cols());
    let failed = std::sync::Mutex::new(None);
    par::for_each_chunk(out, per * rows, |i, oc| {
        let mi = oc.len() / rows;
        if let Err(e) = lin.forward(&x[i * per * cols..(i * per + mi) * cols], mi, oc) {
            *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
        }
    });
    match failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}
