//! Mixed precision to a byte budget (`target_bpw` / `max_size`): bits and group size per block
//! linear, chosen from measured sensitivity by the exact knapsack of [`crate::allocate`].
//!
//! Before the blocks are quantized, a sensitivity pass runs the full-precision model over the
//! first [`SENSITIVITY_WINDOWS`] calibration windows, block by block, and builds the Hessian
//! `H = 2/N X^T X` of each of the block's four inputs (the ones GPTQ builds). For every layer and
//! every candidate scheme ([`CANDIDATE_BITS`] x [`CANDIDATE_GROUPS`]) it quantizes the weight
//! with round-to-nearest and takes
//!
//! * the **exact stored bytes**: `QTensor::nbytes` of that tensor, the number the writer and
//!   the report count (codes, scales, zero points);
//! * the **predicted error** `g_l tr(dW H dW^T) / 2`: the layer's mean squared output error per
//!   token, times the layer's measured gain `g_l` to the block output, so that layers are
//!   comparable. The gain is measured, not modelled: the block is run on the first
//!   [`GAIN_WINDOWS`] windows once as it is and once per linear with only that linear at RTN
//!   3-bit g128, and `g_l` is the mean squared change of the block's output over that layer's
//!   own predicted output error at the same scheme. It captures what a linear model of the block
//!   cannot: the softmax after q and k, the averaging over tokens after v, the SiLU gate after
//!   gate/up; o_proj and down_proj add to the residual directly (gain near 1). The change is
//!   taken relative to the block output's mean squared norm: every later block reads the
//!   residual stream through an RMSNorm, so what an error does downstream scales with its size
//!   relative to the stream, which grows with depth (a first protocol run with absolute errors
//!   gave block 0, where the stream is small, 2 bits everywhere).
//!
//! The knapsack minimizes the summed predicted error subject to the bytes of the block linears
//! fitting the budget; the pipeline then quantizes each layer with the base method (RTN or
//! GPTQ) at its chosen scheme.

use crate::allocate::{self, Choice};
use crate::calib::CalibSource;
use crate::{QuantizeError, Result};
use lowbit_core::progress::{phase, Progress};
use lowbit_core::{Bits, ClipSearch, Granularity, IntScheme};
use lowbit_cpu::Cpu;
use lowbit_cpu::{Linear, WeightKind};
use lowbit_model::block::{Block, Scratch, Span};
use lowbit_model::{BlockReader, Layer, Model, ModelConfig};
use lowbit_solvers::{Hessian, HessianPrecision};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Calibration windows of the sensitivity pass (the first ones of the run's windows): a quarter
/// of the protocol's 128, enough to rank the candidates and a fraction of the run's time.
pub const SENSITIVITY_WINDOWS: usize = 32;
/// Whether 2-bit candidates are dropped when the budget lets every layer have 3 bits or more.
/// The knapsack adds the layers' predicted errors, which holds for small errors; a 2-bit layer's
/// error is large, and GPTQ's true-sequential pass builds every later layer on it. On SmolLM2 at
/// 3.2 bits per weight, allocations with 48 and 81 two-bit layers (of 210) scored 58.4 and 86.0
/// against uniform 3-bit g128's 39.0 (benches/README.md).
pub const TWO_BITS_ONLY_WHEN_FORCED: bool = true;
/// Windows (of the sensitivity pass's) on which each layer's gain to the block output is
/// measured.
pub const GAIN_WINDOWS: usize = 8;
/// Code widths the allocation chooses from.
pub const CANDIDATE_BITS: [Bits; 4] = [Bits::B2, Bits::B3, Bits::B4, Bits::B8];
/// Group sizes the allocation chooses from (`None`: one scale per output channel).
pub const CANDIDATE_GROUPS: [Option<usize>; 4] = [Some(32), Some(64), Some(128), None];
/// Bytes held back per block linear under `max_size` for what the sizes of the tensors do not
/// count (its safetensors header entries, its manifest rows): generous, so the directory fits.
const FILE_SLACK_PER_LINEAR: u64 = 1536;
/// Bytes held back once under `max_size` (index and config growth, manifest fields).
const FILE_SLACK: u64 = 64 * 1024;

/// The budget asked for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Budget {
    /// Stored bits per block-linear weight (the report's `bits_per_weight`).
    BitsPerWeight(f64),
    /// Bytes of the whole output directory (the report's `out_bytes`).
    MaxSize(u64),
}

