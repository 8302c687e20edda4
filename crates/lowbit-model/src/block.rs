//! The decoder block, once, in stages: attention input → q/k/v → attention → o's input →
//! residual → MLP input → gate/up → down's input → residual.
//!
//! [`Model::forward_batch`](crate::Model::forward_batch) runs the stages back to back over a
//! batch of sequences with their KV caches ([`Block::attend_cached`]); the quantization pipeline
//! (crate `lowbit-quantize`) stops between them to collect each linear layer's input and to
//! swap in its quantized weights, over `nseq` sequences of `seqlen` tokens that each start from
//! an empty context ([`Block::attend_fresh`]). Both run the same arithmetic, so with unquantized
//! weights the pipeline's activations are the model's (tested against `Model::forward`).
//!
//! Activations are row-major `[rows, width]`; a [`Span`] says which rows belong to which
//! sequence and at which position they start.

use crate::config::ModelConfig;
use crate::model::{KvCache, Layer, Model};
use crate::{ModelError, Result};
use lowbit_core::backend::{AttnSeq, AttnShape, Backend};
use lowbit_cpu::Cpu;

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
    pub(crate) inv_freq: Vec<f32>,
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
/// per forward call, not per block), with the RoPE angles of the rows' positions.
#[derive(Clone, Debug)]
pub struct Scratch<B: Backend = Cpu> {
    rows: usize,
    xn: B::Buffer,
    q: B::Buffer,
    k: B::Buffer,
    v: B::Buffer,
    attn: B::Buffer,
    o: B::Buffer,
    g: B::Buffer,
    u: B::Buffer,
    cos: B::Buffer,
    sin: B::Buffer,
}

impl<B: Backend> Scratch<B> {
    /// Buffers for `rows` rows of `cfg`'s model.
    pub fn new(backend: &B, cfg: &ModelConfig, rows: usize) -> Result<Self> {
        let z = || backend.zeros(0).map_err(err);
        let mut s = Scratch {
            rows: 0,
            xn: z()?,
            q: z()?,
            k: z()?,
            v: z()?,
            attn: z()?,
            o: z()?,
            g: z()?,
            u: z()?,
            cos: z()?,
            sin: z()?,
        };
        s.resize(backend, cfg, rows)?;
        Ok(s)
    }

    /// Resizes for `rows` rows (allocates only when growing).
    pub fn resize(&mut self, backend: &B, cfg: &ModelConfig, rows: usize) -> Result<()> {
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
            backend.resize(buf, rows * width).map_err(err)?;
        }
        Ok(())
    }

    /// Sets the RoPE angles of the rows from their positions (`spans`), once per pass: every
    /// block's [`Block::qkv`] uses them.
    pub fn set_positions(&mut self, backend: &B, rope: &Rope, spans: &[Span]) -> Result<()> {
        let half = rope.inv_freq.len();
        let (mut cos, mut sin) = (vec![0f32; self.rows * half], vec![0f32; self.rows * half]);
        for sp in spans {
            for (i, t) in (sp.start..sp.start + sp.len).enumerate() {
                rope.fill(sp.past + i, &mut cos[t * half..(t + 1) * half], &mut sin[t * half..(t + 1) * half]);
            }
        }
        self.cos = backend.upload(&cos).map_err(err)?;
        self.sin = backend.upload(&sin).map_err(err)?;
        Ok(())
    }

    /// Rows the buffers hold.
    pub fn rows(&self) -> usize {
        self.rows
    }
    /// The normed input of the last [`Block::attn_input`] or [`Block::mlp_input`]: the input of
    /// q/k/v or of gate/up.
    pub fn normed<'s>(&'s self, backend: &B) -> B::View<'s> {
        full(backend, &self.xn)
    }
    /// The heads' output of the last attention stage: o_proj's input.
    pub fn attn_out<'s>(&'s self, backend: &B) -> B::View<'s> {
        full(backend, &self.attn)
    }
    /// `silu(gate) * up` of the last [`Block::gate_up`]: down_proj's input.
    pub fn mlp_act<'s>(&'s self, backend: &B) -> B::View<'s> {
        full(backend, &self.g)
    }
}

fn full<'a, B: Backend>(backend: &B, buf: &'a B::Buffer) -> B::View<'a> {
    backend.view(buf, 0..backend.buf_len(buf))
}

fn full_mut<'a, B: Backend>(backend: &B, buf: &'a mut B::Buffer) -> B::ViewMut<'a> {
    let n = backend.buf_len(buf);
    backend.view_mut(buf, 0..n)
}

/// A backend error as the model's.
pub(crate) fn err<E: std::error::Error + Send + Sync + 'static>(e: E) -> ModelError {
    ModelError::backend(e)
}

/// One decoder layer with what its stages need: the backend, the config and the RoPE table.
#[derive(Clone, Copy, Debug)]
pub struct Block<'a, B: Backend = Cpu> {
    backend: &'a B,
    cfg: &'a ModelConfig,
    layer: &'a Layer<B>,
}

