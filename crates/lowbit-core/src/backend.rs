//! The backend seam: every operation a decoder's forward pass asks of a device, as one trait.
//!
//! `lowbit-model` runs its block, forward pass, generation and perplexity through a
//! [`Backend`] and nothing else; `lowbit-cpu` implements it for the CPU (`lowbit_cpu::Cpu`,
//! with run-time kernel dispatch, `LOWBIT_KERNELS`). A new device (a wasm `simd128` level lives
//! inside lowbit-cpu; CUDA would be a crate `lowbit-cuda`) implements this trait and touches no
//! model code. The trait lives here, in the crate every other one depends on, so a backend crate
//! needs neither the model nor the CPU kernels.
//!
//! Weights and activations stay on the device: [`Backend::Linear`] is a weight matrix in its
//! storage format (dense or any lowbit format), [`Backend::Buffer`] a run of f32 (activations,
//! norm weights, biases, one layer's keys or values). Ops read [`Backend::View`]s and write
//! [`Backend::ViewMut`]s, borrowed ranges of buffers, so a batch's rows can be addressed without
//! copies. Data crosses to the host only at the edges: token ids in, RoPE angles, logits out.
//!
//! Activations are row-major `[rows, width]`.

use crate::QTensor;
use half::{bf16, f16};
use std::ops::Range;

/// A weight matrix `[rows, cols]` on the host, as a checkpoint stores it, for
/// [`Backend::load_linear`].
#[derive(Clone, Copy, Debug)]
pub enum HostWeight<'a> {
    /// f32, row-major.
    F32(&'a [f32]),
    /// f16, row-major.
    F16(&'a [f16]),
    /// bf16, row-major.
    Bf16(&'a [bf16]),
    /// A lowbit quantized tensor.
    Quant(&'a QTensor),
}

/// The geometry of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (divides `heads`).
    pub kv_heads: usize,
    /// Lanes per head.
    pub head_dim: usize,
    /// Sliding window: a query at position `p` sees keys `p + 1 - w ..= p`.
    pub window: Option<usize>,
}

impl AttnShape {
    /// Lanes of one token's queries (and outputs): `heads * head_dim`.
    pub fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }
    /// Lanes of one token's keys (and values): `kv_heads * head_dim`.
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }
    /// The first key a query at position `pos` sees.
    pub fn first_key(&self, pos: usize) -> usize {
        self.window.map_or(0, |w| (pos + 1).saturating_sub(w))
    }
}

/// One sequence of [`Backend::attention_batch`]: its query rows, its keys and values (which
/// already hold the new positions) and the positions before its queries.
pub struct AttnSeq<'a, B: Backend + 'a> {
    /// Rows of the batch's queries and outputs.
    pub rows: Range<usize>,
    /// Keys `[past + rows.len()][kv_dim]`.
    pub k: B::View<'a>,
    /// Values, as the keys.
    pub v: B::View<'a>,
    /// Positions already in the cache.
    pub past: usize,
}

/// The operations a device provides to run a Llama-family decoder.
pub trait Backend: Send + Sync + Clone + std::fmt::Debug {
    /// The backend's error (converted by the model into its own).
    type Error: std::error::Error + Send + Sync + 'static;
    /// f32 values resident on the device.
    type Buffer: Send + Sync + Clone + std::fmt::Debug;
    /// A borrowed range of a buffer.
    type View<'a>: Copy + Send + Sync
    where
        Self: 'a;
    /// A borrowed, writable range of a buffer.
    type ViewMut<'a>: Send
    where
        Self: 'a;
    /// A weight matrix in its storage format, resident on the device.
    type Linear: Send + Sync + Clone + std::fmt::Debug;

    /// A short name (`cpu`, `cuda`).
    fn name(&self) -> &'static str;

    /// This backend as an evaluation protocol computes: products in f32 activations where the
    /// backend would otherwise quantize them for speed (perplexity measures the weights, not the
    /// activation rounding). The default: the backend itself.
    fn for_evaluation(&self) -> Self {
        self.clone()
    }

