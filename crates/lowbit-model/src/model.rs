//! The Llama-family decoder: weights, KV cache and the forward pass (prefill and decode, batched).

use crate::attention::{self, AttnShape};
use crate::config::{Architecture, ModelConfig};
use crate::device::Device;
use crate::ops;
use crate::par;
use crate::tensors::{Tensor, TensorData, TensorSource};
use crate::tokenizer::Tokenizer;
use crate::{ModelError, Result};
use lowbit_cpu::{Linear, WeightKind};

/// One decoder layer's weights.
#[derive(Clone, Debug)]
pub struct Layer {
    /// RMSNorm before attention.
    pub input_norm: Vec<f32>,
    /// RMSNorm before the MLP.
    pub post_attention_norm: Vec<f32>,
    /// Query projection `[q_dim, hidden]`.
    pub q_proj: Linear,
    /// Key projection `[kv_dim, hidden]`.
    pub k_proj: Linear,
    /// Value projection `[kv_dim, hidden]`.
    pub v_proj: Linear,
    /// Output projection `[hidden, q_dim]`.
    pub o_proj: Linear,
    /// Query bias (Qwen2).
    pub q_bias: Option<Vec<f32>>,
    /// Key bias (Qwen2).
    pub k_bias: Option<Vec<f32>>,
    /// Value bias (Qwen2).
    pub v_bias: Option<Vec<f32>>,
    /// Per-head RMSNorm of queries (Qwen3).
    pub q_norm: Option<Vec<f32>>,
    /// Per-head RMSNorm of keys (Qwen3).
    pub k_norm: Option<Vec<f32>>,
    /// MLP gate `[intermediate, hidden]`.
    pub gate_proj: Linear,
    /// MLP up `[intermediate, hidden]`.
    pub up_proj: Linear,
    /// MLP down `[hidden, intermediate]`.
    pub down_proj: Linear,
}

/// The seven linear layers of a block, by their Hugging Face suffix.
pub const LINEAR_NAMES: [&str; 7] = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
];

impl Layer {
    /// The linear layers with their Hugging Face suffixes (see [`LINEAR_NAMES`]).
    pub fn linears_mut(&mut self) -> [(&'static str, &mut Linear); 7] {
        [
            (LINEAR_NAMES[0], &mut self.q_proj),
            (LINEAR_NAMES[1], &mut self.k_proj),
            (LINEAR_NAMES[2], &mut self.v_proj),
            (LINEAR_NAMES[3], &mut self.o_proj),
            (LINEAR_NAMES[4], &mut self.gate_proj),
            (LINEAR_NAMES[5], &mut self.up_proj),
            (LINEAR_NAMES[6], &mut self.down_proj),
        ]
    }
    /// The linear layers with their Hugging Face suffixes.
    pub fn linears(&self) -> [(&'static str, &Linear); 7] {
        [
            (LINEAR_NAMES[0], &self.q_proj),
            (LINEAR_NAMES[1], &self.k_proj),
            (LINEAR_NAMES[2], &self.v_proj),
            (LINEAR_NAMES[3], &self.o_proj),
            (LINEAR_NAMES[4], &self.gate_proj),
            (LINEAR_NAMES[5], &self.up_proj),
            (LINEAR_NAMES[6], &self.down_proj),
        ]
    }
}

/// Keys and values of the positions seen so far, per layer, `[position][kv_dim]`.
#[derive(Clone, Debug, Default)]
pub struct KvCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
    len: usize,
}

impl KvCache {
    /// Positions cached.
    pub fn len(&self) -> usize {
        self.len
    }
    /// No position cached yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Forgets everything (keeps the allocation).
    pub fn clear(&mut self) {
        self.k.iter_mut().chain(self.v.iter_mut()).for_each(Vec::clear);
        self.len = 0;
    }
    /// Drops positions from `len` on (to rewind after speculative steps).
    pub fn truncate(&mut self, len: usize, kv_dim: usize) {
        if len < self.len {
            self.k.iter_mut().chain(self.v.iter_mut()).for_each(|c| c.truncate(len * kv_dim));
            self.len = len;
        }
    }
}

/// Which rows of logits a forward pass returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogitsMode {
    /// One row per input token.
    All,
    /// Only the last input token's row (what generation needs).
    Last,
    /// No logits (fills the cache only).
    None,
}

/// Logits `[rows, vocab]`, row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct Logits {
    /// Number of rows.
    pub rows: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// `rows * vocab` values.
    pub data: Vec<f32>,
}

