//! The layer-by-layer pipeline (GPTQ's scheme, made true-sequential and single-pass).
//!
//! Block 0's inputs are computed for all calibration windows (`x`, `[nsamples * seqlen, hidden]`).
//! Then, per block and per group of linear layers that share an input, in execution order:
//!
//! 1. q/k/v: statistics of `input_layernorm(x)`; solve; q, k, v become quantized.
//! 2. o: run attention **with the quantized q/k/v**; statistics of the heads' output; solve.
//! 3. gate/up: `x += o(attn)` with the quantized o; statistics of `post_attention_layernorm(x)`.
//! 4. down: `silu(gate) * up` with the quantized gate/up; statistics; solve; `x += down(act)`.
//!
//! So one pass over the calibration data per block yields both the statistics of every layer
//! (on activations that already carry the upstream quantization error) and the block's output,
//! which is the next block's input. The reference GPTQ runs every block twice and builds a
//! Hessian per linear layer; here one Hessian per distinct input (4 per block), built with f32
//! rank-k updates summed in f64 (`HessianPrecision::F32Chunks`).
//!
//! Memory: the embedding, norms and LM head; one block's weights at a time, streamed from the
//! memory-mapped checkpoint (blocks already solved are kept packed); `x`; one block's
//! intermediate activations (the attention output, later the MLP activation, at most
//! `tokens * intermediate_size` values, held in f16, see `stash`); the Hessians.

use crate::calib::{calibration_windows, int8_sampler, CalibSource};
use crate::checkpoint::{Checkpoint, CheckpointState, Saver};
use crate::mixed::{allocate_model, Allocation, Budget};
use crate::options::{peak_rss_bytes, LayerStat, QuantizeOptions, QuantizeReport};
use crate::output::{write_output, write_output_to_memory};
use crate::stash::Stash;
use crate::{QuantizeError, Result};
use lowbit_core::clock::Instant;
use lowbit_core::progress::{phase, Progress};
use lowbit_core::{QParams, QTensor, Scales, Scheme};
use lowbit_cpu::Cpu;
use lowbit_cpu::{Linear, WeightKind};
use lowbit_model::block::{Block, Scratch, Span};
use lowbit_model::{BlockReader, Layer, LoadOptions, Model, ModelConfig, ModelError};
use lowbit_solvers::awq::HeadTie;
use lowbit_solvers::{FoldTarget, Group, GroupLayer, QuantMethod, Role, SolvedLayer, Statistics};
use lowbit_train::train::ReconstructOptions;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Quantizes every linear layer inside the transformer blocks of the model at `model_path` (an HF
/// directory or a `.gguf`) and writes a lowbit checkpoint directory to `out` (atomically: on any
/// error no `out` appears). The token embedding and the LM head are stored as `opts.embed` and
/// `opts.lm_head` say (int8 per channel by default; one tensor when the model ties them); norms
/// stay f32.
///
/// Reports phases `load` and `calibrate` (data-free sampling), `blocks` (metric `loss`, the
/// block's mean layer loss) and `write` to `progress`, and stops at its cancellation points (at
/// least once per calibration batch) with `ModelError::Cancelled`, keeping the last checkpoint
/// (after the run's first block, then at most every [`CHECKPOINT_INTERVAL`]) for `resume`.
///
/// ```no_run
/// use lowbit_core::NoProgress;
/// use lowbit_quantize::{quantize_model, spec::OptionValue, CalibSource, QuantizeOptions};
/// use std::path::Path;
/// // The same option names as Python's keywords and the CLI's flags.
/// let mut opts = QuantizeOptions::from_pairs(&[
///     ("method".into(), OptionValue::Str("gptq".into())),
///     ("bits".into(), OptionValue::Int(4)),
///     ("act_order".into(), OptionValue::Bool(true)),
/// ])?;
/// opts.calib = Some(CalibSource::from_path("wikitext2/valid.txt"));
/// let report = quantize_model(Path::new("model.gguf"), Path::new("out"), &opts, &mut NoProgress)?;
/// println!("{:.3} bits per weight", report.bits_per_weight);
/// # Ok::<(), lowbit_quantize::QuantizeError>(())
/// ```
pub fn quantize_model(
    model_path: &Path,
    out: &Path,
    opts: &QuantizeOptions,
    progress: &mut dyn Progress,
) -> Result<QuantizeReport> {
    opts.validate()?;
    if out.exists() && std::fs::read_dir(out).map_err(|e| QuantizeError::io(out, e))?.next().is_some() {
        return Err(QuantizeError::Io {
            path: out.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "output directory exists and is not empty"),
        });
    }
    let ckpt = Checkpoint::new(partial_dir(out));
    let mut stopped = false;
    // The blocks stream in one at a time from the (memory-mapped) checkpoint.
    let mut target = Target {
        model_path: Some(model_path),
        input_bytes: path_bytes(model_path),
        out: out.display().to_string(),
        ckpt: Some(&ckpt),
        write: &mut |model, report| write_output(model, out, report),
    };
    let result = Model::open_blocks(model_path, &LoadOptions::default(), |model, blocks| {
        run(model, blocks, &mut target, opts, progress, &mut stopped)
    });
    match &result {
        Ok(_) => ckpt.remove(),
        Err(_) if stopped => {}
        // Interrupted: the blocks already checkpointed are kept for `resume`.
        Err(QuantizeError::Model(ModelError::Cancelled(_))) => {}
        Err(_) => ckpt.remove(),
    }
    result
}

