//! Quantization-aware refinement of a block (`qat_epochs`): after the base method (RTN, GPTQ,
//! AWQ) has solved the block, its weights are trained with `lowbit-train` so that the block,
//! computed with its weights rounded on the base method's grids (scales and zeros fixed),
//! reproduces the full-precision block's output on the calibration inputs the quantized model
//! feeds it. The saved codes are those of the trained weights on the same grids, which is
//! exactly what the training computed with.

use crate::{QuantizeError, Result};
use lowbit_core::progress::Progress;
use lowbit_core::rtn::GroupParams;
use lowbit_core::{QParams, Scheme, ZeroPoints};
use lowbit_cpu::{Cpu, Linear, WeightKind};
use lowbit_model::block::{Block, Scratch, Span};
use lowbit_model::{Layer, Model, ModelConfig};
use lowbit_train::block::{forward, BlockConfig, BlockGrids, BlockWeights, LinearGrid};
use lowbit_train::train::{reconstruct_block, ReconstructOptions};
use rayon::prelude::*;

/// What the refinement of one block did: the mean output error before and after.
pub(crate) struct Refined {
    pub first_loss: f64,
    pub last_loss: f64,
}

fn train_err(block: usize, e: lowbit_train::TrainError) -> QuantizeError {
    QuantizeError::input("qat", format!("block {block}: {e}"))
}

/// The block sizes, refusing what `lowbit-train` does not model.
pub(crate) fn block_config(cfg: &ModelConfig, layer: &Layer) -> Result<BlockConfig> {
    if layer.q_bias.is_some() || layer.k_bias.is_some() || layer.v_bias.is_some() || layer.q_norm.is_some() {
        return Err(QuantizeError::input(
            "qat",
            "quantization-aware training supports Llama blocks (no q/k/v biases or q/k norms)",
        ));
    }
    if cfg.rope_scaling.is_some() {
        return Err(QuantizeError::input("qat", "quantization-aware training does not support rope_scaling yet"));
    }
    Ok(BlockConfig {
        hidden: cfg.hidden_size,
        ffn: cfg.intermediate_size,
        heads: cfg.num_attention_heads,
        kv_heads: cfg.num_key_value_heads,
        head_dim: cfg.head_dim,
        rope_theta: cfg.rope_theta,
        eps: cfg.rms_norm_eps,
    })
}

fn linears(layer: &Layer) -> [&Linear; 7] {
    [&layer.q_proj, &layer.k_proj, &layer.v_proj, &layer.o_proj, &layer.gate_proj, &layer.up_proj, &layer.down_proj]
}

/// The block's weights as f32 (dequantized where quantized).
pub(crate) fn block_weights(layer: &Layer) -> BlockWeights {
    let [q, k, v, o, gate, up, down] = linears(layer).map(|l| l.weight().to_f32());
    BlockWeights {
        attn_norm: layer.input_norm.clone(),
        mlp_norm: layer.post_attention_norm.clone(),
        q,
        k,
        v,
        o,
        gate,
        up,
        down,
    }
}

/// The grid of a linear the base method quantized: its scheme and group parameters.
fn grid_of(block: usize, lin: &Linear) -> Result<LinearGrid> {
    let unsupported = |what: &str| {
        QuantizeError::input("qat", format!("block {block}: the base method stored {what}; qat trains integer codes"))
    };
    let WeightKind::Quant(q) = lin.weight() else { return Err(unsupported("an unquantized weight")) };
    let (Scheme::Int(scheme), QParams::Int { scales, zeros }) = (q.scheme(), q.params()) else {
        return Err(unsupported("a codebook or quantized statistics"));
    };
    if q.outliers().is_some() {
        return Err(unsupported("sparse outliers"));
    }
    let sym_zero = scheme.bits.symmetric_zero();
    let params = (0..scales.len())
        .map(|i| {
            let zero = match zeros {
                None => Ok(sym_zero),
                Some(ZeroPoints::Codes(z)) => Ok(z[i]),
                Some(ZeroPoints::Float(_)) => Err(unsupported("float zero points")),
            }?;
            Ok(GroupParams { scale: scales.get(i), zero })
        })
        .collect::<Result<Vec<_>>>()?;
    LinearGrid::from_params(lin.rows(), lin.cols(), *scheme, params).map_err(|e| train_err(block, e))
}

