//! [`Cpu`]: lowbit-core's [`Backend`] on this crate's kernels. Buffers are `Vec<f32>`, views
//! are slices, weights are [`Linear`]s; every op dispatches by [`crate::kernel_level`]
//! (`LOWBIT_KERNELS`).

use crate::attention;
use crate::{ops, par, Activations, CpuError, Linear, WeightKind};
use lowbit_core::backend::{AttnSeq, AttnShape, Backend, HostWeight};
use std::ops::Range;

/// The CPU backend.
#[derive(Clone, Copy, Debug)]
pub struct Cpu {
    split_rows: bool,
    activations: Activations,
}

impl Default for Cpu {
    fn default() -> Self {
        Cpu { split_rows: true, activations: crate::activations() }
    }
}

impl Cpu {
    /// The backend the runtime uses: a large batch's rows are split over the rayon pool;
    /// activations as `LOWBIT_ACTIVATIONS` says ([`crate::activations`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// Every weight product runs whole on the kernels' own threading, so results do not depend
    /// on the number of threads (the quantization pipeline's output must not), and always with
    /// f32 activations: the pipeline measures the layers it quantizes on exact inputs.
    pub fn unsplit() -> Self {
        Cpu { split_rows: false, activations: Activations::F32 }
    }

    /// This backend with the activation mode `activations` for its weight products.
    pub fn with_activations(self, activations: Activations) -> Self {
        Cpu { activations, ..self }
    }

    /// The activation mode of the weight products.
    pub fn activations(&self) -> Activations {
        self.activations
    }
}

impl Backend for Cpu {
    type Error = CpuError;
    type Buffer = Vec<f32>;
    type View<'a> = &'a [f32];
    type ViewMut<'a> = &'a mut [f32];
    type Linear = Linear;