/// [`quantize_model`] with the model file in memory (a GGUF or a single-file lowbit model, see
/// [`lowbit_model::bytes`]) and the output directory's files returned in memory (name -> bytes, the
/// same bytes `quantize_model` writes): the browser's entry, where there is no file system.
/// No checkpoints (so no `resume`), and no data-free calibration (it reloads the model).
pub fn quantize_bytes(
    input: Vec<u8>,
    opts: &QuantizeOptions,
    progress: &mut dyn Progress,
) -> Result<(BTreeMap<String, Vec<u8>>, QuantizeReport)> {
    opts.validate()?;
    if opts.resume || opts.stop_after_block.is_some() {
        return Err(QuantizeError::input("quantize", "resume and stop_after_block need an output directory"));
    }
    if matches!(opts.calib, Some(CalibSource::DataFree)) && opts.method.solver().calibrated() {
        return Err(QuantizeError::input(
            "quantize",
            "data-free calibration needs the model file: give calibration text",
        ));
    }
    let mut files = BTreeMap::new();
    let mut target = Target {
        model_path: None,
        input_bytes: input.len() as u64,
        out: "<in memory>".into(),
        ckpt: None,
        write: &mut |model, report| {
            files = write_output_to_memory(model, report)?;
            Ok(files.values().map(|f| f.len() as u64).sum())
        },
    };
    let mut stopped = false;
    let report = Model::open_blocks_from_bytes(input, &LoadOptions::default(), |model, blocks| {
        run(model, blocks, &mut target, opts, progress, &mut stopped)
    })?;
    Ok((files, report))
}

/// Where a run reads its model and puts its results.
struct Target<'a> {
    /// The model's path (data-free calibration reloads it); `None` for a model in memory.
    model_path: Option<&'a Path>,
    /// The input's size, for the manifest.
    input_bytes: u64,
    /// The output, for the report.
    out: String,
    /// Checkpoints: none for a model in memory.
    ckpt: Option<&'a Checkpoint>,
    /// Writes the quantized model; returns its bytes.
    write: &'a mut dyn FnMut(&Model, &QuantizeReport) -> Result<u64>,
}

/// Least time between two checkpoints after the first block: each writes the blocks done and
/// the activations (`tokens x hidden` f32, 151 MB for the protocol's calibration), which cost a
/// tenth of the run's time when written after every block. A killed run loses at most this much.
pub const CHECKPOINT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// Where the checkpoint of a run writing `out` lives: `<out>.partial`.
pub fn partial_dir(out: &Path) -> PathBuf {
    let mut s = out.as_os_str().to_owned();
    s.push(".partial");
    PathBuf::from(s)
}

struct Ctx<'a> {
    opts: &'a QuantizeOptions,
    scheme: Scheme,
    /// Mixed precision: each layer's scheme.
    alloc: Option<Allocation>,
    cfg: ModelConfig,
    seqlen: usize,
    notes: Vec<String>,
}