/// One layer's chosen scheme.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerAllocation {
    /// Block index.
    pub block: usize,
    /// Name inside the block (`self_attn.q_proj`, ...).
    pub name: String,
    /// Code width.
    pub bits: u32,
    /// Group size; `None`: per output channel.
    pub group_size: Option<usize>,
    /// Stored bytes (codes, scales, zeros).
    pub bytes: usize,
    /// The sensitivity pass's predicted error of this choice (gain times output error).
    pub predicted_error: f64,
    /// The layer's measured gain from its output error to the block output, relative to the
    /// block output's mean squared norm.
    pub gain: f64,
}

/// The allocation: the budget, what was chosen, what it predicts.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Allocation {
    /// `target_bpw` as given.
    pub target_bpw: Option<f64>,
    /// `max_size` as given (bytes of the whole directory).
    pub max_size: Option<u64>,
    /// Bytes the block linears may take.
    pub budget_bytes: usize,
    /// Under `max_size`: the bytes held for everything but the block linears (tensors, tokenizer,
    /// config, headers, manifest, with a margin).
    pub other_bytes_estimate: Option<u64>,
    /// Bytes of the chosen block linears (exact: what the writer stores).
    pub predicted_linear_bytes: usize,
    /// `predicted_linear_bytes` in bits per block-linear weight.
    pub predicted_bits_per_weight: f64,
    /// Summed predicted error of the choice.
    pub predicted_error: f64,
    /// Calibration windows of the sensitivity pass.
    pub sensitivity_windows: usize,
    /// The knapsack's grid unit in bytes (1: the exact optimum).
    pub grid_unit_bytes: usize,
    /// Seconds of the sensitivity pass and the knapsack.
    pub seconds: f64,
    /// `(bits, group_size)` candidates, as `"3/g128"`, `"8/channel"`.
    pub candidates: Vec<String>,
    /// Per block linear, in block then layer order.
    pub layers: Vec<LayerAllocation>,
}

impl Allocation {
    /// The scheme of layer `name` of block `block`: `base` with the chosen bits and groups.
    pub fn scheme(&self, block: usize, name: &str, base: IntScheme) -> Result<IntScheme> {
        let l = self.layers.iter().find(|l| l.block == block && l.name == name).ok_or_else(|| {
            QuantizeError::input("mixed precision", format!("no allocation for block {block} {name}"))
        })?;
        Ok(candidate_scheme(base, Bits::try_from(l.bits)?, l.group_size))
    }

    /// How many layers got each `bits/group` (for summaries).
    pub fn histogram(&self) -> Vec<(String, usize)> {
        let mut out: Vec<(String, usize)> = vec![];
        for l in &self.layers {
            let k = label(l.bits, l.group_size);
            match out.iter_mut().find(|(n, _)| *n == k) {
                Some((_, c)) => *c += 1,
                None => out.push((k, 1)),
            }
        }
        out.sort();
        out
    }
}

fn label(bits: u32, group: Option<usize>) -> String {
    match group {
        Some(g) => format!("{bits}/g{g}"),
        None => format!("{bits}/channel"),
    }
}

fn candidate_scheme(base: IntScheme, bits: Bits, group: Option<usize>) -> IntScheme {
    let granularity = group.map_or(Granularity::PerChannel, Granularity::Group);
    IntScheme { bits, granularity, clip: ClipSearch::MinMax, ..base }
}

/// Checks a budget's value (a clear error for NaN, infinities, zero or negative).
pub fn check_budget(target_bpw: Option<f64>, max_size: Option<u64>) -> Result<Option<Budget>> {
    let bad = |r: String| Err(QuantizeError::input("mixed precision", r));
    match (target_bpw, max_size) {
        (Some(_), Some(_)) => bad("give target_bpw or max_size, not both".into()),
        (Some(t), None) if !t.is_finite() || t <= 0.0 => {
            bad(format!("target_bpw must be a positive number of bits per weight, got {t}"))
        }
        (Some(t), None) => Ok(Some(Budget::BitsPerWeight(t))),
        (None, Some(0)) => bad("max_size must be a positive number of bytes".into()),
        (None, Some(m)) => Ok(Some(Budget::MaxSize(m))),
        (None, None) => Ok(None),
    }
}

/// One block linear's candidates.
struct LayerChoices {
    block: usize,
    name: &'static str,
    gain: f64,
    options: Vec<(Bits, Option<usize>, Choice)>,
}