impl<'a, B: Backend> Block<'a, B> {
    /// The stages of `layer` (one of `model`'s or a replacement being built for it) on the
    /// model's backend.
    pub fn new(model: &'a Model<B>, layer: &'a Layer<B>) -> Self {
        Block { backend: model.backend(), cfg: model.config(), layer }
    }

    /// The stages of `layer` on `backend` (e.g. `lowbit_cpu::Cpu::unsplit()`, whose results do
    /// not depend on the thread count).
    pub fn with_backend(backend: &'a B, cfg: &'a ModelConfig, layer: &'a Layer<B>) -> Self {
        Block { backend, cfg, layer }
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

    fn vec<'b>(&self, v: &'b B::Buffer) -> B::View<'b> {
        full(self.backend, v)
    }

    /// Stage 1: the attention input `rms_norm(x) * input_norm` into [`Scratch::normed`].
    pub fn attn_input(&self, x: B::View<'_>, s: &mut Scratch<B>) {
        let be = self.backend;
        be.rms_norm(x, self.vec(&self.layer.input_norm), self.cfg.rms_norm_eps, full_mut(be, &mut s.xn));
    }

    /// Stage 2: q, k, v from [`Scratch::normed`], with bias (Qwen2), per-head norm (Qwen3) and
    /// RoPE at the positions of [`Scratch::set_positions`].
    pub fn qkv(&self, s: &mut Scratch<B>) -> Result<()> {
        let (be, c, l, m) = (self.backend, self.cfg, self.layer, s.rows);
        let Scratch { xn, q, k, v, cos, sin, .. } = s;
        let xn = full(be, xn);
        // One call for the three products sharing xn: the CPU quantizes it once at decode.
        let outs = vec![full_mut(be, q), full_mut(be, k), full_mut(be, v)];
        be.linears(&[&l.q_proj, &l.k_proj, &l.v_proj], xn, m, outs).map_err(err)?;
        if let (Some(qb), Some(kb), Some(vb)) = (&l.q_bias, &l.k_bias, &l.v_bias) {
            be.add_bias(full_mut(be, q), self.vec(qb));
            be.add_bias(full_mut(be, k), self.vec(kb));
            be.add_bias(full_mut(be, v), self.vec(vb));
        }
        if let (Some(qn), Some(kn)) = (&l.q_norm, &l.k_norm) {
            be.rms_norm_inplace(full_mut(be, q), self.vec(qn), c.rms_norm_eps);
            be.rms_norm_inplace(full_mut(be, k), self.vec(kn), c.rms_norm_eps);
        }
        let (cos, sin) = (full(be, cos), full(be, sin));
        be.rope(full_mut(be, q), c.q_dim(), c.head_dim, cos, sin);
        be.rope(full_mut(be, k), c.kv_dim(), c.head_dim, cos, sin);
        Ok(())
    }

    /// Stage 3, runtime: appends each sequence's keys and values to its cache (layer `li`), then
    /// its queries attend over the whole cache, into [`Scratch::attn_out`]. `caches` go with
    /// `spans`, in order; their lengths are the spans' `past` (the caller advances them once
    /// all layers ran).
    pub fn attend_cached<'c>(
        &self,
        spans: &[Span],
        caches: impl Iterator<Item = &'c mut KvCache<B>>,
        li: usize,
        s: &mut Scratch<B>,
    ) -> Result<()>
    where
        B: 'c,
    {
        let (be, kvd) = (self.backend, self.cfg.kv_dim());
        let mut caches: Vec<&mut KvCache<B>> = caches.collect();
        for (sp, cache) in spans.iter().zip(caches.iter_mut()) {
            let (a, b) = (sp.start, sp.start + sp.len);
            let (kc, vc) = cache.layer_mut(li);
            be.append(kc, be.view(&s.k, a * kvd..b * kvd)).map_err(err)?;
            be.append(vc, be.view(&s.v, a * kvd..b * kvd)).map_err(err)?;
        }
        let seqs: Vec<AttnSeq<'_, B>> = spans
            .iter()
            .zip(&caches)
            .map(|(sp, cache)| {
                let (kc, vc) = cache.layer(li);
                AttnSeq { rows: sp.start..sp.start + sp.len, k: full(be, kc), v: full(be, vc), past: sp.past }
            })
            .collect();
        be.attention_batch(&self.attn_shape(), &s.q, &mut s.attn, &seqs);
        Ok(())
    }

    /// Stage 3, pipeline: each sequence (starting from an empty context, `past` 0) attends over
    /// its own rows, into [`Scratch::attn_out`].
    pub fn attend_fresh(&self, spans: &[Span], s: &mut Scratch<B>) -> Result<()> {
        let (be, qd, kvd) = (self.backend, self.cfg.q_dim(), self.cfg.kv_dim());
        let shape = self.attn_shape();
        for sp in spans {
            if sp.past != 0 {
                return Err(ModelError::input("attend_fresh", "a sequence with context needs its KV cache"));
            }
            let (a, b) = (sp.start, sp.start + sp.len);
            let (q, k, v) =
                (be.view(&s.q, a * qd..b * qd), be.view(&s.k, a * kvd..b * kvd), be.view(&s.v, a * kvd..b * kvd));
            be.attention(&shape, q, k, v, 0, be.view_mut(&mut s.attn, a * qd..b * qd));
        }
        Ok(())
    }

    /// Stage 4: `x += o_proj(attn)`, `attn` being [`Scratch::attn_out`] when `None`.
    pub fn o_residual(&self, x: B::ViewMut<'_>, attn: Option<B::View<'_>>, s: &mut Scratch<B>) -> Result<()> {
        let Scratch { attn: own, o, rows, .. } = s;
        self.residual(&self.layer.o_proj, x, attn, own, o, *rows)
    }

    /// Stage 5: the MLP input `rms_norm(x) * post_attention_norm` into [`Scratch::normed`].
    pub fn mlp_input(&self, x: B::View<'_>, s: &mut Scratch<B>) {
        let be = self.backend;
        be.rms_norm(x, self.vec(&self.layer.post_attention_norm), self.cfg.rms_norm_eps, full_mut(be, &mut s.xn));
    }

    /// Stage 6: `silu(gate(xn)) * up(xn)` from [`Scratch::normed`] into [`Scratch::mlp_act`].
    pub fn gate_up(&self, s: &mut Scratch<B>) -> Result<()> {
        let (be, l, m) = (self.backend, self.layer, s.rows);
        let Scratch { xn, g, u, .. } = s;
        let xn = full(be, xn);
        let outs = vec![full_mut(be, g), full_mut(be, u)];
        be.linears(&[&l.gate_proj, &l.up_proj], xn, m, outs).map_err(err)?;
        be.swiglu(full_mut(be, g), full(be, u));
        Ok(())
    }

    /// Stage 7: `x += down_proj(act)`, `act` being [`Scratch::mlp_act`] when `None`.
    pub fn down_residual(&self, x: B::ViewMut<'_>, act: Option<B::View<'_>>, s: &mut Scratch<B>) -> Result<()> {
        let Scratch { g, o, rows, .. } = s;
        self.residual(&self.layer.down_proj, x, act, g, o, *rows)
    }

    /// Stages 4 and 7: `x += w(input)` through `o`, `input` being `own` when `None`.
    fn residual(
        &self,
        w: &B::Linear,
        x: B::ViewMut<'_>,
        input: Option<B::View<'_>>,
        own: &B::Buffer,
        o: &mut B::Buffer,
        rows: usize,
    ) -> Result<()> {
        let be = self.backend;
        match input {
            Some(a) => be.linear(w, a, rows, full_mut(be, o)),
            None => be.linear(w, full(be, own), rows, full_mut(be, o)),
        }
        .map_err(err)?;
        be.add(x, full(be, o));
        Ok(())
    }

    /// The whole block in place on `x`, stage 3 being `attend`: [`Block::attend_cached`] at run
    /// time, [`Block::attend_fresh`] for sequences from an empty context.
    pub fn forward(
        &self,
        x: &mut B::Buffer,
        s: &mut Scratch<B>,
        attend: impl FnOnce(&mut Scratch<B>) -> Result<()>,
    ) -> Result<()> {
        self.attn_input(full(self.backend, x), s);
        self.qkv(s)?;
        attend(s)?;
        self.mlp_half(x, s)
    }

    fn mlp_half(&self, x: &mut B::Buffer, s: &mut Scratch<B>) -> Result<()> {
        let be = self.backend;
        self.o_residual(full_mut(be, x), None, s)?;
        self.mlp_input(full(be, x), s);
        self.gate_up(s)?;
        self.down_residual(full_mut(be, x), None, s)
    }
}

