//! Quantization-aware refinement of a block (`qat_epochs`): after the base method (RTN, GPTQ,
//! AWQ) has solved the block, its weights are trained with `lowbit-train` so that the block,
//! computed with its weights rounded on the base method's grids (scales and zeros fixed),
//! reproduces the full-precision block's output on the calibration inputs the quantized model
//! feeds it. The saved codes are those of the trained weights on the same grids, which is
//! exactly what the training computed with.

use crate::{QuantizeError, Result};
use lowbit_core::clock::Instant;
use lowbit_core::progress::phase;
use lowbit_core::progress::Progress;
use lowbit_core::rtn::GroupParams;
use lowbit_core::{QParams, Scheme, ZeroPoints};
use lowbit_cpu::{Cpu, Linear, WeightKind};
use lowbit_model::block::{Block, Scratch, Span};
use lowbit_model::BlockReader;
use lowbit_model::{Layer, Model, ModelConfig};
use lowbit_train::block::{forward, BlockConfig, BlockWeights};
use lowbit_train::distill::{distill_loss, distill_scales, DistillOptions, DistillState, Head, QuantBlock};
use lowbit_train::grid::{BlockGrids, LinearGrid};
use lowbit_train::train::{reconstruct_block, ReconstructOptions};
use rayon::prelude::*;

/// What the refinement of one block did: the mean output error over the first epoch (from the
/// base method's result on) and of the block as saved.
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

/// The grids the base method chose for `layer`'s seven linears.
fn block_grids(block: usize, layer: &Layer) -> Result<BlockGrids> {
    let grids = linears(layer).map(|l| grid_of(block, l)).into_iter().collect::<Result<Vec<_>>>()?;
    Ok(BlockGrids(grids.try_into().expect("seven linears")))
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
    let mut grids = block_grids(block, layer)?;
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
        reconstruct_block(&c, &init, &mut grids, &inputs, &targets, opts).map_err(|e| train_err(block, e))?;
    progress.check()?;
    let weights = [&trained.q, &trained.k, &trained.v, &trained.o, &trained.gate, &trained.up, &trained.down];
    for (((_, lin), grid), w) in layer.linears_mut().into_iter().zip(&grids.0).zip(weights) {
        let qt = grid.qtensor(w).map_err(|e| train_err(block, e))?;
        *lin = Linear::new(lin.rows(), lin.cols(), WeightKind::Quant(qt))?;
    }
    layer.input_norm = trained.attn_norm;
    layer.post_attention_norm = trained.mlp_norm;
    block_forward(cfg, model, layer, x_in, x_out, seqlen)?;
    // The saved block's error, from the output the next block starts from.
    let last_loss = x_out.chunks(window).zip(&targets).map(|(y, t)| lowbit_train::train::mse(y, t)).sum::<f64>()
        / targets.len() as f64;
    Ok(Refined { first_loss: losses.first().copied().unwrap_or(0.0), last_loss })
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

/// Windows on which the end-to-end stage measures its KL before and after.
const KL_PROBE_WINDOWS: usize = 4;

/// What the end-to-end stage did: the mean KL per position on its first windows before and
/// after (on resume: from where it resumed), and its steps.
pub(crate) struct Distilled {
    pub probe_windows: usize,
    pub first_kl: f64,
    pub last_kl: f64,
    pub steps: usize,
}

/// Settings of the end-to-end stage.
pub(crate) struct DistillRun<'a> {
    /// The windows' token ids (`[windows * seqlen]`) it trains on.
    pub tokens: &'a [u32],
    pub seqlen: usize,
    pub opts: DistillOptions,
    /// Where its state is saved (`<out>.partial/distill.safetensors`) and resumed from.
    pub state_path: Option<std::path::PathBuf>,
    pub resume: bool,
}