/// The sensitivity pass (see the module docs) and the knapsack. `other_bytes` is what the
/// directory holds besides the block linears (for `max_size`); `linear_params` the weights of
/// the block linears.
#[allow(clippy::too_many_arguments)]
pub(crate) fn allocate_model(
    model: &Model,
    blocks: &mut BlockReader<'_>,
    windows: &[u32],
    seqlen: usize,
    batch_tokens: usize,
    base: IntScheme,
    budget: Budget,
    other_bytes: u64,
    progress: &mut dyn Progress,
) -> Result<Allocation> {
    let start = Instant::now();
    let cfg = model.config().clone();
    let nwin = (windows.len() / seqlen).min(SENSITIVITY_WINDOWS);
    if nwin == 0 {
        return Err(QuantizeError::input("mixed precision", "the sensitivity pass needs calibration windows"));
    }
    let windows = &windows[..nwin * seqlen];
    let gain_windows = nwin.min(GAIN_WINDOWS);
    let mut layers = vec![];
    let mut done = phase(progress, "sensitivity", cfg.num_hidden_layers as u64);
    let h = cfg.hidden_size;
    let mut x = vec![0f32; windows.len() * h];
    model.embed(windows, &mut x)?;
    for b in 0..cfg.num_hidden_layers {
        done.check()?;
        let layer = blocks.block(b)?;
        let x_in = x[..gain_windows * seqlen * h].to_vec();
        let hs = block_hessians(model, &layer, &mut x, seqlen, batch_tokens, &mut *done)?;
        let gains = block_gains(model, &layer, &x_in, &hs, base, seqlen, batch_tokens, &mut *done)?;
        layers.extend(block_choices(b, &layer, &hs, &gains, base)?);
        done.advance(1);
    }
    drop(done);
    let linear_params: usize = layers_params(&cfg);
    let (budget_bytes, other) = match budget {
        Budget::BitsPerWeight(t) => ((t * linear_params as f64 / 8.0).floor() as usize, None),
        Budget::MaxSize(m) => {
            let other = other_bytes + FILE_SLACK + FILE_SLACK_PER_LINEAR * layers.len() as u64;
            let b = m.checked_sub(other).ok_or_else(|| {
                QuantizeError::input(
                    "mixed precision",
                    format!("max_size {m} bytes leaves nothing for the block linears: the rest of the directory takes about {other} bytes"),
                )
            })?;
            (usize::try_from(b).unwrap_or(usize::MAX), Some(other))
        }
    };
    let items: Vec<Vec<Choice>> = layers.iter().map(|l| l.options.iter().map(|o| o.2).collect()).collect();
    let (lo, hi) = allocate::byte_range(&items);
    // 2-bit codes only where the budget forces them: see TWO_BITS_ONLY_WHEN_FORCED.
    let no_two: Vec<Vec<(Bits, Option<usize>, Choice)>> =
        layers.iter().map(|l| l.options.iter().copied().filter(|o| o.0 != Bits::B2).collect()).collect();
    let without_two: Vec<Vec<Choice>> = no_two.iter().map(|o| o.iter().map(|c| c.2).collect()).collect();
    if TWO_BITS_ONLY_WHEN_FORCED && budget_bytes >= allocate::byte_range(&without_two).0 {
        for (l, o) in layers.iter_mut().zip(no_two) {
            l.options = o;
        }
    }
    let items: Vec<Vec<Choice>> = layers.iter().map(|l| l.options.iter().map(|o| o.2).collect()).collect();
    let what = |bytes: usize| match budget {
        Budget::BitsPerWeight(_) => format!("{:.4} bits per weight", bytes as f64 * 8.0 / linear_params as f64),
        Budget::MaxSize(_) => format!("a directory of {} bytes", bytes as u64 + other.unwrap_or(0)),
    };
    if budget_bytes < lo {
        return Err(QuantizeError::input(
            "mixed precision",
            format!("the budget is below the smallest allocation ({}, every layer at its fewest bytes)", what(lo)),
        ));
    }
    if budget_bytes > hi {
        return Err(QuantizeError::input(
            "mixed precision",
            format!("the budget is above the largest allocation ({}, every layer at 8 bits): quantize uniformly at 8 bits instead", what(hi)),
        ));
    }
    let sol = allocate::solve(&items, budget_bytes)?;
    let chosen: Vec<LayerAllocation> = layers
        .iter()
        .zip(&sol.choice)
        .map(|(l, &k)| {
            let (bits, group, c) = l.options[k];
            LayerAllocation {
                block: l.block,
                name: l.name.to_string(),
                bits: bits.get(),
                group_size: group,
                bytes: c.bytes,
                predicted_error: c.cost,
                gain: l.gain,
            }
        })
        .collect();
    let candidates =
        CANDIDATE_BITS.iter().flat_map(|b| CANDIDATE_GROUPS.iter().map(move |g| label(b.get(), *g))).collect();
    Ok(Allocation {
        target_bpw: match budget {
            Budget::BitsPerWeight(t) => Some(t),
            Budget::MaxSize(_) => None,
        },
        max_size: match budget {
            Budget::MaxSize(m) => Some(m),
            Budget::BitsPerWeight(_) => None,
        },
        budget_bytes,
        other_bytes_estimate: other,
        predicted_linear_bytes: sol.bytes,
        predicted_bits_per_weight: sol.bytes as f64 * 8.0 / linear_params as f64,
        predicted_error: sol.cost,
        sensitivity_windows: nwin,
        grid_unit_bytes: sol.unit,
        seconds: start.elapsed().as_secs_f64(),
        candidates,
        layers: chosen,
    })
}