/// Trains the block `layer` (already solved by the base method) towards `fp` (its
/// full-precision weights) on the inputs `x_in` (`[windows * seqlen, hidden]`), installs the
/// trained codes and norms, and writes the quantized block's output on `x_in` into `x_out`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn refine(
    cfg: &ModelConfig,
    model: &Model,
    block: usize,
    fp: &BlockWeights,
    layer: &mut Layer,
    x_in: &[f32],
    x_out: &mut [f32],
    seqlen: usize,
    opts: &ReconstructOptions,
    progress: &mut dyn Progress,
) -> Result<Refined> {
    let c = block_config(cfg, layer)?;
    let grids = BlockGrids(
        linears(layer).map(|l| grid_of(block, l)).into_iter().collect::<Result<Vec<_>>>()?.try_into().expect("seven"),
    );
    let init = block_weights(layer);
    let window = seqlen * c.hidden;
    let inputs: Vec<Vec<f32>> = x_in.chunks(window).map(<[f32]>::to_vec).collect();
    progress.check()?;
    let targets: Vec<Vec<f32>> = inputs
        .par_iter()
        .map(|x| forward(&c, fp, x).map(|(y, _)| y))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| train_err(block, e))?;
    progress.check()?;
    let (trained, losses) =
        reconstruct_block(&c, &init, &grids, &inputs, &targets, opts).map_err(|e| train_err(block, e))?;
    progress.check()?;
    let lins = [
        &mut layer.q_proj,
        &mut layer.k_proj,
        &mut layer.v_proj,
        &mut layer.o_proj,
        &mut layer.gate_proj,
        &mut layer.up_proj,
        &mut layer.down_proj,
    ];
    let weights = [&trained.q, &trained.k, &trained.v, &trained.o, &trained.gate, &trained.up, &trained.down];
    for ((lin, grid), w) in lins.into_iter().zip(&grids.0).zip(weights) {
        let qt = grid.qtensor(w).map_err(|e| train_err(block, e))?;
        *lin = Linear::new(lin.rows(), lin.cols(), WeightKind::Quant(qt))?;
    }
    layer.input_norm = trained.attn_norm;
    layer.post_attention_norm = trained.mlp_norm;
    block_forward(cfg, model, layer, x_in, x_out, seqlen)?;
    Ok(Refined { first_loss: losses.first().copied().unwrap_or(0.0), last_loss: losses.last().copied().unwrap_or(0.0) })
}

/// `x_out = block(x_in)` with lowbit-model's block (the kernels the saved model runs), window by
/// window from an empty context.
fn block_forward(
    cfg: &ModelConfig,
    model: &Model,
    layer: &Layer,
    x_in: &[f32],
    x_out: &mut [f32],
    seqlen: usize,
) -> Result<()> {
    let h = cfg.hidden_size;
    let be = Cpu::unsplit();
    let mut sc = Scratch::new(&be, cfg, seqlen)?;
    let spans: Vec<Span> = Span::fresh(1, seqlen).collect();
    x_out.copy_from_slice(x_in);
    for x in x_out.chunks_mut(seqlen * h) {
        let blk = Block::with_backend(&be, cfg, layer);
        sc.resize(&be, cfg, x.len() / h)?;
        sc.set_positions(&be, model.rope(), &spans)?;
        blk.attn_input(x, &mut sc);
        blk.qkv(&mut sc)?;
        blk.attend_fresh(&spans, &mut sc)?;
        blk.o_residual(x, None, &mut sc)?;
        blk.mlp_input(x, &mut sc);
        blk.gate_up(&mut sc)?;
        blk.down_residual(x, None, &mut sc)?;
    }
    Ok(())
}