    fn name(&self) -> &'static str {
        "cpu"
    }

    /// f32 activations unless int8 was asked for by name (`LOWBIT_ACTIVATIONS=int8`, to measure
    /// its quality cost): the evaluation protocol computes in f32.
    fn for_evaluation(&self) -> Self {
        match self.activations {
            Activations::Auto => self.with_activations(Activations::F32),
            _ => *self,
        }
    }

    fn zeros(&self, len: usize) -> Result<Vec<f32>, CpuError> {
        Ok(vec![0.0; len])
    }
    fn upload(&self, host: &[f32]) -> Result<Vec<f32>, CpuError> {
        Ok(host.to_vec())
    }
    fn to_host(&self, buf: Vec<f32>) -> Result<Vec<f32>, CpuError> {
        Ok(buf)
    }
    fn buf_len(&self, buf: &Vec<f32>) -> usize {
        buf.len()
    }
    fn resize(&self, buf: &mut Vec<f32>, len: usize) -> Result<(), CpuError> {
        buf.resize(len, 0.0);
        Ok(())
    }
    fn append(&self, buf: &mut Vec<f32>, src: &[f32]) -> Result<(), CpuError> {
        buf.extend_from_slice(src);
        Ok(())
    }
    fn truncate(&self, buf: &mut Vec<f32>, len: usize) {
        buf.truncate(len);
    }
    fn view<'a>(&self, buf: &'a Vec<f32>, range: Range<usize>) -> &'a [f32] {
        &buf[range]
    }
    fn view_mut<'a>(&self, buf: &'a mut Vec<f32>, range: Range<usize>) -> &'a mut [f32] {
        &mut buf[range]
    }

    fn load_linear(&self, rows: usize, cols: usize, w: HostWeight<'_>) -> Result<Linear, CpuError> {
        let kind = match w {
            HostWeight::F32(v) => WeightKind::F32(v.to_vec()),
            HostWeight::F16(v) => WeightKind::F16(v.to_vec()),
            HostWeight::Bf16(v) => WeightKind::Bf16(v.to_vec()),
            HostWeight::Quant(q) => WeightKind::Quant(q.clone()),
        };
        Linear::new(rows, cols, kind)
    }
    fn linear_dims(&self, w: &Linear) -> (usize, usize) {
        (w.rows(), w.cols())
    }

    fn linear(&self, w: &Linear, x: &[f32], m: usize, out: &mut [f32]) -> Result<(), CpuError> {
        let threads = par::threads();
        let (level, acts) = (crate::kernel_level(), self.activations());
        // Each thread's share must be large enough to pay for preparing every panel of the
        // weight itself (below GEMM_MIN_M rows it would even stream the weight once per row);
        // smaller batches are split by the kernels over the weight's rows. LLM.int8() finds its
        // outlier columns over the whole batch, so its products are not split here (its W8A8
        // kernels thread over tokens themselves): the result must not depend on the threads.
        if !self.split_rows
            || threads <= 1
            || m < threads * crate::driver::ROW_SPLIT_MIN
            || w.outlier_threshold().is_some()
        {
            return w.forward_activations(level, acts, x, m, out);
        }
        // Prefill: whole row blocks per thread beat splitting each product's output rows.
        let per = m.div_ceil(threads);
        let (rows, cols) = (w.rows(), w.cols());
        let failed = std::sync::Mutex::new(None);
        par::for_each_chunk(out, per * rows, true, |i, oc| {
            let mi = oc.len() / rows;
            if let Err(e) = w.forward_activations(level, acts, &x[i * per * cols..(i * per + mi) * cols], mi, oc) {
                *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            }
        });
        match failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn linears(&self, ws: &[&Linear], x: &[f32], m: usize, mut outs: Vec<&mut [f32]>) -> Result<(), CpuError> {
        if m < crate::driver::GEMM_MIN_M {
            // Decode: with int8 activations x is quantized once and the products run as one job
            // of the pool; otherwise each product uses the pool by itself.
            return Linear::forward_many(crate::kernel_level(), self.activations(), ws, x, m, &mut outs);
        }
        // Prefill: independent products side by side.
        match (ws, outs.len()) {
            ([w], 1) => self.linear(w, x, m, outs.pop().expect("one output")),
            ([w, rest @ ..], n) if n == ws.len() => {
                let first = outs.remove(0);
                let (a, b) = self.join(|| self.linear(w, x, m, first), || self.linears(rest, x, m, outs));
                a.and(b)
            }
            _ => Err(CpuError::shape("Cpu::linears outputs", ws.len(), outs.len())),
        }
    }

    fn embed(&self, table: &Linear, tokens: &[u32], out: &mut [f32]) -> Result<(), CpuError> {
        let h = table.cols();
        if out.len() != tokens.len() * h {
            return Err(CpuError::shape("embed output", tokens.len() * h, out.len()));
        }
        for (&t, o) in tokens.iter().zip(out.chunks_exact_mut(h)) {
            let t = t as usize;
            if t >= table.rows() {
                return Err(CpuError::shape("embed token id (vocabulary)", table.rows(), t));
            }
            let span = t * h..(t + 1) * h;
            match table.weight() {
                WeightKind::F32(v) => o.copy_from_slice(&v[span]),
                WeightKind::F16(v) => o.iter_mut().zip(&v[span]).for_each(|(o, x)| *o = x.to_f32()),
                WeightKind::Bf16(v) => o.iter_mut().zip(&v[span]).for_each(|(o, x)| *o = x.to_f32()),
                // A quantized table stays packed: only the looked-up rows are dequantized.
                WeightKind::Quant(q) => q.dequantize_row(t, o)?,
            }
        }
        Ok(())
    }

    fn rms_norm(&self, x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
        by_rows(out, weight.len(), |start, o| ops::rms_norm(&x[start..start + o.len()], weight, eps, o));
    }
    fn rms_norm_inplace(&self, x: &mut [f32], weight: &[f32], eps: f32) {
        by_rows(x, weight.len(), |_, x| ops::rms_norm_inplace(x, weight, eps));
    }
    fn add(&self, x: &mut [f32], y: &[f32]) {
        by_rows(x, 1, |start, x| x.iter_mut().zip(&y[start..]).for_each(|(a, b)| *a += b));
    }
    fn add_bias(&self, x: &mut [f32], bias: &[f32]) {
        by_rows(x, bias.len(), |_, x| ops::add_bias(x, bias));
    }
    fn swiglu(&self, g: &mut [f32], u: &[f32]) {
        by_rows(g, 1, |start, g| ops::swiglu(g, &u[start..start + g.len()]));
    }
    fn rope(&self, x: &mut [f32], width: usize, head_dim: usize, cos: &[f32], sin: &[f32]) {
        let half = head_dim / 2;
        for ((row, cs), sn) in x.chunks_exact_mut(width).zip(cos.chunks_exact(half)).zip(sin.chunks_exact(half)) {
            row.chunks_exact_mut(head_dim).for_each(|hx| ops::rope_head(hx, cs, sn));
        }
    }
    fn attention(&self, shape: &AttnShape, q: &[f32], k: &[f32], v: &[f32], past: usize, out: &mut [f32]) {
        attention::attention(shape, q, k, v, past, out);
    }

    fn attention_batch(&self, shape: &AttnShape, q: &Vec<f32>, out: &mut Vec<f32>, seqs: &[AttnSeq<'_, Self>]) {
        let qd = shape.q_dim();
        let decode = seqs.len() > 1 && seqs.iter().all(|s| s.rows.len() == 1);
        let ascending = seqs.windows(2).all(|w| w[0].rows.end <= w[1].rows.start);
        if !decode || !ascending {
            // Prefill sequences split their own query blocks over the pool.
            for s in seqs {
                let r = s.rows.start * qd..s.rows.end * qd;
                attention::attention(shape, &q[r.clone()], s.k, s.v, s.past, &mut out[r]);
            }
            return;
        }
        let mut rest = &mut out[..];
        let mut done = 0;
        let mut jobs = Vec::with_capacity(seqs.len());
        for s in seqs {
            let (_, tail) = std::mem::take(&mut rest).split_at_mut((s.rows.start - done) * qd);
            let (mine, tail) = tail.split_at_mut(s.rows.len() * qd);
            rest = tail;
            done = s.rows.end;
            jobs.push((&q[s.rows.start * qd..s.rows.end * qd], s.k, s.v, s.past, mine));
        }
        attention::attention_decode_batch(shape, jobs);
    }

    fn join<A, B, RA, RB>(&self, a: A, b: B) -> (RA, RB)
    where
        A: FnOnce() -> RA + Send,
        B: FnOnce() -> RB + Send,
        RA: Send,
        RB: Send,
    {
        lowbit_core::par::join(a, b)
    }
}

/// Runs an elementwise or per-row op over `x` (rows of `width` values) as `f(offset, part)` on
/// whole-row parts: on the pool when the batch is large (prefill, calibration), in one call
/// otherwise. Each row's result does not depend on the split.
fn by_rows(x: &mut [f32], width: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    let width = width.max(1);
    let rows = x.len() / width;
    if !par::pays(x.len()) || rows < 2 {
        return f(0, x);
    }
    // A few parts per thread so an uneven thread still finishes with the others.
    let part = rows.div_ceil(4 * par::threads()).max(1) * width;
    par::for_each_chunk(x, part, true, |i, p| f(i * part, p));
}