/// The end-to-end stage on `model` (all blocks quantized): tunes every linear's scales, codes
/// fixed, towards the next-token distributions of the full-precision blocks read again from
/// `fp_blocks`, then installs the new scales. The teacher and the student share the embedding,
/// the final norm and the LM head as the run stores them.
pub(crate) fn distill(
    model: &mut Model,
    fp_blocks: &mut BlockReader<'_>,
    run: &DistillRun<'_>,
    progress: &mut dyn Progress,
) -> Result<Distilled> {
    let cfg = model.config().clone();
    let nblocks = cfg.num_hidden_layers;
    let c = block_config(&cfg, &model.layers()[0])?;
    let h = cfg.hidden_size;
    let mut embedded = vec![0f32; run.tokens.len() * h];
    model.embed(run.tokens, &mut embedded)?;
    let inputs: Vec<Vec<f32>> = embedded.chunks(run.seqlen * h).map(<[f32]>::to_vec).collect();
    drop(embedded);
    // The teacher: the full-precision blocks, one at a time.
    let mut teach = phase(progress, "teacher", nblocks as u64);
    let mut teacher = inputs.clone();
    for b in 0..nblocks {
        teach.check()?;
        let fp = block_weights(&fp_blocks.block(b)?);
        teacher = teacher
            .par_iter()
            .map(|x| forward(&c, &fp, x).map(|(y, _)| y))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| train_err(b, e))?;
        teach.advance(1);
    }
    drop(teach);
    let mut blocks = model
        .layers()
        .iter()
        .enumerate()
        .map(|(b, layer)| quant_block(b, layer))
        .collect::<Result<Vec<QuantBlock>>>()?;
    let head_weight = model.lm_head().weight().to_f32();
    let norm = model.final_norm().clone();
    let head = Head { norm: &norm, weight: &head_weight, vocab: cfg.vocab_size };
    let resume = match (&run.state_path, run.resume) {
        (Some(p), true) if p.is_file() => Some(load_state(p, &mut blocks)?),
        _ => None,
    };
    // Before and after on a few windows: a full pass costs a quarter of a training epoch.
    let probe = inputs.len().min(KL_PROBE_WINDOWS);
    let probe_kl = |blocks: &[QuantBlock]| {
        distill_loss(&c, blocks, &head, &inputs[..probe], &teacher[..probe]).map_err(|e| train_err(0, e))
    };
    let first_kl = probe_kl(&blocks)?;
    let steps_per_epoch = inputs.len().div_ceil(run.opts.batch.max(1));
    let mut bar = phase(progress, "distill", (run.opts.epochs * steps_per_epoch) as u64);
    bar.advance(resume.as_ref().map_or(0, |s| s.step) as u64);
    let mut last_save = Instant::now();
    let mut window_kl = Vec::new();
    let mut on_step = |state: &DistillState, blocks: &[QuantBlock], total: usize| -> lowbit_train::Result<()> {
        bar.advance(1);
        let epoch = state.loss_sums.len() - 1;
        let done_in_epoch = state.step - epoch * steps_per_epoch;
        window_kl.push(state.loss_sums[epoch] / (done_in_epoch * run.opts.batch.max(1) * run.seqlen) as f64);
        bar.metric("kl", *window_kl.last().expect("pushed"));
        let stop = bar.check();
        if let Some(p) = &run.state_path {
            if (stop.is_err() || last_save.elapsed() >= crate::pipeline::CHECKPOINT_INTERVAL) && state.step < total {
                save_state(p, state, blocks).map_err(|e| lowbit_train::TrainError::Interrupted(e.to_string()))?;
                last_save = Instant::now();
            }
        }
        stop.map_err(|e| lowbit_train::TrainError::Interrupted(e.to_string()))
    };
    let result = distill_scales(&c, &mut blocks, &head, &inputs, &teacher, &run.opts, resume, &mut on_step);
    drop(bar);
    if let Err(lowbit_train::TrainError::Interrupted(_)) = &result {
        progress.check()?;
    }
    result.map_err(|e| train_err(0, e))?;
    let last_kl = probe_kl(&blocks)?;
    for (layer, block) in model.layers_mut().iter_mut().zip(&blocks) {
        for (((_, lin), grid), codes) in layer.linears_mut().into_iter().zip(&block.grids.0).zip(&block.codes) {
            let qt = grid.qtensor_of_codes(codes).map_err(|e| train_err(0, e))?;
            *lin = Linear::new(lin.rows(), lin.cols(), WeightKind::Quant(qt))?;
        }
    }
    Ok(Distilled { probe_windows: probe, first_kl, last_kl, steps: run.opts.epochs * steps_per_epoch })
}