    /// `len` zeros.
    fn zeros(&self, len: usize) -> Result<Self::Buffer, Self::Error>;
    /// A copy of `host` on the device.
    fn upload(&self, host: &[f32]) -> Result<Self::Buffer, Self::Error>;
    /// The buffer's values on the host (the CPU hands its buffer over without a copy).
    fn to_host(&self, buf: Self::Buffer) -> Result<Vec<f32>, Self::Error>;
    /// Values in the buffer.
    fn buf_len(&self, buf: &Self::Buffer) -> usize;
    /// Resizes `buf` to `len` values (new ones zero; allocates only when growing).
    fn resize(&self, buf: &mut Self::Buffer, len: usize) -> Result<(), Self::Error>;
    /// Appends `src` to `buf` (a KV cache growing by the new positions).
    fn append(&self, buf: &mut Self::Buffer, src: Self::View<'_>) -> Result<(), Self::Error>;
    /// Drops the values from `len` on.
    fn truncate(&self, buf: &mut Self::Buffer, len: usize);
    /// `buf[range]`.
    fn view<'a>(&self, buf: &'a Self::Buffer, range: Range<usize>) -> Self::View<'a>;
    /// `buf[range]`, writable.
    fn view_mut<'a>(&self, buf: &'a mut Self::Buffer, range: Range<usize>) -> Self::ViewMut<'a>;

    /// A weight matrix `[rows, cols]` from the host.
    fn load_linear(&self, rows: usize, cols: usize, w: HostWeight<'_>) -> Result<Self::Linear, Self::Error>;
    /// `(rows, cols)` of a weight.
    fn linear_dims(&self, w: &Self::Linear) -> (usize, usize);

    /// `out[m, rows] = x[m, cols] · Wᵀ`.
    fn linear(&self, w: &Self::Linear, x: Self::View<'_>, m: usize, out: Self::ViewMut<'_>) -> Result<(), Self::Error>;
    /// `outs[i][m, rows_i] = x[m, cols] · W_iᵀ` for weights that share their input (q/k/v,
    /// gate/up): a backend may quantize `x` once and run the products as one. The default runs
    /// them one after another.
    fn linears(
        &self,
        ws: &[&Self::Linear],
        x: Self::View<'_>,
        m: usize,
        outs: Vec<Self::ViewMut<'_>>,
    ) -> Result<(), Self::Error> {
        for (w, out) in ws.iter().zip(outs) {
            self.linear(w, x, m, out)?;
        }
        Ok(())
    }
    /// Rows `tokens` of the embedding table `[vocab, hidden]` into `out` (the ids are checked
    /// by the caller).
    fn embed(&self, table: &Self::Linear, tokens: &[u32], out: Self::ViewMut<'_>) -> Result<(), Self::Error>;
    /// `out = x / rms(x) * weight` per row of `weight.len()` values.
    fn rms_norm(&self, x: Self::View<'_>, weight: Self::View<'_>, eps: f32, out: Self::ViewMut<'_>);
    /// [`Backend::rms_norm`] in place (Qwen3's per-head norm: rows of `head_dim`).
    fn rms_norm_inplace(&self, x: Self::ViewMut<'_>, weight: Self::View<'_>, eps: f32);
    /// `x += y`, elementwise (the residual).
    fn add(&self, x: Self::ViewMut<'_>, y: Self::View<'_>);
    /// `x[row] += bias` for every row of `bias.len()` values.
    fn add_bias(&self, x: Self::ViewMut<'_>, bias: Self::View<'_>);
    /// `g = silu(g) * u`.
    fn swiglu(&self, g: Self::ViewMut<'_>, u: Self::View<'_>);
    /// Rotates every head of `head_dim` lanes of each row `t` of `x` (`[m, width]`) by the
    /// angles of row `t` of `cos`/`sin` (`[m, head_dim / 2]`, Hugging Face's half-split pairs).
    fn rope(&self, x: Self::ViewMut<'_>, width: usize, head_dim: usize, cos: Self::View<'_>, sin: Self::View<'_>);
    /// Causal attention of `n` queries `q [n][q_dim]` at positions `past..past + n` over keys
    /// and values `[past + n][kv_dim]` (which already hold the new positions), into `out`.
    fn attention(
        &self,
        shape: &AttnShape,
        q: Self::View<'_>,
        k: Self::View<'_>,
        v: Self::View<'_>,
        past: usize,
        out: Self::ViewMut<'_>,
    );
    /// [`Backend::attention`] for several sequences of a batch: sequence `i` has its queries in
    /// rows `seqs[i].rows` of `q` (`[rows][q_dim]`) and writes the same rows of `out`. The
    /// default runs them in order; the CPU runs single-query (decode) sequences side by side.
    fn attention_batch(&self, shape: &AttnShape, q: &Self::Buffer, out: &mut Self::Buffer, seqs: &[AttnSeq<'_, Self>]) {
        let qd = shape.q_dim();
        for s in seqs {
            let (a, b) = (s.rows.start * qd, s.rows.end * qd);
            self.attention(shape, self.view(q, a..b), s.k, s.v, s.past, self.view_mut(out, a..b));
        }
    }
    /// `(a(), b())`, side by side where the backend can overlap them (the CPU runs independent
    /// products on two threads). The default runs them in order, all the overlap a device with
    /// one in-order queue has.
    fn join<A, B, RA, RB>(&self, a: A, b: B) -> (RA, RB)
    where
        A: FnOnce() -> RA + Send,
        B: FnOnce() -> RB + Send,
        RA: Send,
        RB: Send,
    {
        (a(), b())
    }
}
