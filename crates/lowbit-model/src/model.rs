//! The Llama-family decoder: weights, KV cache and the forward pass (prefill and decode, batched).

use crate::block::{err, Block, Rope, Scratch, Span};
use crate::config::{Architecture, ModelConfig};
use crate::device::Device;
use crate::tensors::{Tensor, TensorSource};
use crate::tokenizer::Tokenizer;
use crate::{ModelError, Result};
use lowbit_core::backend::Backend;
use lowbit_core::progress::{phase, NoProgress, Progress};
use lowbit_cpu::{Cpu, Linear, OutlierCounts};

/// One decoder layer's weights, held by the backend (on the CPU: `Vec<f32>` and [`Linear`]).
#[derive(Clone, Debug)]
pub struct Layer<B: Backend = Cpu> {
    /// RMSNorm before attention.
    pub input_norm: B::Buffer,
    /// RMSNorm before the MLP.
    pub post_attention_norm: B::Buffer,
    /// Query projection `[q_dim, hidden]`.
    pub q_proj: B::Linear,
    /// Key projection `[kv_dim, hidden]`.
    pub k_proj: B::Linear,
    /// Value projection `[kv_dim, hidden]`.
    pub v_proj: B::Linear,
    /// Output projection `[hidden, q_dim]`.
    pub o_proj: B::Linear,
    /// Query bias (Qwen2).
    pub q_bias: Option<B::Buffer>,
    /// Key bias (Qwen2).
    pub k_bias: Option<B::Buffer>,
    /// Value bias (Qwen2).
    pub v_bias: Option<B::Buffer>,
    /// Per-head RMSNorm of queries (Qwen3).
    pub q_norm: Option<B::Buffer>,
    /// Per-head RMSNorm of keys (Qwen3).
    pub k_norm: Option<B::Buffer>,
    /// MLP gate `[intermediate, hidden]`.
    pub gate_proj: B::Linear,
    /// MLP up `[intermediate, hidden]`.
    pub up_proj: B::Linear,
    /// MLP down `[hidden, intermediate]`.
    pub down_proj: B::Linear,
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

impl<B: Backend> Layer<B> {
    /// The linear layers with their Hugging Face suffixes (see [`LINEAR_NAMES`]).
    pub fn linears_mut(&mut self) -> [(&'static str, &mut B::Linear); 7] {
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
    pub fn linears(&self) -> [(&'static str, &B::Linear); 7] {
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
#[derive(Clone, Debug)]
pub struct KvCache<B: Backend = Cpu> {
    backend: B,
    k: Vec<B::Buffer>,
    v: Vec<B::Buffer>,
    len: usize,
}

impl<B: Backend> KvCache<B> {
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
        let KvCache { backend, k, v, len } = self;
        k.iter_mut().chain(v.iter_mut()).for_each(|c| backend.truncate(c, 0));
        *len = 0;
    }
    /// Layer `li`'s keys and values.
    pub(crate) fn layer_mut(&mut self, li: usize) -> (&mut B::Buffer, &mut B::Buffer) {
        (&mut self.k[li], &mut self.v[li])
    }
    pub(crate) fn layer(&self, li: usize) -> (&B::Buffer, &B::Buffer) {
        (&self.k[li], &self.v[li])
    }
    /// Drops positions from `len` on (to rewind after speculative steps).
    pub fn truncate(&mut self, len: usize, kv_dim: usize) {
        if len < self.len {
            let KvCache { backend, k, v, .. } = self;
            k.iter_mut().chain(v.iter_mut()).for_each(|c| backend.truncate(c, len * kv_dim));
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

/// A loaded model: config, weights held by its backend, and (when the checkpoint has one) its
/// tokenizer. Loading builds a CPU model (`Model<Cpu>`, the default).
#[derive(Clone, Debug)]
pub struct Model<B: Backend = Cpu> {
    config: ModelConfig,
    backend: B,
    /// Token embedding `[vocab, hidden]` (also the LM head when tied).
    embed: B::Linear,
    layers: Vec<Layer<B>>,
    norm: B::Buffer,
    lm_head: Option<B::Linear>,
    rope: Rope,
    tokenizer: Option<Tokenizer>,
    device: Device,
    /// What the loader found worth telling the user (see [`Model::load_warnings`]).
    load_warnings: Vec<String>,
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

impl Model {
    /// LLM.int8(): per block linear running the mixed-precision decomposition, its name
    /// (`model.layers.{i}.self_attn.q_proj`, ...) and the outlier columns it found since loading
    /// or [`Model::reset_outlier_counts`] (one batch per forward call: a perplexity window, a
    /// decode step). Empty for models without the decomposition.
    pub fn outlier_counts(&self) -> Vec<(String, OutlierCounts)> {
        let mut out = vec![];
        for (i, layer) in self.layers.iter().enumerate() {
            for (name, lin) in layer.linears() {
                if let Some(c) = lin.outlier_counts() {
                    out.push((format!("model.layers.{i}.{name}"), c));
                }
            }
        }
        out
    }

    /// Sets every block linear's outlier counts back to zero.
    pub fn reset_outlier_counts(&self) {
        self.layers.iter().flat_map(|l| l.linears()).for_each(|(_, lin)| lin.reset_outlier_counts());
    }

    /// Builds the model from tensors under Hugging Face names, checking every shape against the
    /// config.
    pub(crate) fn build(
        config: ModelConfig,
        src: &mut dyn TensorSource,
        tokenizer: Option<Tokenizer>,
        device: Device,
        progress: &mut dyn Progress,
    ) -> Result<Self> {
        let mut model = Self::build_without_layers(config, src, tokenizer, device)?;
        let mut progress = phase(progress, "load", model.config.num_hidden_layers as u64);
        for i in 0..model.config.num_hidden_layers {
            progress.check()?;
            let mut layer = take_layer(src, &model.config, i)?;
            if model.config.int8_activations {
                let threshold = model.config.int8_outlier_threshold;
                for (name, lin) in layer.linears_mut() {
                    match threshold {
                        Some(t) => lin.enable_int8_decomposition(t),
                        None => lin.enable_int8_activations(),
                    }
                    .map_err(|e| {
                        ModelError::input(
                            "load",
                            format!("block {i} {name}: W8A8 checkpoint with unsuitable weights: {e}"),
                        )
                    })?;
                }
            }
            model.layers.push(layer);
            progress.advance(1);
        }
        model.load_warnings = src.warnings();
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
        // A quantized embedding stays packed: lookups dequantize the rows they need.
        let embed = take_linear(src, "model.embed_tokens.weight", c.vocab_size, h)?;
        let norm = take_vec(src, "model.norm.weight", h)?;
        let lm_head =
            if c.tie_word_embeddings { None } else { Some(take_linear(src, "lm_head.weight", c.vocab_size, h)?) };
        let layers = Vec::with_capacity(c.num_hidden_layers);
        Ok(Model {
            rope: Rope::new(config.rope_inv_freq()),
            backend: Cpu::new(),
            config,
            embed,
            layers,
            norm,
            lm_head,
            tokenizer,
            device,
            load_warnings: Vec::new(),
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

    /// [`Model::open_blocks`] for a model file in memory (a GGUF or a pack, as
    /// [`Model::from_bytes`] reads): the quantization pipeline's entry where there is no file
    /// system (the browser).
    pub fn open_blocks_from_bytes<R, E: From<ModelError>>(
        bytes: Vec<u8>,
        opts: &crate::LoadOptions,
        f: impl FnOnce(Model, &mut BlockReader<'_>) -> std::result::Result<R, E>,
    ) -> std::result::Result<R, E> {
        let inner = crate::bytes::with_bytes_source(bytes, opts, |config, src, tokenizer| {
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

    /// The embedding's and the LM head's shape, `[vocab_size, hidden_size]`, for tensor `name`.
    fn check_vocab_rows(&self, name: &str, w: &Linear) -> Result<()> {
        let (vocab, h) = (self.config.vocab_size, self.config.hidden_size);
        if w.rows() != vocab || w.cols() != h {
            return Err(ModelError::TensorShape {
                name: name.into(),
                expected: vec![vocab, h],
                got: vec![w.rows(), w.cols()],
            });
        }
        Ok(())
    }

    /// Replaces the LM head (unties it from the embedding when tied), e.g. with a quantized
    /// copy; token lookups keep using the embedding.
    pub fn set_lm_head(&mut self, head: Linear) -> Result<()> {
        self.check_vocab_rows("lm_head.weight", &head)?;
        self.lm_head = Some(head);
        // Saved and reloaded, the head must stay its own tensor.
        self.config.tie_word_embeddings = false;
        Ok(())
    }

    /// Replaces the token embedding (e.g. with a quantized copy: lookups dequantize the rows
    /// they need). A tied model's LM head is this tensor, so it changes too.
    pub fn set_embedding(&mut self, embed: Linear) -> Result<()> {
        self.check_vocab_rows("model.embed_tokens.weight", &embed)?;
        self.embed = embed;
        Ok(())
    }
    /// Bytes of weight storage read per token by the linear layers and the LM head.
    pub fn weight_bytes(&self) -> usize {
        self.layers.iter().flat_map(|l| l.linears().map(|(_, x)| x.nbytes())).sum::<usize>() + self.lm_head().nbytes()
    }

    /// This model on another backend (`device` is what [`Model::device`] then reports): every
    /// weight crosses once through [`Backend::load_linear`] and every vector through
    /// [`Backend::upload`]. Loading stays on the CPU; a device backend (lowbit-cuda) starts here.
    pub fn to_backend<B: Backend>(&self, backend: B, device: Device) -> Result<Model<B>> {
        let lin = |l: &Linear| backend.load_linear(l.rows(), l.cols(), host_weight(l)).map_err(err);
        let buf = |v: &[f32]| backend.upload(v).map_err(err);
        let opt = |v: &Option<Vec<f32>>| v.as_deref().map(buf).transpose();
        let layers = self
            .layers
            .iter()
            .map(|l| {
                Ok(Layer {
                    input_norm: buf(&l.input_norm)?,
                    post_attention_norm: buf(&l.post_attention_norm)?,
                    q_proj: lin(&l.q_proj)?,
                    k_proj: lin(&l.k_proj)?,
                    v_proj: lin(&l.v_proj)?,
                    o_proj: lin(&l.o_proj)?,
                    q_bias: opt(&l.q_bias)?,
                    k_bias: opt(&l.k_bias)?,
                    v_bias: opt(&l.v_bias)?,
                    q_norm: opt(&l.q_norm)?,
                    k_norm: opt(&l.k_norm)?,
                    gate_proj: lin(&l.gate_proj)?,
                    up_proj: lin(&l.up_proj)?,
                    down_proj: lin(&l.down_proj)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Model {
            config: self.config.clone(),
            embed: lin(&self.embed)?,
            layers,
            norm: buf(&self.norm)?,
            lm_head: self.lm_head.as_ref().map(lin).transpose()?,
            rope: self.rope.clone(),
            tokenizer: self.tokenizer.clone(),
            device,
            load_warnings: self.load_warnings.clone(),
            backend,
        })
    }
}

/// A CPU weight as the host view [`Backend::load_linear`] takes.
fn host_weight(l: &Linear) -> lowbit_core::backend::HostWeight<'_> {
    use lowbit_core::backend::HostWeight;
    match l.weight() {
        lowbit_cpu::WeightKind::F32(v) => HostWeight::F32(v),
        lowbit_cpu::WeightKind::F16(v) => HostWeight::F16(v),
        lowbit_cpu::WeightKind::Bf16(v) => HostWeight::Bf16(v),
        lowbit_cpu::WeightKind::Quant(q) => HostWeight::Quant(q),
    }
}

impl<B: Backend> Model<B> {
    /// The config.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }
    /// What loading found worth a warning, one line each: GGUF types dequantized to f32 (lowbit
    /// has no kernel for them), GPTQ zero-point conventions contradicting the label. The CLI
    /// prints them and the Python binding raises them as `warnings.warn`.
    pub fn load_warnings(&self) -> &[String] {
        &self.load_warnings
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
    pub fn layers(&self) -> &[Layer<B>] {
        &self.layers
    }
    /// The decoder layers, mutable (to swap weights for quantized ones).
    pub fn layers_mut(&mut self) -> &mut [Layer<B>] {
        &mut self.layers
    }
    /// The token embedding (packed when the checkpoint stores it quantized).
    pub fn embedding(&self) -> &B::Linear {
        &self.embed
    }
    /// The backend the weights live on.
    pub fn backend(&self) -> &B {
        &self.backend
    }
    /// The RoPE table.
    pub fn rope(&self) -> &Rope {
        &self.rope
    }
    /// The embedding rows of `tokens` into `out` (`tokens.len() * hidden_size` values); a
    /// quantized embedding dequantizes only those rows.
    pub fn embed(&self, tokens: &[u32], out: B::ViewMut<'_>) -> Result<()> {
        let vocab = self.config.vocab_size;
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(ModelError::input("embed", format!("token id {bad} is outside the vocabulary of {vocab}")));
        }
        self.backend.embed(&self.embed, tokens, out).map_err(err)
    }
    /// The final RMSNorm weight.
    pub fn final_norm(&self) -> &B::Buffer {
        &self.norm
    }
    /// The LM head (the embedding when tied).
    pub fn lm_head(&self) -> &B::Linear {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// An empty KV cache for this model.
    pub fn new_cache(&self) -> KvCache<B> {
        let n = self.config.num_hidden_layers;
        let be = &self.backend;
        // Zero-length buffers: a backend's `zeros(0)` does not allocate device memory.
        let empty = || (0..n).map(|_| be.zeros(0).map_err(err)).collect::<Result<Vec<_>>>();
        let (k, v) = (empty(), empty());
        KvCache { backend: be.clone(), k: k.unwrap_or_default(), v: v.unwrap_or_default(), len: 0 }
    }

    /// Runs `tokens` (appended after what `cache` holds) and returns their logits.
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache<B>, mode: LogitsMode) -> Result<Logits> {
        let mut out = self.forward_batch(&mut [(tokens, cache)], mode)?;
        Ok(out.pop().unwrap_or(Logits { rows: 0, vocab: self.config.vocab_size, data: vec![] }))
    }

    /// Runs several sequences at once, each with its own cache. Weight products see all tokens
    /// of all sequences as one matrix; attention stays within each sequence.
    pub fn forward_batch(&self, batch: &mut [(&[u32], &mut KvCache<B>)], mode: LogitsMode) -> Result<Vec<Logits>> {
        let c = &self.config;
        let h = c.hidden_size;
        let (x, spans) = self.hidden_batch(&self.backend, batch, &mut NoProgress)?;
        // Final norm and LM head on the rows asked for, of all sequences at once: the head (the
        // largest matrix of a small model) is read once per call, not once per sequence.
        let wanted: Vec<std::ops::Range<usize>> = spans
            .iter()
            .map(|sp| match mode {
                LogitsMode::All => sp.start..sp.start + sp.len,
                LogitsMode::Last => sp.start + sp.len - 1..sp.start + sp.len,
                LogitsMode::None => sp.start..sp.start,
            })
            .collect();
        let r: usize = wanted.iter().map(|w| w.len()).sum();
        let mut data = if r > 0 {
            let be = &self.backend;
            let mut rows = be.zeros(0).map_err(err)?;
            for w in &wanted {
                be.append(&mut rows, be.view(&x, w.start * h..w.end * h)).map_err(err)?;
            }
            let mut hidden = be.zeros(r * h).map_err(err)?;
            be.rms_norm(be.view(&rows, 0..r * h), self.norm_view(), c.rms_norm_eps, be.view_mut(&mut hidden, 0..r * h));
            let mut logits = be.zeros(r * c.vocab_size).map_err(err)?;
            let (hv, lv) = (be.view(&hidden, 0..r * h), be.view_mut(&mut logits, 0..r * c.vocab_size));
            be.linear(self.lm_head(), hv, r, lv).map_err(err)?;
            be.to_host(logits).map_err(err)?
        } else {
            vec![]
        };
        // Split per sequence, from the back so each split is a cheap truncation.
        let mut outs = Vec::with_capacity(batch.len());
        for w in wanted.iter().rev() {
            let tail = data.split_off(data.len() - w.len() * c.vocab_size);
            outs.push(Logits { rows: w.len(), vocab: c.vocab_size, data: tail });
        }
        outs.reverse();
        Ok(outs)
    }

    /// Runs `tokens` after what `cache` holds and returns the logits of the last token, left on
    /// the backend (`vocab_size` values): a device backend reduces them there (greedy argmax)
    /// and downloads only the token id.
    pub fn forward_last_on_device(&self, tokens: &[u32], cache: &mut KvCache<B>) -> Result<B::Buffer> {
        let c = &self.config;
        let (h, vocab) = (c.hidden_size, c.vocab_size);
        let (x, _) = self.hidden_batch(&self.backend, &mut [(tokens, cache)], &mut NoProgress)?;
        let be = &self.backend;
        let n = tokens.len();
        let mut hidden = be.zeros(h).map_err(err)?;
        be.rms_norm(be.view(&x, (n - 1) * h..n * h), self.norm_view(), c.rms_norm_eps, be.view_mut(&mut hidden, 0..h));
        let mut logits = be.zeros(vocab).map_err(err)?;
        be.linear(self.lm_head(), be.view(&hidden, 0..h), 1, be.view_mut(&mut logits, 0..vocab)).map_err(err)?;
        Ok(logits)
    }

    /// Runs `tokens` after what `cache` holds and returns the final-normed hidden states
    /// `[tokens][hidden]`, the LM head's input: callers that only reduce the logits (perplexity)
    /// apply the head a few rows at a time with [`Model::lm_head_rows`] instead of holding
    /// `tokens x vocab` floats. Computed as evaluations are ([`Backend::for_evaluation`]: f32
    /// activations on the CPU unless `LOWBIT_ACTIVATIONS=int8`).
    /// `progress` is polled for cancellation once per layer.
    pub fn hidden_states(
        &self,
        tokens: &[u32],
        cache: &mut KvCache<B>,
        progress: &mut dyn Progress,
    ) -> Result<Vec<f32>> {
        let c = &self.config;
        let be = &self.backend.for_evaluation();
        let (x, _) = self.hidden_batch(be, &mut [(tokens, cache)], progress)?;
        let n = be.buf_len(&x);
        let mut hidden = be.zeros(n).map_err(err)?;
        be.rms_norm(be.view(&x, 0..n), self.norm_view(), c.rms_norm_eps, be.view_mut(&mut hidden, 0..n));
        be.to_host(hidden).map_err(err)
    }

    /// Logits `[rows][vocab]` of `rows` final-normed hidden states (see
    /// [`Model::hidden_states`]) into `out`, computed as evaluations are.
    pub fn lm_head_rows(&self, hidden: &[f32], rows: usize, out: &mut [f32]) -> Result<()> {
        let (h, vocab) = (self.config.hidden_size, self.config.vocab_size);
        if hidden.len() != rows * h || out.len() != rows * vocab {
            return Err(ModelError::input(
                "lm_head_rows",
                format!("{rows} rows need {} hidden and {} output values", rows * h, rows * vocab),
            ));
        }
        let be = &self.backend.for_evaluation();
        let hidden = be.upload(hidden).map_err(err)?;
        let mut logits = be.zeros(out.len()).map_err(err)?;
        let (hv, lv) = (be.view(&hidden, 0..rows * h), be.view_mut(&mut logits, 0..rows * vocab));
        be.linear(self.lm_head(), hv, rows, lv).map_err(err)?;
        out.copy_from_slice(&be.to_host(logits).map_err(err)?);
        Ok(())
    }

    fn norm_view(&self) -> B::View<'_> {
        self.backend.view(&self.norm, 0..self.config.hidden_size)
    }

    /// The decoder stack over a batch: the residual stream after the last layer (before the
    /// final norm), all sequences' rows stacked, and where each sequence's rows are. `progress`
    /// is polled once per layer (a long prefill is a few seconds); a cancelled call leaves the
    /// caches half-extended, so they must be dropped.
    fn hidden_batch(
        &self,
        be: &B,
        batch: &mut [(&[u32], &mut KvCache<B>)],
        progress: &mut dyn Progress,
    ) -> Result<(B::Buffer, Vec<Span>)> {
        let c = &self.config;
        let (h, kvd) = (c.hidden_size, c.kv_dim());
        let mut spans = Vec::with_capacity(batch.len());
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
            let cached = cache.k.first().map_or(0, |k| self.backend.buf_len(k));
            if cache.k.len() != c.num_hidden_layers || cache.len * kvd != cached {
                return Err(ModelError::input("forward", "the KV cache does not belong to this model"));
            }
            spans.push(Span { start: m, len: tokens.len(), past: cache.len });
            m += tokens.len();
        }
        let mut x = be.zeros(m * h).map_err(err)?;
        for ((tokens, _), sp) in batch.iter().zip(&spans) {
            self.embed(tokens, be.view_mut(&mut x, sp.start * h..(sp.start + sp.len) * h))?;
        }
        let mut scratch = Scratch::new(be, c, m)?;
        scratch.set_positions(be, &self.rope, &spans)?;
        for (li, layer) in self.layers.iter().enumerate() {
            progress.check()?;
            let caches = batch.iter_mut().map(|(_, cache)| &mut **cache);
            let blk = Block::with_backend(be, c, layer);
            blk.forward(&mut x, &mut scratch, |s| blk.attend_cached(&spans, caches, li, s))?;
        }
        for (tokens, cache) in batch.iter_mut() {
            cache.len += tokens.len();
        }
        Ok((x, spans))
    }
}
