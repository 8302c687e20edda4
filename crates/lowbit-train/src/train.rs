//! Block-wise reconstruction (the first stage of quantization-aware training): a block's f32
//! weights are trained so that the block, computed with its fake-quantized weights, reproduces
//! the full-precision block's outputs on calibration inputs. The deployed weights are then the
//! round-to-nearest of the trained ones: exactly those the training computed with.

use crate::block::{backward, forward, BlockConfig, BlockGrads, BlockWeights};
use crate::grid::BlockGrids;
use crate::{check_len, Result, TrainError};
use rayon::prelude::*;

/// AdamW (Loshchilov & Hutter) over a list of parameter buffers, with PyTorch's defaults.
#[derive(Clone, Debug)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    /// Steps taken (the bias corrections' exponent).
    pub step: i32,
    /// First and second moments, one buffer per parameter buffer (empty before the first step).
    pub m: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
}

impl AdamW {
    /// Learning rate `lr`, betas (0.9, 0.999), eps 1e-8, weight decay 0.01.
    pub fn new(lr: f32) -> Self {
        AdamW { lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, step: 0, m: Vec::new(), v: Vec::new() }
    }

    /// One step of every `params[i]` along `grads[i]`.
    pub fn step(&mut self, params: &mut [&mut Vec<f32>], grads: &[&Vec<f32>]) {
        if self.m.is_empty() {
            self.m = grads.iter().map(|g| vec![0.0; g.len()]).collect();
            self.v = self.m.clone();
        }
        self.step += 1;
        let (b1, b2) = (self.beta1, self.beta2);
        let (c1, c2) = (1.0 - b1.powi(self.step), 1.0 - b2.powi(self.step));
        for (((p, g), m), v) in params.iter_mut().zip(grads).zip(&mut self.m).zip(&mut self.v) {
            for (((p, &g), m), v) in p.iter_mut().zip(g.iter()).zip(m.iter_mut()).zip(v.iter_mut()) {
                *p -= self.lr * self.weight_decay * *p;
                *m = b1 * *m + (1.0 - b1) * g;
                *v = b2 * *v + (1.0 - b2) * g * g;
                *p -= self.lr * (*m / c1) / ((*v / c2).sqrt() + self.eps);
            }
        }
    }
}

/// Settings of [`reconstruct_block`].
#[derive(Clone, Copy, Debug)]
pub struct ReconstructOptions {
    /// Passes over the calibration windows.
    pub epochs: usize,
    /// AdamW's peak learning rate, decayed to 0 over the run on a cosine. Adam's steps are
    /// about `lr` whatever the gradient's size, so it must be small against the grid's step.
    pub lr: f32,
    /// AdamW's decoupled weight decay (0 keeps the weights where the grid was fitted).
    pub weight_decay: f32,
    /// The scales' and zero points' peak learning rate (the same cosine; no weight decay);
    /// `None` keeps the grids fixed.
    pub grid_lr: Option<f32>,
    /// Windows per step; their gradients are computed side by side and averaged in order.
    pub batch: usize,
}

/// Mean squared error between `a` and `b`, in f64.
pub fn mse(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(&x, &y)| f64::from(x - y).powi(2)).sum::<f64>() / a.len().max(1) as f64
}

/// Trains `w` (and, with `grid_lr`, the grids' scales and zeros) so that the block, computed
/// with its weights rounded on `grids`, maps each `inputs[i]` (`[tokens, hidden]`, one sequence
/// from position 0) to `targets[i]`. Windows in the given order, `batch` per AdamW step
/// (deterministic whatever the thread count). Returns the trained f32 weights (the grids are
/// trained in place) and the mean loss of each epoch, measured before each step.
pub fn reconstruct_block(
    c: &BlockConfig,
    w: &BlockWeights,
    grids: &mut BlockGrids,
    inputs: &[Vec<f32>],
    targets: &[Vec<f32>],
    opts: &ReconstructOptions,
) -> Result<(BlockWeights, Vec<f64>)> {
    w.check(c)?;
    if inputs.len() != targets.len() || inputs.is_empty() {
        return Err(TrainError::Shape { what: "calibration windows", expected: inputs.len(), got: targets.len() });
    }
    for (x, y) in inputs.iter().zip(targets) {
        check_len("target", y, x.len())?;
    }
    let batch = opts.batch.max(1);
    let mut w = w.clone();
    let mut adam = AdamW { weight_decay: opts.weight_decay, ..AdamW::new(opts.lr) };
    let mut grid_adam = AdamW { weight_decay: 0.0, ..AdamW::new(opts.grid_lr.unwrap_or(0.0)) };
    let mut losses = Vec::with_capacity(opts.epochs);
    let steps_per_epoch = inputs.len().div_ceil(batch);
    let total_steps = (opts.epochs * steps_per_epoch) as f32;
    for epoch in 0..opts.epochs {
        let mut total = 0.0f64;
        for (i, (xs, ys)) in inputs.chunks(batch).zip(targets.chunks(batch)).enumerate() {
            let done = (epoch * steps_per_epoch + i) as f32 / total_steps;
            let decay = 0.5 * (1.0 + (std::f32::consts::PI * done).cos());
            adam.lr = opts.lr * decay;
            let fq = w.on_grids(c, grids)?;
            let one = |(x, target): (&Vec<f32>, &Vec<f32>)| -> Result<(f64, BlockGrads)> {
                let (y, tape) = forward(c, &fq, x)?;
                let n = (y.len() * xs.len()) as f32;
                let dy: Vec<f32> = y.iter().zip(target).map(|(a, b)| 2.0 * (a - b) / n).collect();
                Ok((mse(&y, target), backward(c, &fq, &tape, &dy)?.1))
            };
            let parts: Vec<Result<(f64, BlockGrads)>> = xs.par_iter().zip(ys.par_iter()).map(one).collect();
            let mut grad = BlockWeights::zeros(c);
            for part in parts {
                let (loss, g) = part?;
                total += loss;
                for (acc, g) in grad.params_mut().into_iter().zip(g.params()) {
                    acc.iter_mut().zip(g).for_each(|(a, b)| *a += b);
                }
            }
            // Through the rounding (straight-through, LSQ): the rounded weights' gradients move
            // the f32 weights inside the range and the grid's masters.
            let through: Vec<_> = grids
                .0
                .par_iter()
                .zip(w.linears())
                .zip(grad.linears())
                .map(|((grid, w), g)| grid.backward(w, g))
                .collect();
            let mut grid_grads = Vec::with_capacity(14);
            for (dst, gg) in grad.linears_mut().into_iter().zip(through) {
                *dst = gg.weight;
                grid_grads.push(gg.scale);
                grid_grads.push(gg.offset);
            }
            adam.step(&mut w.params_mut(), &grad.params());
            if opts.grid_lr.is_some() {
                grid_adam.lr = opts.grid_lr.unwrap_or(0.0) * decay;
                let mut masters: Vec<&mut Vec<f32>> = grids
                    .0
                    .iter_mut()
                    .flat_map(|g| {
                        let (s, o) = g.masters_mut();
                        [s, o]
                    })
                    .collect();
                grid_adam.step(&mut masters, &grid_grads.iter().collect::<Vec<_>>());
                grids.sync();
            }
        }
        losses.push(total / inputs.len() as f64);
    }
    Ok((w, losses))
}