/// Logits of `nseq` sequences of `seqlen` tokens (row-major `[nseq * seqlen, vocab]`) computed
/// through the stages the quantization pipeline runs ([`Block::attend_fresh`] on
/// `Cpu::unsplit()`). It equals [`Model::forward`] on each sequence from an empty cache up to
/// float rounding; it exists so that equality can be tested.
pub fn staged_logits(model: &Model, tokens: &[u32], seqlen: usize) -> Result<Vec<f32>> {
    let cfg = model.config();
    if seqlen == 0 || tokens.is_empty() || tokens.len() % seqlen != 0 {
        return Err(ModelError::input("staged_logits", "tokens must be whole sequences of seqlen"));
    }
    let be = Cpu::unsplit();
    let h = cfg.hidden_size;
    let mut x = vec![0f32; tokens.len() * h];
    model.embed(tokens, &mut x)?;
    let spans: Vec<Span> = Span::fresh(tokens.len() / seqlen, seqlen).collect();
    let mut s = Scratch::new(&be, cfg, tokens.len())?;
    s.set_positions(&be, model.rope(), &spans)?;
    for layer in model.layers() {
        let blk = Block::with_backend(&be, cfg, layer);
        blk.forward(&mut x, &mut s, |s| blk.attend_fresh(&spans, s))?;
    }
    let mut hidden = vec![0f32; x.len()];
    be.rms_norm(&x, model.final_norm(), cfg.rms_norm_eps, &mut hidden);
    let mut logits = vec![0f32; tokens.len() * cfg.vocab_size];
    be.linear(model.lm_head(), &hidden, tokens.len(), &mut logits)?;
    Ok(logits)
}