impl Logits {
    /// Row `i`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.vocab..(i + 1) * self.vocab]
    }
}

/// A loaded model: config, weights, and (when the checkpoint has one) its tokenizer.
#[derive(Clone, Debug)]
pub struct Model {
    config: ModelConfig,
    /// Token embedding `[vocab, hidden]` (also the LM head when tied).
    embed: Linear,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    lm_head: Option<Linear>,
    rope: RopeTable,
    tokenizer: Option<Tokenizer>,
    device: Device,
}

/// RoPE `cos`/`sin` per position, `[position][head_dim / 2]`, for the first
/// [`RopeTable::CACHED`] positions; later positions are computed when needed. Same values as
/// computing them per call (the angle rounded to f32, then cos/sin in f64).
#[derive(Clone, Debug)]
struct RopeTable {
    inv_freq: Vec<f32>,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    /// Positions tabulated at load (256 KiB per table for head_dim 64).
    const CACHED: usize = 4096;

    fn new(inv_freq: Vec<f32>) -> Self {
        let half = inv_freq.len();
        let mut t = RopeTable { inv_freq, cos: vec![0.0; Self::CACHED * half], sin: vec![0.0; Self::CACHED * half] };
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
    fn fill(&self, pos: usize, cos: &mut [f32], sin: &mut [f32]) {
        let half = self.inv_freq.len();
        if pos < Self::CACHED {
            cos.copy_from_slice(&self.cos[pos * half..(pos + 1) * half]);
            sin.copy_from_slice(&self.sin[pos * half..(pos + 1) * half]);
        } else {
            self.compute(pos, cos, sin);
        }
    }
}

fn take(src: &mut dyn TensorSource, name: &str, expected: &[usize]) -> Result<Tensor> {
    let t = src.take(name)?.ok_or_else(|| ModelError::MissingTensor { name: name.into() })?;
    check_dims(name, &t.shape, expected)?;
    Ok(t)
}

fn take_vec(src: &mut dyn TensorSource, name: &str, len: usize) -> Result<Vec<f32>> {
    Ok(take(src, name, &[len])?.to_f32())
}

fn take_linear(src: &mut dyn TensorSource, name: &str, rows: usize, cols: usize) -> Result<Linear> {
    let t = take(src, name, &[rows, cols])?;
    Ok(Linear::new(rows, cols, t.into_weight())?)
}

/// Takes the decoder blocks out of a checkpoint one at a time (see [`Model::open_blocks`]).
pub struct BlockReader<'a> {
    src: &'a mut dyn TensorSource,
    config: ModelConfig,
}

impl BlockReader<'_> {
    /// Block `i` as stored (dense or quantized linears), shapes checked against the config.
    /// Each block can be taken once.
    pub fn block(&mut self, i: usize) -> Result<Layer> {
        if i >= self.config.num_hidden_layers {
            return Err(ModelError::input(
                "block",
                format!("block {i} is beyond the model's {} blocks", self.config.num_hidden_layers),
            ));
        }
        take_layer(self.src, &self.config, i)
    }
}

/// Checks a block's shapes against the config (a block built or changed outside the loader).
fn check_layer(c: &ModelConfig, l: &Layer, i: usize) -> Result<()> {
    let (h, qd, kvd, ff) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
    let p = format!("model.layers.{i}.");
    let lin = |n: &str, x: &Linear, rows: usize, cols: usize| {
        check_dims(&format!("{p}{n}.weight"), &[x.rows(), x.cols()], &[rows, cols])
    };
    let vec = |n: &str, x: &Option<Vec<f32>>, want: bool, len: usize| match (x, want) {
        (Some(v), true) => check_dims(&format!("{p}{n}"), &[v.len()], &[len]),
        (None, false) => Ok(()),
        (got, _) => Err(ModelError::input(
            "push_layer",
            format!("{p}{n} is {} but the config says otherwise", if got.is_some() { "present" } else { "absent" }),
        )),
    };
    check_dims(&format!("{p}input_layernorm.weight"), &[l.input_norm.len()], &[h])?;
    check_dims(&format!("{p}post_attention_layernorm.weight"), &[l.post_attention_norm.len()], &[h])?;
    lin("self_attn.q_proj", &l.q_proj, qd, h)?;
    lin("self_attn.k_proj", &l.k_proj, kvd, h)?;
    lin("self_attn.v_proj", &l.v_proj, kvd, h)?;
    lin("self_attn.o_proj", &l.o_proj, h, qd)?;
    lin("mlp.gate_proj", &l.gate_proj, ff, h)?;
    lin("mlp.up_proj", &l.up_proj, ff, h)?;
    lin("mlp.down_proj", &l.down_proj, h, ff)?;
    vec("self_attn.q_proj.bias", &l.q_bias, c.attention_bias, qd)?;
    vec("self_attn.k_proj.bias", &l.k_bias, c.attention_bias, kvd)?;
    vec("self_attn.v_proj.bias", &l.v_bias, c.attention_bias, kvd)?;
    let qk_norm = c.arch == Architecture::Qwen3;
    vec("self_attn.q_norm.weight", &l.q_norm, qk_norm, c.head_dim)?;
    vec("self_attn.k_norm.weight", &l.k_norm, qk_norm, c.head_dim)
}

