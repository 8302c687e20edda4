//! The second stage of quantization-aware training: end-to-end tuning of only the scales
//! (EfficientQAT's E2E-QP), with a distillation loss: the KL divergence from the full-precision
//! teacher's next-token distribution to the quantized model's (Apprentice / KD-QAT).
//!
//! The codes stay fixed (`ŵ = s (q - z)`), so the result is the same quantized model with
//! better scales. Memory stays bounded by gradient checkpointing: where every block's tape would
//! take more than `TAPE_BUDGET` (long windows, many blocks), the forward pass keeps only each
//! block's input and the backward pass recomputes one block's tape at a time.

use crate::block::{backward, forward, BlockConfig, BlockWeights};
use crate::grid::BlockGrids;
use crate::ops::{matmul_nn, matmul_nt, rms_norm_backward, rms_norm_forward};
use crate::train::AdamW;
use crate::{check_len, Result, TrainError};
use lowbit_cpu::ops::exp_inplace;
use rayon::prelude::*;

/// A quantized block as this stage sees it: fixed codes on trainable grids, fixed norm gains.
#[derive(Clone, Debug)]
pub struct QuantBlock {
    /// The seven linears' codes (q, k, v, o, gate, up, down), row-major `[out, in]`.
    pub codes: [Vec<u8>; 7],
    /// Their grids; the scales are trained.
    pub grids: BlockGrids,
    pub attn_norm: Vec<f32>,
    pub mlp_norm: Vec<f32>,
}

impl QuantBlock {
    /// The weights the block computes with: each code dequantized on its grid.
    pub fn weights(&self) -> BlockWeights {
        let [q, k, v, o, gate, up, down] = std::array::from_fn(|i| self.grids.0[i].dequantize(&self.codes[i]));
        BlockWeights { attn_norm: self.attn_norm.clone(), mlp_norm: self.mlp_norm.clone(), q, k, v, o, gate, up, down }
    }
}

/// The final norm and the LM head (`[vocab, hidden]`), shared by the teacher and the student.
#[derive(Clone, Copy, Debug)]
pub struct Head<'a> {
    pub norm: &'a [f32],
    pub weight: &'a [f32],
    pub vocab: usize,
}

/// Settings of [`distill_scales`].
#[derive(Clone, Copy, Debug)]
pub struct DistillOptions {
    /// Passes over the windows.
    pub epochs: usize,
    /// AdamW's peak learning rate on the scales (cosine decay to 0, no weight decay).
    pub lr: f32,
    /// Windows per step.
    pub batch: usize,
    /// Most bytes of block tapes kept between the forward and the backward pass (the default
    /// [`TAPE_BUDGET`]); beyond it each block's tape is recomputed from its input.
    pub tape_budget: usize,
}

/// Where a run stands: what [`distill_scales`] hands its callback after each step, and what it
/// continues from. Together with the blocks' master scales it is the whole training state.
#[derive(Clone, Debug)]
pub struct DistillState {
    /// Steps done.
    pub step: usize,
    /// Sum of the windows' losses in each epoch begun.
    pub loss_sums: Vec<f64>,
    /// The optimizer, moments included.
    pub adam: AdamW,
}

/// Most bytes of tapes the stage keeps by default instead of recomputing them.
pub const TAPE_BUDGET: usize = 2 << 30;

/// Bytes of one block's tape for `tokens` positions (see `block::Tape`).
fn tape_bytes(c: &BlockConfig, tokens: usize) -> usize {
    let (qd, kvd) = (c.heads * c.head_dim, c.kv_heads * c.head_dim);
    let per_token = 5 * c.hidden + 2 * qd + 2 * kvd + 3 * c.ffn + c.head_dim + 2;
    4 * (tokens * per_token + c.heads * tokens * tokens)
}

/// What [`distill_scales`] calls after each step: the state, the blocks, the steps in all.
pub type OnStep<'a> = dyn FnMut(&DistillState, &[QuantBlock], usize) -> Result<()> + 'a;

/// Positions whose logits are materialized at once, so memory stays bounded on long windows
/// (`[512, 49152]` f32 buffers are 100 MB). Smaller chunks were slower: each product with the
/// head packs its weight again (64 rows: 2.3-3.6 s a step against 1.7 s with 512, two blocks).
const HEAD_ROWS: usize = 512;

