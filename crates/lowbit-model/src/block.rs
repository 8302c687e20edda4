//! One decoder block in stages, so the quantization pipeline can stop between the linear layers
//! (true-sequential order): attention input → q/k/v → attention → o's input → residual →
//! MLP input → gate/up → down's input → residual. The arithmetic is the model's own
//! (`Model::forward_batch`): the same `ops`, the same RoPE angles, the same attention loop, so with
//! unquantized weights the stages reproduce the model's hidden states (tested).
//!
//! Activations are row-major `[tokens, width]` over `nseq` independent sequences of `seqlen`
//! tokens each, every sequence starting at position 0 with an empty context.

use crate::attention::{self, AttnShape};
use crate::config::ModelConfig;
use crate::model::{Layer, Model};
use crate::{ops, Result};
use lowbit_cpu::{Linear, WeightKind};

/// RoPE angles for positions `0..seqlen` (the model's formula, `(p as f32 * f) as f64`).
#[derive(Clone, Debug)]
pub struct Rope {
    cos: Vec<f32>,
    sin: Vec<f32>,
    half: usize,
}

impl Rope {
    /// The angles of positions `0..seqlen` for `cfg`'s head dimension and RoPE scaling.
    pub fn new(cfg: &ModelConfig, seqlen: usize) -> Self {
        let inv = cfg.rope_inv_freq();
        let half = cfg.head_dim / 2;
        let (mut cos, mut sin) = (vec![0f32; seqlen * half], vec![0f32; seqlen * half]);
        for p in 0..seqlen {
            for (i, &f) in inv.iter().enumerate() {
                let angle = (p as f32 * f) as f64;
                cos[p * half + i] = angle.cos() as f32;
                sin[p * half + i] = angle.sin() as f32;
            }
        }
        Rope { cos, sin, half }
    }
}

/// `x` rows of the token embedding.
pub fn embed(model: &Model, tokens: &[u32], out: &mut [f32]) {
    let h = model.config().hidden_size;
    let w = model.embedding().weight();
    for (t, o) in tokens.iter().zip(out.chunks_exact_mut(h)) {
        let span = *t as usize * h..(*t as usize + 1) * h;
        match w {
            WeightKind::F32(v) => o.copy_from_slice(&v[span]),
            WeightKind::F16(v) => o.iter_mut().zip(&v[span]).for_each(|(o, x)| *o = x.to_f32()),
            WeightKind::Bf16(v) => o.iter_mut().zip(&v[span]).for_each(|(o, x)| *o = x.to_f32()),
            WeightKind::Quant(q) => {
                let (_, cols) = q.matrix_dims();
                let all = q.dequantize();
                o.copy_from_slice(&all[*t as usize * cols..(*t as usize + 1) * cols]);
            }
        }
    }
}

/// `out = x Wᵀ`.
pub fn linear(lin: &Linear, x: &[f32], out: &mut [f32]) -> Result<()> {
    let m = x.len() / lin.cols();
    lin.forward(x, m, out)?;
    Ok(())
}

/// `x += lin(inp)`.
pub fn add_linear(lin: &Linear, inp: &[f32], x: &mut [f32]) -> Result<()> {
    let mut o = vec![0f32; x.len()];
    linear(lin, inp, &mut o)?;
    x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
    Ok(())
}

/// The attention sublayer's input: `rms_norm(x) * input_norm`.
pub fn attn_input(cfg: &ModelConfig, layer: &Layer, x: &[f32], xn: &mut [f32]) {
    ops::rms_norm(x, &layer.input_norm, cfg.rms_norm_eps, xn);
}

/// The MLP sublayer's input: `rms_norm(x) * post_attention_norm`.
pub fn mlp_input(cfg: &ModelConfig, layer: &Layer, x: &[f32], xn: &mut [f32]) {
    ops::rms_norm(x, &layer.post_attention_norm, cfg.rms_norm_eps, xn);
}