fn run(
    mut model: Model,
    blocks: &mut BlockReader<'_>,
    target: &mut Target<'_>,
    opts: &QuantizeOptions,
    progress: &mut dyn Progress,
    stopped: &mut bool,
) -> Result<QuantizeReport> {
    let start = Instant::now();
    let scheme = opts.scheme()?;
    let cfg = model.config().clone();
    for (what, cols) in
        [("hidden_size", cfg.hidden_size), ("q_dim", cfg.q_dim()), ("intermediate_size", cfg.intermediate_size)]
    {
        let fits = match scheme {
            Scheme::Int(s) => s.granularity.validate(cols, s.bits).map_err(|e| e.to_string()),
            // Whole blocks per row: the absmax blocks then never straddle two output channels.
            Scheme::Codebook(c) if cols % c.block_size != 0 => {
                Err(format!("{cols} is not a multiple of the block size {}", c.block_size))
            }
            Scheme::Codebook(_) | Scheme::RowLut(_) => Ok(()),
        };
        fits.map_err(|e| {
            QuantizeError::input("quantize", format!("group size does not fit the model's {what} of {cols}: {e}"))
        })?;
    }
    // Before calibration: the blocks then calibrate on what the quantized embedding emits.
    crate::roles::apply(&mut model, opts.embed, opts.lm_head)?;
    let nblocks = cfg.num_hidden_layers;
    let before = nblocks * f32_block_linear_bytes(&cfg);
    let params = opts.params_json();
    let budget = opts.budget()?;
    let mut ctx = Ctx { opts, scheme, alloc: None, cfg: cfg.clone(), seqlen: opts.seqlen, notes: vec![] };

    // Calibration (mixed precision measures sensitivity on it, whatever the method).
    let calib_start = Instant::now();
    let calibrated = opts.calibrated();
    let (windows, calib_sha) = if !calibrated && budget.is_none() {
        (Vec::new(), None)
    } else {
        let calib = opts.calib.as_ref().ok_or_else(|| QuantizeError::input("quantize", "no calibration data"))?;
        let w = if matches!(calib, CalibSource::DataFree) {
            // Sampling runs every block: it gets the whole model (an int8 copy, a quarter of the
            // bytes per step), dropped before the blocks stream in.
            let model_path = target
                .model_path
                .ok_or_else(|| QuantizeError::input("quantize", "data-free calibration needs the model file"))?;
            let whole = int8_sampler(Model::load_with_progress(model_path, &LoadOptions::default(), progress)?)?;
            calibration_windows(&whole, calib, opts.nsamples, opts.seqlen, opts.seed, progress)?
        } else {
            calibration_windows(&model, calib, opts.nsamples, opts.seqlen, opts.seed, progress)?
        };
        let sha = sha256_hex(&w.iter().flat_map(|t| t.to_le_bytes()).collect::<Vec<u8>>());
        (w, Some(sha))
    };
    let calib_seconds = calib_start.elapsed().as_secs_f64();

    if let (Some(budget), Scheme::Int(base)) = (budget, scheme) {
        // The sensitivity pass reads the full-precision blocks again: the model must be a file.
        let model_path = target.model_path.ok_or_else(|| {
            QuantizeError::input("quantize", "a byte budget (target_bpw, max_size) needs the model on disk")
        })?;
        let other = match budget {
            Budget::MaxSize(_) => other_bytes(&model, Path::new(&target.out), &cfg)?,
            Budget::BitsPerWeight(_) => 0,
        };
        // The blocks are read once each (the reader hands out their weights): the sensitivity
        // pass reads its own from a second opening of the checkpoint; it embeds the windows with
        // the run's model, quantized embedding included.
        let alloc = Model::open_blocks(model_path, &LoadOptions::default(), |_, fp_blocks| {
            allocate_model(&model, fp_blocks, &windows, opts.seqlen, opts.batch_tokens, base, budget, other, progress)
        })?;
        ctx.alloc = Some(alloc);
    }

    // Resume or start.
    let fingerprint = sha256_hex(
        serde_json::json!({
            "params": params, "calib": calib_sha, "model": target.model_path.map(|p| p.display().to_string()),
            "config": cfg.to_hf_json(),
        })
        .to_string()
        .as_bytes(),
    );
    let h = cfg.hidden_size;
    let mut layers_stats: Vec<LayerStat> = vec![];
    let mut first = 0;
    let mut x: Vec<f32> = vec![];
    if calibrated {
        let resumed = match target.ckpt {
            Some(ckpt) if opts.resume => ckpt.load(&fingerprint, &mut model, |b| Ok(blocks.block(b)?))?,
            _ => None,
        };
        match resumed {
            Some((state, saved_x)) => {
                first = state.next_block;
                layers_stats = state.layers;
                ctx.notes = state.notes;
                x = saved_x;
            }
            None => {
                target.ckpt.inspect(|c| c.remove());
                x = vec![0f32; windows.len() * h];
                model.embed(&windows, &mut x)?;
            }
        }
    }

    let mut saver = Saver::new(first);
    let mut last_save = Instant::now();
    let blocks_start = Instant::now();
    let mut done = phase(progress, "blocks", nblocks as u64);
    done.advance(first as u64);
    for b in first..nblocks {
        done.check()?;
        let mut layer = blocks.block(b)?;
        // Quantization-aware refinement starts from the method's result: keep what it needs.
        let qat = match opts.qat_epochs {
            Some(_) => {
                Some((crate::qat::block_config(&cfg, &layer).map(|_| crate::qat::block_weights(&layer))?, x.clone()))
            }
            None => None,
        };
        let stats = if opts.method.solver().calibrated() {
            quantize_block_calibrated(&mut ctx, &model, b, &mut layer, &mut x, &mut *done)?
        } else {
            quantize_block_alone(&ctx, b, &mut layer, &mut *done)?
        };
        if let (Some((fp, x_in)), Some(epochs)) = (qat, opts.qat_epochs) {
            let grid_lr = (opts.qat_scale_lr > 0.0).then_some(opts.qat_scale_lr);
            let train =
                ReconstructOptions { epochs, lr: opts.qat_lr, weight_decay: 0.0, grid_lr, batch: opts.qat_batch };
            let r =
                crate::qat::refine(&cfg, &model, b, &fp, &mut layer, &x_in, &mut x, ctx.seqlen, &train, &mut *done)?;
            ctx.notes.push(format!("block {b}: qat output error {:.4e} -> {:.4e}", r.first_loss, r.last_loss));
            done.metric("qat loss", r.last_loss);
        }
        let loss = stats.iter().map(|s| s.loss).sum::<f64>() / stats.len().max(1) as f64;
        layers_stats.extend(stats);
        if calibrated {
            if let Some((token, channel)) = first_non_finite(&x, h) {
                return Err(QuantizeError::NonFiniteActivation {
                    block: b,
                    what: "block output".into(),
                    token,
                    channel,
                });
            }
            // The run's first block, then at most every CHECKPOINT_INTERVAL, and where it stops.
            // The end-to-end stage resumes from the last block's checkpoint.
            let distill = opts.qat_distill_epochs.is_some();
            let due = b == first
                || last_save.elapsed() >= CHECKPOINT_INTERVAL
                || opts.stop_after_block == Some(b)
                || (distill && b + 1 == nblocks);
            if let (true, Some(ckpt)) = (due && (b + 1 < nblocks || distill), target.ckpt) {
                let state = CheckpointState {
                    fingerprint: fingerprint.clone(),
                    next_block: b + 1,
                    layers: layers_stats.clone(),
                    notes: ctx.notes.clone(),
                };
                saver.save(ckpt, state, model.layers(), &layer, &x)?;
                last_save = Instant::now();
            }
        }
        model.push_layer(layer)?;
        done.metric("loss", loss);
        done.advance(1);
        if opts.stop_after_block == Some(b) && b + 1 < nblocks {
            *stopped = true;
            return Err(QuantizeError::input(
                "quantize",
                format!("stopped after block {b} as asked (stop_after_block); run again with resume to continue"),
            ));
        }
    }
    saver.finish()?;
    drop(x);
    drop(done);
    if let Some(epochs) = opts.qat_distill_epochs {
        // The teacher's blocks are read again from the file (one at a time).
        let model_path = target.model_path.ok_or_else(|| {
            QuantizeError::input("qat", "the end-to-end stage (qat_distill_epochs) needs the model on disk")
        })?;
        let n = opts.qat_distill_windows.min(windows.len() / ctx.seqlen);
        let run = crate::qat::DistillRun {
            tokens: &windows[..n * ctx.seqlen],
            seqlen: ctx.seqlen,
            opts: lowbit_train::distill::DistillOptions {
                epochs,
                lr: opts.qat_distill_lr,
                batch: opts.qat_batch,
                tape_budget: lowbit_train::distill::TAPE_BUDGET,
            },
            state_path: target.ckpt.map(|c| c.dir().join("distill.safetensors")),
            resume: opts.resume,
        };
        let d = Model::open_blocks(model_path, &LoadOptions::default(), |_, fp_blocks| {
            crate::qat::distill(&mut model, fp_blocks, &run, progress)
        })?;
        ctx.notes.push(format!(
            "qat distillation: KL to the full-precision model {:.4e} -> {:.4e} per position on its first {} windows ({} windows, {} steps)",
            d.first_kl, d.last_kl, d.probe_windows, n, d.steps
        ));
    }
    let quantize_seconds = blocks_start.elapsed().as_secs_f64();

    let _write = phase(progress, "write", 0);
    let size = model.stored_size();
    let mut report = QuantizeReport {
        out: target.out.clone(),
        params,
        layers: layers_stats,
        calib_sha256: calib_sha,
        calib_tokens: windows.len(),
        calib_seconds,
        quantize_seconds,
        wall_seconds: 0.0,
        peak_rss_bytes: None,
        linear_bytes_before: before,
        linear_bytes_after: size.linear_bytes,
        bits_per_weight: size.linear_bits_per_weight(),
        out_bytes: 0,
        input_bytes: target.input_bytes,
        num_params: size.params,
        tensor_bytes: size.tensor_bytes,
        bits_per_weight_all: size.bits_per_weight(),
        embed_bytes: size.embed_bytes,
        lm_head_bytes: size.lm_head_bytes,
        resumed_from_block: first,
        notes: ctx.notes,
        allocation: ctx.alloc,
    };
    report.wall_seconds = start.elapsed().as_secs_f64();
    report.peak_rss_bytes = peak_rss_bytes();
    report.out_bytes = (target.write)(&model, &report)?;
    report.wall_seconds = start.elapsed().as_secs_f64();
    if let Some(a) = &report.allocation {
        if a.predicted_linear_bytes != report.linear_bytes_after {
            // The candidates' bytes come from the writer's own tensors: a mismatch is a bug.
            return Err(QuantizeError::input(
                "mixed precision",
                format!(
                    "stored {} bytes of block linears, the allocation predicted {}",
                    report.linear_bytes_after, a.predicted_linear_bytes
                ),
            ));
        }
    }
    Ok(report)
}