/// Weights of every block linear.
fn layers_params(cfg: &ModelConfig) -> usize {
    let (h, qd, kvd, ff) = (cfg.hidden_size, cfg.q_dim(), cfg.kv_dim(), cfg.intermediate_size);
    cfg.num_hidden_layers * (2 * qd * h + 2 * kvd * h + 3 * ff * h)
}

/// Runs the full-precision block over `x` (whole windows), handing each of the block's four
/// linear inputs (q/k/v, o, gate/up, down) to `sink(input, values, rows)`; `x` becomes the
/// block's output.
fn forward_block(
    model: &Model,
    layer: &Layer,
    x: &mut [f32],
    seqlen: usize,
    batch_tokens: usize,
    progress: &mut dyn Progress,
    mut sink: impl FnMut(usize, &[f32], usize) -> Result<()>,
) -> Result<()> {
    let cfg = model.config();
    let h = cfg.hidden_size;
    let m = x.len() / h;
    let rows_per_batch = (batch_tokens / seqlen).max(1) * seqlen;
    let be = Cpu::unsplit();
    let mut sc = Scratch::new(&be, cfg, rows_per_batch.min(m))?;
    for s in (0..m).step_by(rows_per_batch) {
        progress.check()?;
        let e = (s + rows_per_batch).min(m);
        let rows = e - s;
        sc.resize(&be, cfg, rows)?;
        let blk = Block::with_backend(&be, cfg, layer);
        let sp: Vec<Span> = Span::fresh(rows / seqlen, seqlen).collect();
        sc.set_positions(&be, model.rope(), &sp)?;
        blk.attn_input(&x[s * h..e * h], &mut sc);
        sink(0, sc.normed(&be), rows)?;
        blk.qkv(&mut sc)?;
        blk.attend_fresh(&sp, &mut sc)?;
        sink(1, sc.attn_out(&be), rows)?;
        blk.o_residual(&mut x[s * h..e * h], None, &mut sc)?;
        blk.mlp_input(&x[s * h..e * h], &mut sc);
        sink(2, sc.normed(&be), rows)?;
        blk.gate_up(&mut sc)?;
        sink(3, sc.mlp_act(&be), rows)?;
        blk.down_residual(&mut x[s * h..e * h], None, &mut sc)?;
    }
    Ok(())
}

/// The Hessians of the block's four inputs on the full-precision block; `x` becomes the
/// block's output.
fn block_hessians(
    model: &Model,
    layer: &Layer,
    x: &mut [f32],
    seqlen: usize,
    batch_tokens: usize,
    progress: &mut dyn Progress,
) -> Result<[Hessian; 4]> {
    let cfg = model.config();
    let (h, qd, ff) = (cfg.hidden_size, cfg.q_dim(), cfg.intermediate_size);
    let p = HessianPrecision::F32Chunks;
    let mut hs = [
        Hessian::with_precision(h, p),
        Hessian::with_precision(qd, p),
        Hessian::with_precision(h, p),
        Hessian::with_precision(ff, p),
    ];
    forward_block(model, layer, x, seqlen, batch_tokens, progress, |i, v, rows| {
        hs[i].add_batch(v, rows).map_err(|e| QuantizeError::input("mixed precision", e.to_string()))
    })?;
    Ok(hs)
}

/// The Hessian of each block linear's input, in [`Layer::linears`] order.
fn input_of(i: usize) -> usize {
    match i {
        0..=2 => 0,
        3 => 1,
        4 | 5 => 2,
        _ => 3,
    }
}