fn check_dims(name: &str, got: &[usize], expected: &[usize]) -> Result<()> {
    if got != expected {
        return Err(ModelError::TensorShape { name: name.into(), expected: expected.to_vec(), got: got.to_vec() });
    }
    Ok(())
}

/// The tensors of block `i`, shapes checked against the config.
fn take_layer(src: &mut dyn TensorSource, c: &ModelConfig, i: usize) -> Result<Layer> {
    let (h, qd, kvd, ff) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
    let p = format!("model.layers.{i}.");
    let bias = |src: &mut dyn TensorSource, n: &str, len| -> Result<Option<Vec<f32>>> {
        if c.attention_bias {
            Ok(Some(take_vec(src, &format!("{p}self_attn.{n}.bias"), len)?))
        } else {
            Ok(None)
        }
    };
    let qk_norm = c.arch == Architecture::Qwen3;
    Ok(Layer {
        input_norm: take_vec(src, &format!("{p}input_layernorm.weight"), h)?,
        post_attention_norm: take_vec(src, &format!("{p}post_attention_layernorm.weight"), h)?,
        q_proj: take_linear(src, &format!("{p}self_attn.q_proj.weight"), qd, h)?,
        k_proj: take_linear(src, &format!("{p}self_attn.k_proj.weight"), kvd, h)?,
        v_proj: take_linear(src, &format!("{p}self_attn.v_proj.weight"), kvd, h)?,
        o_proj: take_linear(src, &format!("{p}self_attn.o_proj.weight"), h, qd)?,
        q_bias: bias(src, "q_proj", qd)?,
        k_bias: bias(src, "k_proj", kvd)?,
        v_bias: bias(src, "v_proj", kvd)?,
        q_norm: if qk_norm { Some(take_vec(src, &format!("{p}self_attn.q_norm.weight"), c.head_dim)?) } else { None },
        k_norm: if qk_norm { Some(take_vec(src, &format!("{p}self_attn.k_norm.weight"), c.head_dim)?) } else { None },
        gate_proj: take_linear(src, &format!("{p}mlp.gate_proj.weight"), ff, h)?,
        up_proj: take_linear(src, &format!("{p}mlp.up_proj.weight"), ff, h)?,
        down_proj: take_linear(src, &format!("{p}mlp.down_proj.weight"), h, ff)?,
    })
}

fn embedding_row(w: &WeightKind, cols: usize, row: usize, out: &mut [f32]) {
    let span = row * cols..(row + 1) * cols;
    match w {
        WeightKind::F32(v) => out.copy_from_slice(&v[span]),
        WeightKind::F16(v) => out.iter_mut().zip(&v[span]).for_each(|(o, x)| *o = x.to_f32()),
        WeightKind::Bf16(v) => out.iter_mut().zip(&v[span]).for_each(|(o, x)| *o = x.to_f32()),
        // Quantized embeddings are dequantized at load time (see `Model::build`).
        WeightKind::Quant(_) => unreachable!("embedding is dense"),
    }
}

impl Model {
    /// Builds the model from tensors under Hugging Face names, checking every shape against the
    /// config.
    pub(crate) fn build(
        config: ModelConfig,
        src: &mut dyn TensorSource,
        tokenizer: Option<Tokenizer>,
        device: Device,
    ) -> Result<Self> {
        let mut model = Self::build_without_layers(config, src, tokenizer, device)?;
        for i in 0..model.config.num_hidden_layers {
            let mut layer = take_layer(src, &model.config, i)?;
            if model.config.int8_activations {
                for (name, lin) in layer.linears_mut() {
                    lin.enable_int8_activations().map_err(|e| {
                        ModelError::input(
                            "load",
                            format!("block {i} {name}: W8A8 checkpoint with unsuitable weights: {e}"),
                        )
                    })?;
                }
            }
            model.layers.push(layer);
        }
        Ok(model)
    }