/// What the output directory holds besides the block linears (under `max_size`): the model as
/// it is now (embedding, LM head, final norm, config, tokenizer), saved once to a scratch
/// directory beside `out` and measured, plus the blocks' norms.
fn other_bytes(model: &Model, out: &Path, cfg: &ModelConfig) -> Result<u64> {
    let mut scratch = out.as_os_str().to_owned();
    scratch.push(".sizing");
    let scratch = PathBuf::from(scratch);
    let _ = std::fs::remove_dir_all(&scratch);
    let bytes = model.save_with(&scratch, &lowbit_model::SaveExtras::default());
    let _ = std::fs::remove_dir_all(&scratch);
    let norms = cfg.num_hidden_layers * 2 * cfg.hidden_size * 4;
    Ok(bytes? + norms as u64)
}

/// Bytes of a file, or of the files of a directory (0 where unreadable: it was just read).
fn path_bytes(path: &Path) -> u64 {
    let len = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    match std::fs::read_dir(path) {
        Ok(dir) => dir.flatten().map(|e| e.path()).filter(|p| p.is_file()).map(|p| len(&p)).sum(),
        Err(_) => len(path),
    }
}

fn first_non_finite(x: &[f32], cols: usize) -> Option<(usize, usize)> {
    lowbit_core::first_non_finite(x).map(|i| (i / cols, i % cols))
}