/// Per block linear, the measured gain from its output error to the block's output, relative
/// to the residual stream there: the block is run on `x_in` (the first [`GAIN_WINDOWS`] windows
/// of its input) with that one layer replaced by its RTN 3-bit g128 weights, and the mean
/// squared change of the block output per token is divided by the layer's own mean squared
/// output error per token (`tr(dW H dW^T) / 2`, `H = 2/N X^T X`) and by the mean squared norm
/// of the block's output per token.
#[allow(clippy::too_many_arguments)]
fn block_gains(
    model: &Model,
    layer: &Layer,
    x_in: &[f32],
    hs: &[Hessian; 4],
    base: IntScheme,
    seqlen: usize,
    batch_tokens: usize,
    progress: &mut dyn Progress,
) -> Result<[f64; 7]> {
    let h = model.config().hidden_size;
    let tokens = (x_in.len() / h) as f64;
    let mut reference = x_in.to_vec();
    forward_block(model, layer, &mut reference, seqlen, batch_tokens, progress, |_, _, _| Ok(()))?;
    // Relative to the residual stream there: every later block reads it through an RMSNorm.
    let energy = reference.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / tokens;
    let mut gains = [1f64; 7];
    for (i, gain) in gains.iter_mut().enumerate() {
        let mut probe = layer.clone();
        let (name, lin) = probe.linears_mut().into_iter().nth(i).expect("seven linears");
        let (rows, cols) = (lin.rows(), lin.cols());
        let w = lin.weight().to_f32();
        let mut scheme = candidate_scheme(base, Bits::B3, Some(128));
        if scheme.granularity.validate(cols, Bits::B3).is_err() {
            scheme = candidate_scheme(base, Bits::B3, None);
        }
        let dq = lowbit_core::rtn::quantize(&w, &[rows, cols], scheme)?.dequantize();
        let predicted = lowbit_solvers::output_error(&w, &dq, rows, cols, &hs[input_of(i)])
            .map_err(|e| QuantizeError::Solver { block: 0, layer: name.to_string(), source: e })?
            / 2.0;
        *lin = Linear::new(rows, cols, WeightKind::F32(dq))?;
        let mut out = x_in.to_vec();
        forward_block(model, &probe, &mut out, seqlen, batch_tokens, progress, |_, _, _| Ok(()))?;
        let measured = lowbit_solvers::rtn::squared_error(&out, &reference) / tokens;
        if predicted > 0.0 && energy > 0.0 && measured.is_finite() {
            *gain = measured / predicted / energy;
        }
    }
    Ok(gains)
}

/// Every candidate of every linear of block `b`: exact bytes and output error times the
/// layer's measured gain.
fn block_choices(
    b: usize,
    layer: &Layer,
    hs: &[Hessian; 4],
    gains: &[f64; 7],
    base: IntScheme,
) -> Result<Vec<LayerChoices>> {
    let mut out = vec![];
    for (i, (name, lin)) in layer.linears().into_iter().enumerate() {
        let (rows, cols) = (lin.rows(), lin.cols());
        let hess = &hs[input_of(i)];
        let w = lin.weight().to_f32();
        let mut options = vec![];
        for bits in CANDIDATE_BITS {
            for group in CANDIDATE_GROUPS {
                let scheme = candidate_scheme(base, bits, group);
                if scheme.granularity.validate(cols, bits).is_err() {
                    continue;
                }
                let qt = lowbit_core::rtn::quantize(&w, &[rows, cols], scheme)?;
                let err = lowbit_solvers::output_error(&w, &qt.dequantize(), rows, cols, hess)
                    .map_err(|e| QuantizeError::Solver { block: b, layer: name.to_string(), source: e })?;
                // Rounding can leave a tiny negative from a near-singular H: clamp to 0.
                let cost = f64::max(gains[i] * err / 2.0, 0.0);
                options.push((bits, group, Choice { bytes: qt.nbytes(), cost }));
            }
        }
        out.push(LayerChoices { block: b, name, gain: gains[i], options });
    }
    Ok(out)
}

/// The calibrated windows are required: mixed precision measures sensitivity on them.
pub(crate) fn require_calibration(calib: Option<&CalibSource>) -> Result<()> {
    if calib.is_none() {
        return Err(QuantizeError::input(
            "mixed precision",
            "target_bpw / max_size measure each layer's sensitivity on calibration data: give calibration data",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_are_checked() {
        assert!(check_budget(Some(3.5), Some(10)).unwrap_err().to_string().contains("not both"));
        for t in [f64::NAN, f64::INFINITY, 0.0, -1.0] {
            assert!(check_budget(Some(t), None).unwrap_err().to_string().contains("target_bpw"), "{t}");
        }
        assert!(check_budget(None, Some(0)).is_err());
        assert_eq!(check_budget(Some(3.5), None).unwrap(), Some(Budget::BitsPerWeight(3.5)));
        assert_eq!(check_budget(None, None).unwrap(), None);
    }
}