    /// The model without its blocks (embedding, final norm, LM head): see [`Model::open_blocks`].
    fn build_without_layers(
        config: ModelConfig,
        src: &mut dyn TensorSource,
        tokenizer: Option<Tokenizer>,
        device: Device,
    ) -> Result<Self> {
        device.check_available()?;
        config.validate()?;
        let c = &config;
        let h = c.hidden_size;
        let mut embed_t = take(src, "model.embed_tokens.weight", &[c.vocab_size, h])?;
        if let TensorData::Quant(q) = &embed_t.data {
            embed_t = Tensor::f32(embed_t.shape.clone(), q.dequantize());
        }
        let embed = Linear::new(c.vocab_size, h, embed_t.into_weight())?;
        let norm = take_vec(src, "model.norm.weight", h)?;
        let lm_head =
            if c.tie_word_embeddings { None } else { Some(take_linear(src, "lm_head.weight", c.vocab_size, h)?) };
        let layers = Vec::with_capacity(c.num_hidden_layers);
        Ok(Model {
            rope: RopeTable::new(config.rope_inv_freq()),
            config,
            embed,
            layers,
            norm,
            lm_head,
            tokenizer,
            device,
        })
    }

    /// Opens the model at `path` (as [`Model::load_with`] does) but without its decoder blocks,
    /// and hands it to `f` with a [`BlockReader`] that takes the blocks out of the (memory-mapped)
    /// checkpoint one at a time: a caller that transforms the blocks (the quantization pipeline)
    /// holds one block's original weights at a time. `f` appends the blocks with
    /// [`Model::push_layer`]; until all are in, the model runs only the blocks it has.
    pub fn open_blocks<R, E: From<ModelError>>(
        path: impl AsRef<std::path::Path>,
        opts: &crate::LoadOptions,
        f: impl FnOnce(Model, &mut BlockReader<'_>) -> std::result::Result<R, E>,
    ) -> std::result::Result<R, E> {
        let inner = crate::load::with_source(path.as_ref(), opts, |config, src, tokenizer| {
            let model = Model::build_without_layers(config.clone(), src, tokenizer, opts.device)?;
            Ok(f(model, &mut BlockReader { src, config }))
        });
        inner.map_err(E::from)?
    }

    /// Appends the next decoder block (see [`Model::open_blocks`]); an error when the model
    /// already has all its blocks or the block's shapes do not fit the config.
    pub fn push_layer(&mut self, layer: Layer) -> Result<()> {
        let i = self.layers.len();
        if i >= self.config.num_hidden_layers {
            return Err(ModelError::input(
                "push_layer",
                format!("the model already has its {} blocks", self.config.num_hidden_layers),
            ));
        }
        check_layer(&self.config, &layer, i)?;
        self.layers.push(layer);
        Ok(())
    }

    /// The config.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }
    /// The tokenizer, if the checkpoint had one.
    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        self.tokenizer.as_ref()
    }
    /// Sets or replaces the tokenizer.
    pub fn set_tokenizer(&mut self, tokenizer: Option<Tokenizer>) {
        self.tokenizer = tokenizer;
    }
    /// The device the model runs on.
    pub fn device(&self) -> Device {
        self.device
    }
    /// The decoder layers.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }
    /// The decoder layers, mutable (to swap weights for quantized ones).
    pub fn layers_mut(&mut self) -> &mut [Layer] {
        &mut self.layers
    }
    /// The token embedding.
    pub fn embedding(&self) -> &Linear {
        &self.embed
    }
    /// The final RMSNorm weight.
    pub fn final_norm(&self) -> &[f32] {
        &self.norm
    }
    /// The LM head (the embedding when tied).
    pub fn lm_head(&self) -> &Linear {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }
    /// Replaces the LM head (unties it from the embedding when tied), e.g. with a quantized
    /// copy; token lookups keep using the dense embedding.
    pub fn set_lm_head(&mut self, head: Linear) -> Result<()> {
        let (vocab, h) = (self.config.vocab_size, self.config.hidden_size);
        if head.rows() != vocab || head.cols() != h {
            return Err(ModelError::TensorShape {
                name: "lm_head.weight".into(),
                expected: vec![vocab, h],
                got: vec![head.rows(), head.cols()],
            });
        }
        self.lm_head = Some(head);
        Ok(())
    }
    /// Bytes of weight storage read per token by the linear layers and the LM head.
    pub fn weight_bytes(&self) -> usize {
        self.layers.iter().flat_map(|l| l.linears().map(|(_, x)| x.nbytes())).sum::<usize>() + self.lm_head().nbytes()
    }