/// A quantized block's codes, grids and norms.
fn quant_block(b: usize, layer: &Layer) -> Result<QuantBlock> {
    let grids = block_grids(b, layer)?;
    let codes = linears(layer).map(|l| match l.weight() {
        WeightKind::Quant(q) => match q.scheme() {
            Scheme::Int(s) => lowbit_core::pack::unpack(q.codes(), s.bits, l.rows() * l.cols()),
            _ => unreachable!("block_grids accepted only integer codes"),
        },
        _ => unreachable!("block_grids accepted only quantized weights"),
    });
    let [a, b2, c, d, e, f, g] = codes;
    Ok(QuantBlock {
        codes: [a?, b2?, c?, d?, e?, f?, g?],
        grids,
        attn_norm: layer.input_norm.clone(),
        mlp_norm: layer.post_attention_norm.clone(),
    })
}

/// Saves the stage's state: every master scale, the optimizer's moments, the step and losses.
fn save_state(path: &std::path::Path, state: &DistillState, blocks: &[QuantBlock]) -> Result<()> {
    let f32_tensor = |name: String, v: &[f32]| -> lowbit_core::io::RawTensor {
        (name, safetensors::tensor::Dtype::F32, vec![v.len()], bytemuck::cast_slice(v).to_vec())
    };
    let mut tensors = vec![];
    for (b, block) in blocks.iter().enumerate() {
        for (l, grid) in block.grids.0.iter().enumerate() {
            tensors.push(f32_tensor(format!("scale.{b}.{l}"), grid.scales()));
        }
    }
    for (k, (m, v)) in state.adam.m.iter().zip(&state.adam.v).enumerate() {
        tensors.push(f32_tensor(format!("adam_m.{k}"), m));
        tensors.push(f32_tensor(format!("adam_v.{k}"), v));
    }
    let meta = std::collections::BTreeMap::from([
        ("step".to_string(), state.step.to_string()),
        ("adam_step".to_string(), state.adam.step.to_string()),
        ("loss_sums".to_string(), serde_json::to_string(&state.loss_sums).expect("f64s")),
    ]);
    lowbit_core::io::write_atomic(path, &lowbit_core::io::serialize(&tensors, &meta)?)?;
    Ok(())
}

/// Loads [`save_state`]'s file into `blocks`' master scales and returns the state.
fn load_state(path: &std::path::Path, blocks: &mut [QuantBlock]) -> Result<DistillState> {
    let corrupt = |what: String| QuantizeError::input("resume", format!("{} is unusable: {what}", path.display()));
    let bytes = std::fs::read(path).map_err(|e| QuantizeError::io(path, e))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(e.to_string()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| corrupt(e.to_string()))?;
    let vector = |name: &str, len: usize| -> Result<Vec<f32>> {
        let t = st.tensor(name).map_err(|e| corrupt(e.to_string()))?;
        let v: Vec<f32> = t.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        if v.len() != len {
            return Err(corrupt(format!("{name} has {} values, expected {len}", v.len())));
        }
        Ok(v)
    };
    let mut adam = lowbit_train::train::AdamW { weight_decay: 0.0, ..lowbit_train::train::AdamW::new(0.0) };
    let mut k = 0;
    for (b, block) in blocks.iter_mut().enumerate() {
        for (l, grid) in block.grids.0.iter_mut().enumerate() {
            let n = grid.scales().len();
            *grid.masters_mut().0 = vector(&format!("scale.{b}.{l}"), n)?;
            grid.sync();
            if st.tensor(&format!("adam_m.{k}")).is_ok() {
                adam.m.push(vector(&format!("adam_m.{k}"), n)?);
                adam.v.push(vector(&format!("adam_v.{k}"), n)?);
            }
            k += 1;
        }
    }
    let meta = meta.metadata().clone().unwrap_or_default();
    let field = |k: &str| meta.get(k).cloned().ok_or_else(|| corrupt(format!("no {k}")));
    adam.step = field("adam_step")?.parse().map_err(|_| corrupt("adam_step".into()))?;
    let step = field("step")?.parse().map_err(|_| corrupt("step".into()))?;
    let loss_sums = serde_json::from_str(&field("loss_sums")?).map_err(|e| corrupt(e.to_string()))?;
    Ok(DistillState { step, loss_sums, adam })
}