/// Bytes of one block's seven linear layers in f32.
fn f32_block_linear_bytes(cfg: &ModelConfig) -> usize {
    let (h, qd, kvd, ff) = (cfg.hidden_size, cfg.q_dim(), cfg.kv_dim(), cfg.intermediate_size);
    4 * (2 * qd * h + 2 * kvd * h + 3 * ff * h)
}

fn set_quant(lin: &mut Linear, qt: QTensor) -> Result<()> {
    *lin = Linear::new(lin.rows(), lin.cols(), WeightKind::Quant(qt))?;
    Ok(())
}

/// Installs a solved layer; W8A8 layers run int8 activations from here on (with LLM.int8()'s
/// decomposition where the method has an outlier threshold), as the saved model will, so the
/// rest of the block and the next blocks calibrate on what that model computes.
fn install(lin: &mut Linear, solved: SolvedLayer, int8_activations: bool, method: &dyn QuantMethod) -> Result<()> {
    set_quant(lin, solved.qtensor)?;
    if int8_activations {
        match method.int8_outlier_threshold() {
            Some(t) => lin.enable_int8_decomposition(t)?,
            None => lin.enable_int8_activations()?,
        }
    }
    Ok(())
}

fn solver_err(block: usize, what: &str, e: lowbit_solvers::SolverError) -> QuantizeError {
    QuantizeError::Solver { block, layer: what.to_string(), source: e }
}

fn stat(block: usize, name: &str, solved: &SolvedLayer) -> LayerStat {
    let r = &solved.report;
    LayerStat {
        block,
        name: name.to_string(),
        loss: r.loss,
        damping: r.damping.map(|d| d.relative),
        damping_raises: r.damping.map_or(0, |d| d.raises),
        dead_inputs: r.dead_inputs,
        alpha: solved.alpha,
        seconds: r.seconds,
    }
}

/// The role of each linear layer name of a block.
fn role(name: &str) -> Role {
    match name.rsplit('.').next().unwrap_or(name) {
        "q_proj" => Role::Query,
        "k_proj" => Role::Key,
        "v_proj" => Role::Value,
        "o_proj" => Role::AttnOut,
        "gate_proj" => Role::Gate,
        "up_proj" => Role::Up,
        _ => Role::Down,
    }
}