/// From the attention input `xn` to o_proj's input (the heads' outputs), with the layer's current
/// q/k/v weights.
pub fn attention(
    cfg: &ModelConfig,
    layer: &Layer,
    rope: &Rope,
    xn: &[f32],
    seqlen: usize,
    out: &mut [f32],
) -> Result<()> {
    let (h, qd, kvd, hd) = (cfg.hidden_size, cfg.q_dim(), cfg.kv_dim(), cfg.head_dim);
    let m = xn.len() / h;
    let (mut q, mut k, mut v) = (vec![0f32; m * qd], vec![0f32; m * kvd], vec![0f32; m * kvd]);
    linear(&layer.q_proj, xn, &mut q)?;
    linear(&layer.k_proj, xn, &mut k)?;
    linear(&layer.v_proj, xn, &mut v)?;
    if let (Some(qb), Some(kb), Some(vb)) = (&layer.q_bias, &layer.k_bias, &layer.v_bias) {
        ops::add_bias(&mut q, qb);
        ops::add_bias(&mut k, kb);
        ops::add_bias(&mut v, vb);
    }
    if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
        ops::rms_norm_inplace(&mut q, qn, cfg.rms_norm_eps);
        ops::rms_norm_inplace(&mut k, kn, cfg.rms_norm_eps);
    }
    let half = rope.half;
    for t in 0..m {
        let p = t % seqlen;
        let (cs, sn) = (&rope.cos[p * half..(p + 1) * half], &rope.sin[p * half..(p + 1) * half]);
        q[t * qd..(t + 1) * qd].chunks_exact_mut(hd).for_each(|x| ops::rope_head(x, cs, sn));
        k[t * kvd..(t + 1) * kvd].chunks_exact_mut(hd).for_each(|x| ops::rope_head(x, cs, sn));
    }
    // Each sequence attends over itself from an empty context: the runtime's tiled kernel.
    let shape = AttnShape {
        heads: cfg.num_attention_heads,
        kv_heads: cfg.num_key_value_heads,
        head_dim: hd,
        window: cfg.sliding_window,
    };
    for (i, o) in out.chunks_exact_mut(seqlen * qd).enumerate() {
        let (qs, kvs) = (i * seqlen * qd..(i + 1) * seqlen * qd, i * seqlen * kvd..(i + 1) * seqlen * kvd);
        attention::attention(&shape, &q[qs], &k[kvs.clone()], &v[kvs], 0, o);
    }
    Ok(())
}

/// From the MLP input `xn` to down_proj's input `silu(gate) * up`.
pub fn mlp_act(layer: &Layer, xn: &[f32], act: &mut [f32]) -> Result<()> {
    let mut u = vec![0f32; act.len()];
    linear(&layer.gate_proj, xn, act)?;
    linear(&layer.up_proj, xn, &mut u)?;
    ops::swiglu(act, &u);
    Ok(())
}

/// A whole block, stage by stage, in place on `x` (`nseq * seqlen` rows).
pub fn block_forward(cfg: &ModelConfig, layer: &Layer, rope: &Rope, x: &mut [f32], seqlen: usize) -> Result<()> {
    let h = cfg.hidden_size;
    let m = x.len() / h;
    let mut xn = vec![0f32; m * h];
    let mut attn = vec![0f32; m * cfg.q_dim()];
    attn_input(cfg, layer, x, &mut xn);
    attention(cfg, layer, rope, &xn, seqlen, &mut attn)?;
    add_linear(&layer.o_proj, &attn, x)?;
    mlp_input(cfg, layer, x, &mut xn);
    let mut act = vec![0f32; m * cfg.intermediate_size];
    mlp_act(layer, &xn, &mut act)?;
    add_linear(&layer.down_proj, &act, x)
}

/// Logits of `nseq` sequences of `seqlen` tokens (row-major `[nseq * seqlen, vocab]`) computed
/// through the staged block forward the quantization pipeline uses. It equals
/// [`Model::forward`] on each sequence from an empty cache up to float rounding; it exists so
/// that equality can be tested.
pub fn staged_logits(model: &Model, tokens: &[u32], seqlen: usize) -> Result<Vec<f32>> {
    let cfg = model.config();
    if seqlen == 0 || tokens.is_empty() || tokens.len() % seqlen != 0 {
        return Err(crate::ModelError::input("staged_logits", "tokens must be whole sequences of seqlen"));
    }
    if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= cfg.vocab_size) {
        return Err(crate::ModelError::input("staged_logits", format!("token id {bad} is outside the vocabulary")));
    }
    let h = cfg.hidden_size;
    let mut x = vec![0f32; tokens.len() * h];
    embed(model, tokens, &mut x);
    let rope = Rope::new(cfg, seqlen);
    for layer in model.layers() {
        block_forward(cfg, layer, &rope, &mut x, seqlen)?;
    }
    let mut hidden = vec![0f32; x.len()];
    ops::rms_norm(&x, model.final_norm(), cfg.rms_norm_eps, &mut hidden);
    let mut logits = vec![0f32; tokens.len() * cfg.vocab_size];
    linear(model.lm_head(), &hidden, &mut logits)?;
    Ok(logits)
}