/// Log-probabilities of the next token at each row of `normed` (final-normed hidden states).
fn log_probs(head: &Head, normed: &[f32], hidden: usize) -> Vec<f32> {
    let mut logp = matmul_nt(normed, head.weight, normed.len() / hidden, hidden, head.vocab);
    logp.chunks_exact_mut(head.vocab).for_each(lowbit_cpu::ops::log_softmax);
    logp
}

/// `exp` of a copy of `log_probs`.
fn probs(log_probs: &[f32]) -> Vec<f32> {
    let mut p = log_probs.to_vec();
    exp_inplace(&mut p);
    p
}

/// `Σ p_teacher (log p_teacher - log p_student)` over every position.
fn summed_kl(teacher_probs: &[f32], teacher: &[f32], student: &[f32]) -> f64 {
    teacher_probs.iter().zip(teacher).zip(student).map(|((&p, &t), &s)| f64::from(p * (t - s))).sum()
}

/// `KL(teacher || student)` summed over the positions of the final-normed hidden states, and,
/// when `grad_scale` is given, the gradient of `grad_scale * KL` with respect to the student's
/// normed states. Runs over [`HEAD_ROWS`] positions at a time.
fn head_kl(head: &Head, student: &[f32], teacher: &[f32], hidden: usize, grad_scale: Option<f32>) -> (f64, Vec<f32>) {
    let mut kl = 0.0;
    let mut dnormed = Vec::with_capacity(if grad_scale.is_some() { student.len() } else { 0 });
    for (s_rows, t_rows) in student.chunks(HEAD_ROWS * hidden).zip(teacher.chunks(HEAD_ROWS * hidden)) {
        let (s, t) = (log_probs(head, s_rows, hidden), log_probs(head, t_rows, hidden));
        let p_teacher = probs(&t);
        kl += summed_kl(&p_teacher, &t, &s);
        if let Some(scale) = grad_scale {
            // d KL / d logit = softmax(student) - p_teacher.
            let mut dlogits = probs(&s);
            dlogits.iter_mut().zip(&p_teacher).for_each(|(d, &p)| *d = scale * (*d - p));
            let rows = s_rows.len() / hidden;
            dnormed.extend(matmul_nn(&dlogits, head.weight, rows, head.vocab, hidden));
        }
    }
    (kl, dnormed)
}

/// `KL(teacher || student)` summed over one window's positions, and the gradient of
/// `scale * KL` with respect to the student's last hidden state; accumulates each linear's
/// scale gradient into `ds[block][linear]`.
#[allow(clippy::too_many_arguments)]
fn window_gradients(
    c: &BlockConfig,
    weights: &[BlockWeights],
    blocks: &[QuantBlock],
    head: &Head,
    input: &[f32],
    teacher_hidden: &[f32],
    scale: f32,
    keep_tapes: bool,
) -> Result<(f64, Vec<[Vec<f32>; 7]>)> {
    // Forward, keeping each block's input (the checkpoints), and its tape where they fit.
    let mut xs = Vec::with_capacity(weights.len() + 1);
    let mut tapes = Vec::with_capacity(if keep_tapes { weights.len() } else { 0 });
    xs.push(input.to_vec());
    for w in weights {
        let (y, tape) = forward(c, w, xs.last().expect("input"))?;
        if keep_tapes {
            tapes.push(tape);
        }
        xs.push(y);
    }
    let last = xs.pop().expect("output");
    let (student, inv) = rms_norm_forward(&last, head.norm, c.eps);
    let (teacher, _) = rms_norm_forward(teacher_hidden, head.norm, c.eps);
    let (kl, dnormed) = head_kl(head, &student, &teacher, c.hidden, Some(scale));
    let (mut dx, _) = rms_norm_backward(&last, head.norm, &inv, &dnormed);
    // Backward, one block at a time from its checkpointed input.
    let mut ds: Vec<[Vec<f32>; 7]> = Vec::with_capacity(weights.len());
    for (i, ((w, block), x)) in weights.iter().zip(blocks).zip(&xs).enumerate().rev() {
        let recomputed;
        let tape = match tapes.pop() {
            Some(t) => t,
            None => {
                recomputed = forward(c, w, x)?.1;
                recomputed
            }
        };
        debug_assert!(tapes.len() == i || !keep_tapes);
        let (dx_in, g) = backward(c, w, &tape, &dx)?;
        let grads = g.linears();
        ds.push(std::array::from_fn(|i| block.grids.0[i].scale_backward(&block.codes[i], grads[i])));
        dx = dx_in;
    }
    ds.reverse();
    Ok((kl, ds))
}