/// A method without calibration (RTN): every layer of the block alone, from its weights.
fn quantize_block_alone(ctx: &Ctx, b: usize, layer: &mut Layer, progress: &mut dyn Progress) -> Result<Vec<LayerStat>> {
    let method = ctx.opts.method.solver();
    let stats = method.statistics(0, ctx.opts.calib_shape());
    let mut out = vec![];
    for (name, lin) in layer.linears_mut() {
        progress.check()?;
        let w = lin.weight().to_f32();
        let group = Group {
            layers: vec![GroupLayer { role: role(name), w: &w, rows: lin.rows() }],
            cols: lin.cols(),
            fold: FoldTarget::None,
            scheme: layer_scheme(ctx, b, name)?,
        };
        let solved = method.solve_group(&group, stats.as_ref()).map_err(|e| solver_err(b, name, e))?;
        for sl in solved.layers {
            out.push(stat(b, name, &sl));
            install(lin, sl, solved.int8_activations, method)?;
        }
    }
    Ok(out)
}

/// A group's statistics, fed batch by batch from the calibration activations.
struct Stats {
    cols: usize,
    inner: Box<dyn Statistics>,
}

impl Stats {
    fn new(ctx: &Ctx, cols: usize) -> Self {
        Stats { cols, inner: ctx.opts.method.solver().statistics(cols, ctx.opts.calib_shape()) }
    }

    fn add(&mut self, x: &[f32], block: usize, what: &str) -> Result<()> {
        let rows = x.len() / self.cols;
        if let Some((token, channel)) = first_non_finite(x, self.cols) {
            return Err(QuantizeError::NonFiniteActivation { block, what: what.to_string(), token, channel });
        }
        self.inner.add_batch(x, rows).map_err(|e| solver_err(block, what, e))
    }
}