    /// An empty KV cache for this model.
    pub fn new_cache(&self) -> KvCache {
        let n = self.config.num_hidden_layers;
        KvCache { k: vec![Vec::new(); n], v: vec![Vec::new(); n], len: 0 }
    }

    /// Runs `tokens` (appended after what `cache` holds) and returns their logits.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache, mode: LogitsMode) -> Result<Logits> {
        let mut out = self.forward_batch(&mut [(tokens, cache)], mode)?;
        Ok(out.pop().unwrap_or(Logits { rows: 0, vocab: self.config.vocab_size, data: vec![] }))
    }

    /// Runs several sequences at once, each with its own cache. Weight products see all tokens
    /// of all sequences as one matrix; attention stays within each sequence.
    pub fn forward_batch(&self, batch: &mut [(&[u32], &mut KvCache)], mode: LogitsMode) -> Result<Vec<Logits>> {
        let c = &self.config;
        let h = c.hidden_size;
        let (x, starts) = self.hidden_batch(batch)?;
        // Final norm and LM head on the rows asked for.
        let mut outs = Vec::with_capacity(batch.len());
        for (bi, (tokens, _)) in batch.iter().enumerate() {
            let (s, n) = (starts[bi], tokens.len());
            let rows = match mode {
                LogitsMode::All => s..s + n,
                LogitsMode::Last => s + n - 1..s + n,
                LogitsMode::None => s..s,
            };
            let r = rows.len();
            let mut data = vec![0f32; r * c.vocab_size];
            if r > 0 {
                let mut hidden = vec![0f32; r * h];
                ops::rms_norm(&x[rows.start * h..rows.end * h], &self.norm, c.rms_norm_eps, &mut hidden);
                linear(self.lm_head(), &hidden, r, &mut data)?;
            }
            outs.push(Logits { rows: r, vocab: c.vocab_size, data });
        }
        Ok(outs)
    }

    /// Runs `tokens` after what `cache` holds and returns the final-normed hidden states
    /// `[tokens][hidden]`, the LM head's input: callers that only reduce the logits (perplexity)
    /// apply the head a few rows at a time with [`Model::lm_head_rows`] instead of holding
    /// `tokens x vocab` floats.
    pub fn hidden_states(&self, tokens: &[u32], cache: &mut KvCache) -> Result<Vec<f32>> {
        let c = &self.config;
        let (x, _) = self.hidden_batch(&mut [(tokens, cache)])?;
        let mut hidden = vec![0f32; x.len()];
        ops::rms_norm(&x, &self.norm, c.rms_norm_eps, &mut hidden);
        Ok(hidden)
    }

    /// Logits `[rows][vocab]` of `rows` final-normed hidden states (see
    /// [`Model::hidden_states`]) into `out`.
    pub fn lm_head_rows(&self, hidden: &[f32], rows: usize, out: &mut [f32]) -> Result<()> {
        let (h, vocab) = (self.config.hidden_size, self.config.vocab_size);
        if hidden.len() != rows * h || out.len() != rows * vocab {
            return Err(ModelError::input(
                "lm_head_rows",
                format!("{rows} rows need {} hidden and {} output values", rows * h, rows * vocab),
            ));
        }
        linear(self.lm_head(), hidden, rows, out)
    }

    /// The decoder stack over a batch: the residual stream after the last layer (before the
    /// final norm), all sequences' rows stacked, and where each sequence starts.
    fn hidden_batch(&self, batch: &mut [(&[u32], &mut KvCache)]) -> Result<(Vec<f32>, Vec<usize>)> {
        let c = &self.config;
        let (h, qd, kvd, hd) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.head_dim);
        let mut starts = Vec::with_capacity(batch.len());
        let mut m = 0;
        for (tokens, cache) in batch.iter_mut() {
            if tokens.is_empty() {
                return Err(ModelError::input("forward", "a sequence has no tokens"));
            }
            if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= c.vocab_size) {
                return Err(ModelError::input(
                    "forward",
                    format!("token id {bad} is outside the vocabulary of {}", c.vocab_size),
                ));
            }
            if cache.k.len() != c.num_hidden_layers || cache.len * kvd != cache.k.first().map_or(0, Vec::len) {
                return Err(ModelError::input("forward", "the KV cache does not belong to this model"));
            }
            starts.push(m);
            m += tokens.len();
        }

        // Embeddings.
        let mut x = vec![0f32; m * h];
        let mut row = 0;
        for (tokens, _) in batch.iter() {
            for &t in tokens.iter() {
                embedding_row(self.embed.weight(), h, t as usize, &mut x[row * h..(row + 1) * h]);
                row += 1;
            }
        }
        // RoPE angles per token.
        let half = hd / 2;
        let mut cos = vec![0f32; m * half];
        let mut sin = vec![0f32; m * half];
        let mut row = 0;
        for (tokens, cache) in batch.iter() {
            for p in cache.len..cache.len + tokens.len() {
                let span = row * half..(row + 1) * half;
                self.rope.fill(p, &mut cos[span.clone()], &mut sin[span]);
                row += 1;
            }
        }
        let shape = AttnShape {
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
            head_dim: hd,
            window: c.sliding_window,
        };

        let mut xn = vec![0f32; m * h];
        let mut q = vec![0f32; m * qd];
        let mut k = vec![0f32; m * kvd];
        let mut v = vec![0f32; m * kvd];
        let mut attn = vec![0f32; m * qd];
        let mut o = vec![0f32; m * h];
        let mut g = vec![0f32; m * c.intermediate_size];
        let mut u = vec![0f32; m * c.intermediate_size];
        for (li, layer) in self.layers.iter().enumerate() {
            ops::rms_norm(&x, &layer.input_norm, c.rms_norm_eps, &mut xn);
            // Independent products run side by side: at decode most of these matrices are under
            // lowbit-cpu's threshold for splitting one product over threads.
            let (rq, (rk, rv)) = join(
                || linear(&layer.q_proj, &xn, m, &mut q),
                || join(|| linear(&layer.k_proj, &xn, m, &mut k), || linear(&layer.v_proj, &xn, m, &mut v)),
            );
            rq.and(rk).and(rv)?;
            if let (Some(qb), Some(kb), Some(vb)) = (&layer.q_bias, &layer.k_bias, &layer.v_bias) {
                ops::add_bias(&mut q, qb);
                ops::add_bias(&mut k, kb);
                ops::add_bias(&mut v, vb);
            }
            if let (Some(qn), Some(kn)) = (&layer.q_norm, &layer.k_norm) {
                ops::rms_norm_inplace(&mut q, qn, c.rms_norm_eps);
                ops::rms_norm_inplace(&mut k, kn, c.rms_norm_eps);
            }
            for t in 0..m {
                let (cs, sn) = (&cos[t * half..(t + 1) * half], &sin[t * half..(t + 1) * half]);
                q[t * qd..(t + 1) * qd].chunks_exact_mut(hd).for_each(|hq| ops::rope_head(hq, cs, sn));
                k[t * kvd..(t + 1) * kvd].chunks_exact_mut(hd).for_each(|hk| ops::rope_head(hk, cs, sn));
            }
            for (bi, (tokens, cache)) in batch.iter_mut().enumerate() {
                let (s, n) = (starts[bi], tokens.len());
                cache.k[li].extend_from_slice(&k[s * kvd..(s + n) * kvd]);
                cache.v[li].extend_from_slice(&v[s * kvd..(s + n) * kvd]);
                attention::attention(
                    &shape,
                    &q[s * qd..(s + n) * qd],
                    &cache.k[li],
                    &cache.v[li],
                    cache.len,
                    &mut attn[s * qd..(s + n) * qd],
                );
            }
            linear(&layer.o_proj, &attn, m, &mut o)?;
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);

            ops::rms_norm(&x, &layer.post_attention_norm, c.rms_norm_eps, &mut xn);
            let (rg, ru) = join(|| linear(&layer.gate_proj, &xn, m, &mut g), || linear(&layer.up_proj, &xn, m, &mut u));
            rg.and(ru)?;
            ops::swiglu(&mut g, &u);
            linear(&layer.down_proj, &g, m, &mut o)?;
            x.iter_mut().zip(&o).for_each(|(a, b)| *a += b);
        }
        for (tokens, cache) in batch.iter_mut() {
            cache.len += tokens.len();
        }
        Ok((x, starts))
    }
}

/// `(a(), b())`, side by side on the rayon pool when the `parallel` feature is on.
fn join<A, B, RA, RB>(a: A, b: B) -> (RA, RB)
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
fn linear(lin: &Linear, x: &[f32], m: usize, out: &mut [f32]) -> Result<()> {
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