/// The summed KL over `inputs`' positions, and the gradient of `scale` times it with respect to
/// every master scale (block-major, then the block's linears in order).
fn summed_gradients(
    c: &BlockConfig,
    blocks: &[QuantBlock],
    head: &Head,
    inputs: &[Vec<f32>],
    teacher_hidden: &[Vec<f32>],
    scale: f32,
    tape_budget: usize,
) -> Result<(f64, Vec<Vec<f32>>)> {
    let weights: Vec<BlockWeights> = blocks.par_iter().map(QuantBlock::weights).collect();
    // Every block's tape for the windows computed side by side, or (gradient checkpointing) each
    // block's recomputed from its input during the backward pass.
    let tokens = inputs.iter().map(|x| x.len() / c.hidden).max().unwrap_or(0);
    let side_by_side = inputs.len().min(rayon::current_num_threads());
    let keep_tapes = side_by_side * blocks.len() * tape_bytes(c, tokens) <= tape_budget;
    let parts = inputs
        .par_iter()
        .zip(teacher_hidden.par_iter())
        .map(|(x, th)| window_gradients(c, &weights, blocks, head, x, th, scale, keep_tapes))
        .collect::<Result<Vec<_>>>()?;
    let mut grads: Vec<Vec<f32>> =
        blocks.iter().flat_map(|b| b.grids.0.iter().map(|g| vec![0.0; g.scales().len()])).collect();
    let mut kl = 0.0;
    for (window_kl, ds) in parts {
        kl += window_kl;
        for (acc, d) in grads.iter_mut().zip(ds.iter().flatten()) {
            acc.iter_mut().zip(d).for_each(|(a, b)| *a += b);
        }
    }
    Ok((kl, grads))
}

/// The mean `KL(teacher || student)` per position over `inputs` and its gradient with respect to
/// every master scale (block-major, then the block's linears in order), keeping at most
/// `tape_budget` bytes of tapes (0: recompute every block's).
pub fn scale_gradients(
    c: &BlockConfig,
    blocks: &[QuantBlock],
    head: &Head,
    inputs: &[Vec<f32>],
    teacher_hidden: &[Vec<f32>],
    tape_budget: usize,
) -> Result<(f64, Vec<Vec<f32>>)> {
    let positions: usize = inputs.iter().map(|x| x.len() / c.hidden).sum();
    let scale = 1.0 / positions.max(1) as f32;
    let (kl, grads) = summed_gradients(c, blocks, head, inputs, teacher_hidden, scale, tape_budget)?;
    Ok((kl / positions.max(1) as f64, grads))
}

/// Mean `KL(teacher || student)` per position over `inputs` with the blocks as they are.
pub fn distill_loss(
    c: &BlockConfig,
    blocks: &[QuantBlock],
    head: &Head,
    inputs: &[Vec<f32>],
    teacher_hidden: &[Vec<f32>],
) -> Result<f64> {
    let weights: Vec<BlockWeights> = blocks.par_iter().map(QuantBlock::weights).collect();
    let per_window = inputs
        .par_iter()
        .zip(teacher_hidden.par_iter())
        .map(|(x, th)| {
            let mut x = x.clone();
            for w in &weights {
                x = forward(c, w, &x)?.0;
            }
            let (student, _) = rms_norm_forward(&x, head.norm, c.eps);
            let (teacher, _) = rms_norm_forward(th, head.norm, c.eps);
            Ok(head_kl(head, &student, &teacher, c.hidden, None).0)
        })
        .collect::<Result<Vec<f64>>>()?;
    let positions: usize = inputs.iter().map(|x| x.len() / c.hidden).sum();
    Ok(per_window.iter().sum::<f64>() / positions.max(1) as f64)
}