/// Where a group's scales may be folded: `x / s` must come out of that op.
enum Fold<'a> {
    /// The RMSNorm weight before the group.
    Norm(&'a mut Vec<f32>),
    /// The (already quantized) linear whose output rows feed the group: its per-row scales.
    Rows(&'a mut Linear),
    /// v_proj under grouped-query attention: o_proj's scales are tied across the query heads of
    /// each KV head, and v's output row `(k, d)` takes the scale of its group's lane `d`.
    HeadRows(&'a mut Linear, HeadTie),
}

impl Fold<'_> {
    fn target(&self) -> FoldTarget {
        match self {
            Fold::Norm(_) => FoldTarget::Norm,
            Fold::Rows(_) => FoldTarget::Rows,
            Fold::HeadRows(_, tie) => FoldTarget::TiedHeadRows(*tie),
        }
    }
}

/// Divides `prev`'s output row `r` by `s[r]`: for a quantized layer, its group scales of row r.
fn fold_into_rows(lin: &mut Linear, s: &[f32]) -> Result<()> {
    let (rows, cols) = (lin.rows(), lin.cols());
    match lin.weight() {
        WeightKind::Quant(q) => {
            let (scales, zeros) = match q.params() {
                QParams::Int { scales, zeros } => (scales, zeros.clone()),
                QParams::Codebook { .. } | QParams::IntStats(_) | QParams::RowLut { .. } => {
                    return Err(QuantizeError::input("quantize", "cannot fold into a codebook or spqr layer"))
                }
            };
            let per_row = scales.len() / rows;
            let new = Scales::from_f32((0..scales.len()).map(|i| scales.get(i) / s[i / per_row]), scales.dtype());
            let qt = QTensor::from_parts(
                q.shape().to_vec(),
                *q.scheme(),
                q.codes().to_vec(),
                QParams::Int { scales: new, zeros },
            )?;
            set_quant(lin, qt)
        }
        _ => {
            let mut w = lin.weight().to_f32();
            for (r, row) in w.chunks_exact_mut(cols).enumerate() {
                row.iter_mut().for_each(|v| *v /= s[r]);
            }
            *lin = Linear::new(rows, cols, WeightKind::F32(w))?;
            Ok(())
        }
    }
}

/// What solving a group did.
struct Solved {
    stats: Vec<LayerStat>,
    /// The per-input-channel scales folded into the preceding op (AWQ, SmoothQuant): from now on
    /// that op emits `x / s`, so activations computed before the fold must be divided too.
    folded: Option<Vec<f32>>,
}

/// [`solve_group`] for a group read through an RMSNorm (q/k/v, gate/up): its fold goes into the
/// norm's weight, which the next stage recomputes its input with, so only the stats remain.
fn solve_norm_group(
    ctx: &Ctx,
    b: usize,
    names: &[&str],
    lins: Vec<&mut Linear>,
    norm: &mut Vec<f32>,
    st: &Stats,
) -> Result<Vec<LayerStat>> {
    Ok(solve_group(ctx, b, names, lins, Fold::Norm(norm), st)?.stats)
}

/// The scheme of layer `name` of block `b`: the allocation's under mixed precision, else the
/// common one.
fn layer_scheme(ctx: &Ctx, b: usize, name: &str) -> Result<Scheme> {
    match (&ctx.alloc, ctx.scheme) {
        (Some(a), Scheme::Int(base)) => Ok(Scheme::Int(a.scheme(b, name, base)?)),
        _ => Ok(ctx.scheme),
    }
}

/// Solves one group of layers sharing an input through the method, installs the results and
/// applies the fold the method asked for. Under mixed precision each layer is solved on its own
/// with its own scheme (the methods allowed there, RTN and GPTQ, solve a group's layers
/// independently anyway and fold nothing).
fn solve_group(ctx: &Ctx, b: usize, names: &[&str], lins: Vec<&mut Linear>, fold: Fold, st: &Stats) -> Result<Solved> {
    let ws: Vec<Vec<f32>> = lins.iter().map(|l| l.weight().to_f32()).collect();
    let layers: Vec<GroupLayer> = names
        .iter()
        .zip(&ws)
        .zip(&lins)
        .map(|((name, w), l)| GroupLayer { role: role(name), w, rows: l.rows() })
        .collect();
    let method = ctx.opts.method.solver();
    let solve = |layers: Vec<GroupLayer>, scheme: Scheme| {
        let group = Group { layers, cols: st.cols, fold: fold.target(), scheme };
        method.solve_group(&group, st.inner.as_ref()).map_err(|e| solver_err(b, &names.join(", "), e))
    };
    let solution = if ctx.alloc.is_some() {
        let mut all: Option<lowbit_solvers::GroupSolution> = None;
        for (name, l) in names.iter().zip(layers) {
            let s = solve(vec![l], layer_scheme(ctx, b, name)?)?;
            match &mut all {
                None => all = Some(s),
                Some(a) => a.layers.extend(s.layers),
            }
        }
        all.ok_or_else(|| QuantizeError::input("quantize", "an empty group"))?
    } else {
        solve(layers, ctx.scheme)?
    };
    let mut stats = vec![];
    for ((name, lin), solved) in names.iter().zip(lins).zip(solution.layers) {
        stats.push(stat(b, name, &solved));
        install(lin, solved, solution.int8_activations, ctx.opts.method.solver())?;
    }
    let folded = match solution.fold {
        Some(s) => {
            apply_fold(fold, &s)?;
            Some(s)
        }
        None => None,
    };
    Ok(Solved { stats, folded })
}

/// Folds `1 / s` into `fold`'s target.
fn apply_fold(fold: Fold, s: &[f32]) -> Result<()> {
    match fold {
        Fold::Norm(w) => w.iter_mut().zip(s).for_each(|(w, s)| *w /= s),
        Fold::Rows(lin) => fold_into_rows(lin, s)?,
        Fold::HeadRows(lin, tie) => fold_into_rows(lin, &tie.per_kv_lane(s))?,
    }
    Ok(())
}

/// One block, true-sequential (see the module docs). `x` holds the block's input and becomes
/// its output.
fn quantize_block_calibrated(
    ctx: &mut Ctx,
    model: &Model,
    b: usize,
    layer: &mut Layer,
    x: &mut [f32],
    progress: &mut dyn Progress,
) -> Result<Vec<LayerStat>> {
    let cfg = ctx.cfg.clone();
    let (h, qd, ff) = (cfg.hidden_size, cfg.q_dim(), cfg.intermediate_size);
    let seqlen = ctx.seqlen;
    let m = x.len() / h;
    let seqs_per_batch = (ctx.opts.batch_tokens / ctx.seqlen).max(1);
    let rows_per_batch = seqs_per_batch * ctx.seqlen;
    let batches: Vec<(usize, usize)> =
        (0..m).step_by(rows_per_batch).map(|s| (s, (s + rows_per_batch).min(m))).collect();
    let mut stats = vec![];
    let (attn_fold, act_fold): (Option<Vec<f32>>, Option<Vec<f32>>);

    // The stages run over whole calibration windows (batches hold whole sequences), each
    // from an empty context, with unsplit products: the output must not depend on the threads.
    let be = Cpu::unsplit();
    let mut sc = Scratch::new(&be, &cfg, rows_per_batch.min(m))?;
    let spans = |s: usize, e: usize| -> Vec<Span> { Span::fresh((e - s) / seqlen, seqlen).collect() };

    // 1. q/k/v on input_layernorm(x).
    let mut st = Stats::new(ctx, h);
    for &(s, e) in &batches {
        progress.check()?;
        sc.resize(&be, &cfg, e - s)?;
        Block::with_backend(&be, &cfg, layer).attn_input(&x[s * h..e * h], &mut sc);
        st.add(sc.normed(&be), b, "q/k/v input")?;
    }
    {
        let Layer { input_norm, q_proj, k_proj, v_proj, .. } = layer;
        let names = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"];
        stats.extend(solve_norm_group(ctx, b, &names, vec![q_proj, k_proj, v_proj], input_norm, &st)?);
    }
    drop(st);

    // 2. o on the attention output computed with the quantized q/k/v.
    let mut attn = Stash::new();
    let mut st = Stats::new(ctx, qd);
    for &(s, e) in &batches {
        progress.check()?;
        sc.resize(&be, &cfg, e - s)?;
        let (blk, sp) = (Block::with_backend(&be, &cfg, layer), spans(s, e));
        sc.set_positions(&be, model.rope(), &sp)?;
        blk.attn_input(&x[s * h..e * h], &mut sc);
        blk.qkv(&mut sc)?;
        blk.attend_fresh(&sp, &mut sc)?;
        st.add(sc.attn_out(&be), b, "o_proj input")?;
        attn.push(sc.attn_out(&be));
    }
    {
        // o's scales may fold into v's output rows (tied across the query heads of a KV head
        // under GQA); the method decides whether it uses them.
        let Layer { v_proj, o_proj, .. } = layer;
        let fold = if cfg.kv_dim() == qd {
            Fold::Rows(v_proj)
        } else {
            let tie =
                HeadTie { heads: cfg.num_attention_heads, kv_heads: cfg.num_key_value_heads, head_dim: cfg.head_dim };
            Fold::HeadRows(v_proj, tie)
        };
        let solved = solve_group(ctx, b, &["self_attn.o_proj"], vec![o_proj], fold, &st)?;
        // v now emits attn / s: the residual below must see what the folded model computes.
        attn_fold = solved.folded;
        stats.extend(solved.stats);
    }
    drop(st);

    // 3. residual, then gate/up on post_attention_layernorm(x).
    let mut st = Stats::new(ctx, h);
    let mut held = vec![];
    for (i, &(s, e)) in batches.iter().enumerate() {
        progress.check()?;
        attn.read(i, attn_fold.as_deref(), &mut held);
        sc.resize(&be, &cfg, e - s)?;
        let blk = Block::with_backend(&be, &cfg, layer);
        blk.o_residual(&mut x[s * h..e * h], Some(&held), &mut sc)?;
        blk.mlp_input(&x[s * h..e * h], &mut sc);
        st.add(sc.normed(&be), b, "gate/up input")?;
    }
    drop(attn);
    {
        let Layer { post_attention_norm, gate_proj, up_proj, .. } = layer;
        let names = ["mlp.gate_proj", "mlp.up_proj"];
        stats.extend(solve_norm_group(ctx, b, &names, vec![gate_proj, up_proj], post_attention_norm, &st)?);
    }
    drop(st);

    // 4. down on silu(gate) * up computed with the quantized gate/up; then the residual.
    let mut act = Stash::new();
    let mut st = Stats::new(ctx, ff);
    for &(s, e) in &batches {
        progress.check()?;
        sc.resize(&be, &cfg, e - s)?;
        let blk = Block::with_backend(&be, &cfg, layer);
        blk.mlp_input(&x[s * h..e * h], &mut sc);
        blk.gate_up(&mut sc)?;
        st.add(sc.mlp_act(&be), b, "down_proj input")?;
        act.push(sc.mlp_act(&be));
    }
    {
        let Layer { up_proj, down_proj, .. } = layer;
        let solved = solve_group(ctx, b, &["mlp.down_proj"], vec![down_proj], Fold::Rows(up_proj), &st)?;
        // up now emits act / s: the residual below must see what the folded model computes.
        act_fold = solved.folded;
        stats.extend(solved.stats);
    }
    drop(st);
    for (i, &(s, e)) in batches.iter().enumerate() {
        act.read(i, act_fold.as_deref(), &mut held);
        sc.resize(&be, &cfg, e - s)?;
        Block::with_backend(&be, &cfg, layer).down_residual(&mut x[s * h..e * h], Some(&held), &mut sc)?;
    }
    Ok(stats)
}

/// The SHA-256 digest of `data` as lowercase hex.
fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn sha256_known_digests() {
        assert_eq!(super::sha256_hex(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(super::sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
