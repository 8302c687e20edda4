//! The importance matrix `llama-imatrix` computes, from lowbit's own activations: for each
//! linear layer, the mean over calibration tokens of the square of each input column,
//! `imatrix[j] = sum_t x[t, j]^2 / T`. llama.cpp's weighted quantizers take it as
//! `quant_weights` (see `lowbit_gguf::quantize_weighted`), so the columns a layer's input
//! carries the most energy through are quantized most carefully.
//!
//! The model runs over the calibration windows through [`crate::block`]'s stages, each window
//! from an empty context, with f32 activations ([`Backend::for_evaluation`]); the inputs are
//! read between stages: q/k/v share the attention input, gate/up the MLP input, o_proj and
//! down_proj have their own.

use crate::block::{Block, Scratch, Span};
use crate::{Model, ModelError, Result};
use lowbit_core::backend::Backend;
use lowbit_core::progress::{phase, Progress};
use std::collections::BTreeMap;

/// Rows per forward pass: windows are batched up to this many tokens.
const ROWS_PER_PASS: usize = 2048;

/// Per linear layer (Hugging Face weight name, `model.layers.0.self_attn.q_proj.weight`), the
/// mean square of each input column over the calibration tokens.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Imatrix {
    entries: BTreeMap<String, Vec<f32>>,
    tokens: usize,
}

impl Imatrix {
    /// The importances of the layer whose weight is `name`, one per input column.
    pub fn get(&self, name: &str) -> Option<&[f32]> {
        self.entries.get(name).map(Vec::as_slice)
    }
    /// Every layer's importances, by weight name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[f32])> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }
    /// Calibration tokens the means are over.
    pub fn tokens(&self) -> usize {
        self.tokens
    }
}

/// Squares of `x`'s rows (`x.len() / sums.len()` rows) added to `sums`, column by column.
fn add_squares(sums: &mut [f64], x: &[f32]) {
    for row in x.chunks_exact(sums.len()) {
        for (s, &v) in sums.iter_mut().zip(row) {
            *s += f64::from(v) * f64::from(v);
        }
    }
}

/// The importance matrix of `model` over `windows` (row-major, whole windows of `seqlen`
/// tokens), as phase `imatrix` (one unit per window; cancellation checked once per layer).
pub fn collect_imatrix(model: &Model, windows: &[u32], seqlen: usize, progress: &mut dyn Progress) -> Result<Imatrix> {
    if seqlen == 0 || windows.is_empty() || windows.len() % seqlen != 0 {
        return Err(ModelError::input("imatrix", "calibration tokens must be whole windows of seqlen (at least one)"));
    }
    let (cfg, be) = (model.config(), model.backend().for_evaluation());
    let mut progress = phase(progress, "imatrix", (windows.len() / seqlen) as u64);
    // Per layer: the sums of squares of the attention input, o_proj's, the MLP input, down_proj's.
    let widths = [cfg.hidden_size, cfg.q_dim(), cfg.hidden_size, cfg.intermediate_size];
    let mut sums: Vec<[Vec<f64>; 4]> = model.layers().iter().map(|_| widths.map(|w| vec![0f64; w])).collect();
    let per_pass = (ROWS_PER_PASS / seqlen).max(1) * seqlen;
    let mut s = Scratch::new(&be, cfg, per_pass.min(windows.len()))?;
    for chunk in windows.chunks(per_pass) {
        let nseq = chunk.len() / seqlen;
        let spans: Vec<Span> = Span::fresh(nseq, seqlen).collect();
        s.resize(&be, cfg, chunk.len())?;
        s.set_positions(&be, model.rope(), &spans)?;
        let mut x = vec![0f32; chunk.len() * cfg.hidden_size];
        model.embed(chunk, &mut x)?;
        for (layer, [attn_in, o_in, mlp_in, down_in]) in model.layers().iter().zip(&mut sums) {
            let blk = Block::with_backend(&be, cfg, layer);
            blk.attn_input(&x, &mut s);
            add_squares(attn_in, s.normed(&be));
            blk.qkv(&mut s)?;
            blk.attend_fresh(&spans, &mut s)?;
            add_squares(o_in, s.attn_out(&be));
            blk.o_residual(&mut x, None, &mut s)?;
            blk.mlp_input(&x, &mut s);
            add_squares(mlp_in, s.normed(&be));
            blk.gate_up(&mut s)?;
            add_squares(down_in, s.mlp_act(&be));
            blk.down_residual(&mut x, None, &mut s)?;
            progress.check()?;
        }
        progress.advance(nseq as u64);
    }
    let tokens = windows.len();
    let mean = |v: &[f64]| v.iter().map(|s| (s / tokens as f64) as f32).collect::<Vec<f32>>();
    let mut entries = BTreeMap::new();
    for (i, [attn_in, o_in, mlp_in, down_in]) in sums.iter().enumerate() {
        let (attn_in, mlp_in) = (mean(attn_in), mean(mlp_in));
        let name = |suffix: &str| format!("model.layers.{i}.{suffix}.weight");
        for suffix in ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"] {
            entries.insert(name(suffix), attn_in.clone());
        }
        entries.insert(name("self_attn.o_proj"), mean(o_in));
        entries.insert(name("mlp.gate_proj"), mlp_in.clone());
        entries.insert(name("mlp.up_proj"), mlp_in);
        entries.insert(name("mlp.down_proj"), mean(down_in));
    }
    Ok(Imatrix { entries, tokens })
}