/// Tunes the blocks' scales (in place) so that the quantized model's next-token distributions on
/// `inputs` (each window's embeddings, `[tokens, hidden]`) approach the teacher's, whose last
/// hidden states are `teacher_hidden`. Continues from `resume` (with the blocks' scales as they
/// were saved with it); `on_step` sees the state after every step, to report, checkpoint or stop.
/// Returns the mean KL per position of each epoch, measured before each step.
#[allow(clippy::too_many_arguments)]
pub fn distill_scales(
    c: &BlockConfig,
    blocks: &mut [QuantBlock],
    head: &Head,
    inputs: &[Vec<f32>],
    teacher_hidden: &[Vec<f32>],
    opts: &DistillOptions,
    resume: Option<DistillState>,
    on_step: &mut OnStep<'_>,
) -> Result<Vec<f64>> {
    if inputs.is_empty() || inputs.len() != teacher_hidden.len() {
        return Err(TrainError::Shape { what: "teacher windows", expected: inputs.len(), got: teacher_hidden.len() });
    }
    check_len("final norm", head.norm, c.hidden)?;
    check_len("LM head", head.weight, head.vocab * c.hidden)?;
    for (x, th) in inputs.iter().zip(teacher_hidden) {
        check_len("teacher hidden state", th, x.len())?;
    }
    let batch = opts.batch.max(1);
    let steps_per_epoch = inputs.len().div_ceil(batch);
    let total = opts.epochs * steps_per_epoch;
    let mut state = resume.unwrap_or_else(|| DistillState {
        step: 0,
        loss_sums: Vec::new(),
        adam: AdamW { weight_decay: 0.0, ..AdamW::new(opts.lr) },
    });
    let positions_per_epoch: usize = inputs.iter().map(|x| x.len() / c.hidden).sum();
    while state.step < total {
        let (epoch, i) = (state.step / steps_per_epoch, state.step % steps_per_epoch);
        if state.loss_sums.len() <= epoch {
            state.loss_sums.push(0.0);
        }
        let window = i * batch..((i + 1) * batch).min(inputs.len());
        let positions: usize = inputs[window.clone()].iter().map(|x| x.len() / c.hidden).sum();
        let scale = 1.0 / positions as f32;
        let (kl, grads) = summed_gradients(
            c,
            blocks,
            head,
            &inputs[window.clone()],
            &teacher_hidden[window],
            scale,
            opts.tape_budget,
        )?;
        state.loss_sums[epoch] += kl;
        let done = state.step as f32 / total as f32;
        state.adam.lr = opts.lr * 0.5 * (1.0 + (std::f32::consts::PI * done).cos());
        let mut scales: Vec<&mut Vec<f32>> =
            blocks.iter_mut().flat_map(|b| b.grids.0.iter_mut().map(|g| g.masters_mut().0)).collect();
        state.adam.step(&mut scales, &grads.iter().collect::<Vec<_>>());
        blocks.iter_mut().for_each(|b| b.grids.sync());
        state.step += 1;
        on_step(&state, blocks, total)?;
    }
    Ok(state.loss_sums.iter().map(|s| s / positions_per_epoch.max(1) as f64).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_head_in_chunks_equals_the_head_row_by_row() {
        let (hidden, vocab, rows) = (6, 11, 2 * HEAD_ROWS + 5);
        let wave = |n: usize, k: usize| (0..n).map(|i| ((i * k % 97) as f32 / 97.0 - 0.5) * 3.0).collect::<Vec<f32>>();
        let (norm, weight) = (vec![1.0; hidden], wave(vocab * hidden, 31));
        let head = Head { norm: &norm, weight: &weight, vocab };
        let (student, teacher) = (wave(rows * hidden, 7), wave(rows * hidden, 13));
        let (kl, dnormed) = head_kl(&head, &student, &teacher, hidden, Some(0.5));
        assert_eq!(dnormed.len(), student.len());
        let mut want_kl = 0.0;
        for (r, (s, t)) in student.chunks(hidden).zip(teacher.chunks(hidden)).enumerate() {
            let (row_kl, row_d) = head_kl(&head, s, t, hidden, Some(0.5));
            want_kl += row_kl;
            for (got, want) in dnormed[r * hidden..(r + 1) * hidden].iter().zip(&row_d) {
                assert!((got - want).abs() <= 1e-6 * want.abs().max(1.0), "row {r}: {got} vs {want}");
            }
        }
        assert!(kl > 0.0 && (kl - want_kl).abs() <= 1e-6 * kl, "{kl} vs {want_kl}");
        assert_eq!(head_kl(&head, &student, &teacher, hidden, None), (kl, Vec::new()));
    }
}
