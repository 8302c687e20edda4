//! GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative
//! Pre-trained Transformers", Algorithm 1) for one linear layer `W[rows = out, cols = in]`.
//!
//! The sweep quantizes one column `c` at a time (in order, or by descending `H_cc` with
//! act-order), and spreads its error over the columns not yet quantized through the upper
//! Cholesky factor `U` of `H^-1` (`err = (w - q) / U_kk`, `W[:, later] -= err * U[k, later]`).
//! Updates to columns outside the current block of [`GptqConfig::block_size`] columns are
//! deferred and applied as one GEMM per block ("lazy batch updates", Section 4). Everything
//! after the Hessian runs in f64; codes are chosen with lowbit-core's f32 rule
//! ([`GroupParams::quantize`]) so the output is an ordinary lowbit [`QTensor`].
//!
//! **Group parameters.** Groups are always groups of consecutive *original* columns (the
//! lowbit layout, so kernels run the result directly).
//! * Without static groups, a group's scale and zero are chosen with
//!   [`lowbit_core::rtn::group_params`] (the same rule as RTN, f16 scale rounding included) on the
//!   current, error-updated weights of all its columns at the moment the sweep first reaches one
//!   of them; deferred (lazy) updates of those columns are applied first, so the result does not
//!   depend on the block size. Without act-order this is exactly the GPTQ reference
//!   (`find_params(W[:, i:i+groupsize])` at `i % groupsize == 0`) when the group size is a
//!   multiple of the block size or vice versa with aligned starts; where a group starts inside
//!   a block, the reference reads stale (not yet updated) weights, lowbit reads the updated ones.
//!   With act-order the reference forms groups of consecutive *permuted* columns and needs a
//!   `g_idx` table; lowbit keeps original-order groups instead.
//! * With static groups (the reference's `static_groups`), every group's parameters are chosen
//!   before the sweep from the original weights: the same parameters as RTN.
//! * Per-channel is one group per row, chosen before any update.
//!
//! **Codebooks** (QLoRA's NF4/FP4, [`GptqConfig::codebook`]): each block's absmax is chosen
//! before the sweep from the original weights (like static groups; double-quantized first when
//! asked, so the sweep rounds against the absmax the saved model holds), and each weight goes to
//! the nearest table entry times its block's absmax. The error feedback is the same for any grid.
//!
//! Dead inputs (`H_ii == 0`) get `H_ii = 1` and a zero weight column, as in the reference.

use crate::hessian::{Hessian, HessianPrecision};
use crate::linalg::{fix_dead_inputs, inverse_cholesky_upper, Damping, DampingConfig};
use crate::method::{downcast, CalibShape, Group, GroupSolution, MethodInfo, QuantMethod, SolvedLayer, Statistics};
use crate::par::faer_par;
use crate::report::LayerReport;
use crate::rtn::{clip_param, with_clip};
use crate::{Result, SolverError};
use faer::{Accum, Mat, MatMut, MatRef};
use lowbit_core::codebook::Absmax;
use lowbit_core::pack::pack;
use lowbit_core::rtn::{choose_params, GroupParams};
use lowbit_core::{check_finite, Bits, Codebook, CodebookScheme, Granularity, IntScheme, QParams, QTensor, Scheme};
use serde_json::{Map, Value};
use std::time::Instant;

/// GPTQ's lazy-batch block size (128 in the reference).
pub const DEFAULT_BLOCK_SIZE: usize = 128;

/// GPTQ settings for one layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GptqConfig {
    /// Output format: bits, symmetric or not, per-channel or groups, scale dtype, range search.
    pub scheme: IntScheme,
    /// Round to this 4-bit codebook instead (`scheme` then only gives the block size, as its
    /// group size).
    pub codebook: Option<CodebookScheme>,
    /// Quantize columns by descending `H_cc` ("act-order", `--act-order` in the reference).
    pub act_order: bool,
    /// Choose every group's parameters from the original weights before the sweep.
    pub static_groups: bool,
    /// Columns per lazy-update block.
    pub block_size: usize,
    /// Dampening of `H`.
    pub damping: DampingConfig,
}

impl GptqConfig {
    /// The reference defaults for a scheme: no act-order, block 128, percdamp 0.01.
    pub fn new(scheme: IntScheme) -> Self {
        GptqConfig {
            scheme,
            codebook: None,
            act_order: false,
            static_groups: false,
            block_size: DEFAULT_BLOCK_SIZE,
            damping: DampingConfig::default(),
        }
    }
}

/// GPTQ as a pipeline method: one Hessian per group input, each layer solved against it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GptqMethod {
    /// Quantize columns by descending Hessian diagonal (on by default).
    pub act_order: bool,
    /// Group parameters from the original weights before the sweep; `None` = on with act-order
    /// (the reference's "act-order + static groups"), off without.
    pub static_groups: Option<bool>,
    /// Choose each group's range by the least squared reconstruction error
    /// ([`crate::rtn::MSE_CLIP`]) instead of min-max: on by default, it closes most of the gap
    /// act-order leaves (benches/README.md).
    pub mse_clip: bool,
    /// Relative damping of `H` (0.01).
    pub percdamp: f64,
    /// Lazy-batch block size (128).
    pub block_size: usize,
}

impl Default for GptqMethod {
    /// Act-order with static groups and the MSE range search: the best W4 perplexity
    /// (benches/README.md) at no cost in size or speed.
    fn default() -> Self {
        GptqMethod {
            act_order: true,
            static_groups: None,
            mse_clip: true,
            percdamp: DampingConfig::default().percdamp,
            block_size: DEFAULT_BLOCK_SIZE,
        }
    }
}

impl GptqMethod {
    /// Whether static groups are used (see [`GptqMethod::static_groups`]).
    pub fn static_groups(&self) -> bool {
        self.static_groups.unwrap_or(self.act_order)
    }

    /// The per-layer solver settings for a codebook scheme: its block absmax plays the part of
    /// static group parameters.
    pub fn codebook_config(&self, codebook: CodebookScheme) -> GptqConfig {
        let blocks = IntScheme::group(Bits::B4, codebook.block_size);
        GptqConfig { codebook: Some(codebook), ..self.config(blocks) }
    }

    /// The per-layer solver settings for the common scheme.
    pub fn config(&self, scheme: IntScheme) -> GptqConfig {
        GptqConfig {
            scheme: with_clip(scheme, self.mse_clip),
            codebook: None,
            act_order: self.act_order,
            static_groups: self.static_groups(),
            block_size: self.block_size,
            damping: DampingConfig { percdamp: self.percdamp, ..DampingConfig::default() },
        }
    }
}

impl Statistics for Hessian {
    fn add_batch(&mut self, x: &[f32], tokens: usize) -> Result<()> {
        Hessian::add_batch(self, x, tokens)
    }
}

impl QuantMethod for GptqMethod {
    fn info(&self) -> MethodInfo {
        MethodInfo { name: "gptq", aliases: &[], calibrated: true }
    }
    fn validate(&self, scheme: &Scheme) -> Result<()> {
        if matches!(scheme, Scheme::RowLut(_)) {
            return Err(crate::method::no_row_codebooks("gptq"));
        }
        if !(self.percdamp.is_finite() && self.percdamp >= 0.0) {
            return Err(SolverError::param("percdamp", self.percdamp, "it must be finite and >= 0"));
        }
        if self.block_size == 0 {
            return Err(SolverError::param("block_size", 0, "it must be at least 1"));
        }
        Ok(())
    }
    fn params(&self, _calib: CalibShape) -> Map<String, Value> {
        Map::from_iter([
            ("clip".to_string(), clip_param(self.mse_clip)),
            ("desc_act".to_string(), self.act_order.into()),
            ("static_groups".to_string(), self.static_groups().into()),
            ("damp_percent".to_string(), self.percdamp.into()),
            ("block_size".to_string(), self.block_size.into()),
            ("true_sequential".to_string(), true.into()),
        ])
    }
    fn statistics(&self, cols: usize, _calib: CalibShape) -> Box<dyn Statistics> {
        // f32 rank-k products summed in f64: twice the throughput, error bounded per chunk.
        Box::new(Hessian::with_precision(cols, HessianPrecision::F32Chunks))
    }
    fn solve_group(&self, group: &Group, stats: &dyn Statistics) -> Result<GroupSolution> {
        let h: &Hessian = downcast(stats, "gptq")?;
        let cfg = match group.scheme {
            Scheme::Int(s) => self.config(s),
            Scheme::Codebook(c) => self.codebook_config(c),
            Scheme::RowLut(_) => return Err(crate::method::no_row_codebooks("gptq")),
        };
        // The layers of a group (q/k/v, gate/up) are independent sweeps: solved side by side,
        // since one sweep's column loop keeps only one core busy.
        let solve = |l: &crate::method::GroupLayer| {
            let out = gptq_quantize(l.w, l.rows, group.cols, h, &cfg)?;
            Ok(SolvedLayer { qtensor: out.qtensor, report: out.report, alpha: None })
        };
        let layers = if lowbit_core::par::ENABLED {
            use rayon::prelude::*;
            group.layers.par_iter().map(solve).collect::<Result<_>>()?
        } else {
            group.layers.iter().map(solve).collect::<Result<_>>()?
        };
        Ok(GroupSolution { layers, fold: None, int8_activations: false })
    }
}

/// A GPTQ-quantized layer.
#[derive(Clone, Debug)]
pub struct GptqOutput {
    /// Codes in the original column order with their scales and zeros.
    pub qtensor: QTensor,
    /// Loss, damping, dead inputs, time.
    pub report: LayerReport,
}

/// Everything GPTQ needs before the sweep: permutation, `U`, dead columns zeroed.
pub struct Prepared {
    /// Position -> original column.
    pub perm: Vec<usize>,
    /// Upper Cholesky factor of the damped, permuted `H^-1`.
    pub u: Mat<f64>,
    /// Weights with dead columns zeroed, row-major f32 (original order).
    pub w: Vec<f32>,
    /// The damping the factorization needed.
    pub damping: Damping,
    /// Dead input columns (zero Hessian diagonal).
    pub dead: usize,
}

/// Validates, applies the dead-input rule, permutes and factors: the steps before the sweep,
/// public so that the tests' textbook GPTQ starts from the same point.
pub fn prepare(w: &[f32], rows: usize, cols: usize, h: &Hessian, cfg: &GptqConfig) -> Result<Prepared> {
    if rows == 0 || cols == 0 {
        return Err(SolverError::shape("gptq", "a non-empty weight", format!("{rows}x{cols}")));
    }
    if w.len() != rows * cols {
        return Err(SolverError::shape("gptq weight", format!("{rows}x{cols} = {}", rows * cols), w.len()));
    }
    if h.cols() != cols {
        return Err(SolverError::shape("gptq Hessian", format!("{cols} input channels"), h.cols()));
    }
    if h.tokens() == 0 {
        return Err(SolverError::NoCalibrationData { op: "gptq" });
    }
    if cfg.block_size == 0 {
        return Err(SolverError::param("block_size", 0, "it must be at least 1"));
    }
    if cfg.scheme.granularity == Granularity::PerTensor {
        return Err(SolverError::param("granularity", "per-tensor", "GPTQ supports per-channel or group scales"));
    }
    cfg.scheme.granularity.validate(cols, cfg.scheme.bits)?;
    check_finite(w)?;

    let mut hm = h.matrix();
    let dead_cols = fix_dead_inputs(&mut hm);
    let mut w = w.to_vec();
    for &c in &dead_cols {
        for r in 0..rows {
            w[r * cols + c] = 0.0;
        }
    }
    let mut perm: Vec<usize> = (0..cols).collect();
    if cfg.act_order {
        // Descending diag H; ties keep the original order (stable sort).
        perm.sort_by(|&a, &b| hm[(b, b)].total_cmp(&hm[(a, a)]));
    }
    let hp = Mat::from_fn(cols, cols, |i, j| hm[(perm[i], perm[j])]);
    let (u, damping) = inverse_cholesky_upper(&hp, &cfg.damping)?;
    Ok(Prepared { perm, u, w, damping, dead: dead_cols.len() })
}

/// Quantizes `w` (row-major `[rows, cols]`) with GPTQ against the Hessian of its input.
///
/// Rows are independent sweeps that share `U` (each row's error only moves that row's later
/// columns), so blocks of [`SWEEP_ROWS`] rows run side by side; the blocks do not depend on the
/// number of threads, nor does the result.
pub fn gptq_quantize(w: &[f32], rows: usize, cols: usize, h: &Hessian, cfg: &GptqConfig) -> Result<GptqOutput> {
    let start = Instant::now();
    let prep = prepare(w, rows, cols, h, cfg)?;
    let scheme = cfg.scheme;
    let (g, groups) = group_layout(scheme.granularity, cols);
    let Prepared { perm, u, w, damping, dead } = prep;
    let chosen = if cfg.codebook.is_none() && (cfg.static_groups || scheme.granularity == Granularity::PerChannel) {
        Some(choose_params(&w, rows, cols, scheme)?)
    } else {
        None
    };
    // Codebooks: the blocks' absmax from the original weights (row-major blocks, as lowbit-core
    // lays them out when each row holds whole blocks), double-quantized where asked.
    let absmax = match cfg.codebook {
        Some(c) => {
            if cols % g != 0 {
                return Err(SolverError::param(
                    "group_size",
                    g,
                    "codebook blocks must divide the input width for GPTQ (each row whole blocks)",
                ));
            }
            let raw: Vec<f32> = w.chunks(g).map(|b| b.iter().fold(0.0f32, |m, x| m.max(x.abs()))).collect();
            Some(if c.double_quant { Absmax::double_quantize(&raw) } else { Absmax::F32(raw) })
        }
        None => None,
    };
    let absmax_values: Vec<f32> = absmax.as_ref().map_or(vec![], |a| (0..rows * groups).map(|i| a.get(i)).collect());
    let swept = over_row_blocks(rows, SWEEP_ROWS, |r0, r1| {
        let grid = match cfg.codebook {
            Some(c) => Grid::Codebook(c.codebook, &absmax_values[r0 * groups..r1 * groups]),
            None => Grid::Int(chosen.as_ref().map(|p| &p[r0 * groups..r1 * groups])),
        };
        sweep(&w[r0 * cols..r1 * cols], r1 - r0, cols, &perm, &u, cfg, grid)
    })?;
    let (mut codes, mut params, mut loss) = (Vec::with_capacity(rows * cols), Vec::with_capacity(rows * groups), 0.0);
    for (_, _, part) in swept {
        codes.extend_from_slice(&part.codes);
        params.extend_from_slice(&part.params);
        loss += part.loss;
    }
    let qtensor = match (cfg.codebook, absmax) {
        (Some(c), Some(absmax)) => QTensor::from_parts(
            vec![rows, cols],
            Scheme::Codebook(c),
            pack(&codes, Bits::B4)?,
            QParams::Codebook { absmax },
        )?,
        _ => assemble(rows, cols, scheme, &codes, &params)?,
    };
    let report = LayerReport {
        method: "gptq",
        loss,
        damping: Some(damping),
        dead_inputs: dead,
        seconds: start.elapsed().as_secs_f64(),
    };
    Ok(GptqOutput { qtensor, report })
}

/// Weight rows per independent sweep of [`gptq_quantize`].
const SWEEP_ROWS: usize = 96;

/// What the sweep rounds each weight to.
#[derive(Clone, Copy)]
enum Grid<'a> {
    /// Integer codes: group parameters chosen before the sweep (`Some`, `[rows * groups]`), or
    /// as the sweep reaches each group.
    Int(Option<&'a [GroupParams]>),
    /// The codebook's entries times each block's absmax (`[rows * groups]`, fixed).
    Codebook(Codebook, &'a [f32]),
    /// Per-row tables of `k` entries (`[rows * k]`, fixed: squeezellm's codebooks); where `exact`
    /// (`[rows * cols]`) is set the weight keeps its current value (no error to feed forward) and
    /// its residual over the nearest entry goes to the sparse part.
    RowTables { tables: &'a [f32], k: usize, exact: &'a [bool] },
}

/// What one block of rows' sweep produced.
struct Swept {
    codes: Vec<u8>,
    params: Vec<GroupParams>,
    loss: f64,
    /// `(row, col, value - table entry)` of the exact weights of [`Grid::RowTables`].
    residuals: Residuals,
}

/// The rounding a method does inside GPTQ's column sweep. The sweep itself ([`lazy_sweep`]:
/// column order, a group's current weights read with the deferred updates applied, the rank-1
/// and lazy batch updates) is the same for GPTQ, SpQR and SqueezeLLM's error feedback.
pub(crate) trait ColumnRule {
    /// Whether groups' parameters are chosen in the sweep ([`ColumnRule::fit_group`]) rather
    /// than before it.
    fn fits_groups(&self) -> bool;
    /// Chooses group `grp`'s parameters from its current weights (row-major `[rows, glen]`), as
    /// the sweep first reaches one of its columns.
    fn fit_group(&mut self, grp: usize, current: &[f32]) -> Result<()>;
    /// Rounds column `c`, whose current weights are `wcol`, and writes each row's
    /// `(w - q) / d` (the error the sweep feeds forward) into `err`.
    fn round_column(&mut self, c: usize, wcol: &[f64], d: f64, err: &mut [f64]);
}

/// The order and grouping of a sweep: columns in the order `perm` with `u` the upper Cholesky
/// factor of the permuted `H^-1`, groups of `group` consecutive original columns, updates beyond
/// the current block of `block_size` columns deferred to one GEMM per block.
#[derive(Clone, Copy)]
pub(crate) struct SweepPlan<'a> {
    pub perm: &'a [usize],
    pub u: &'a Mat<f64>,
    pub block_size: usize,
    pub group: usize,
}

/// GPTQ's column sweep over `rows` rows of `w` (row-major, original column order), each column
/// rounded by `rule`.
pub(crate) fn lazy_sweep(
    w: &[f32],
    rows: usize,
    cols: usize,
    plan: SweepPlan,
    rule: &mut impl ColumnRule,
) -> Result<()> {
    let SweepPlan { perm, u, block_size: bs, group: g } = plan;
    let mut invperm = vec![0usize; cols];
    for (k, &c) in perm.iter().enumerate() {
        invperm[c] = k;
    }
    let mut fitted = vec![!rule.fits_groups(); cols.div_ceil(g)];
    // Working weights in f64, column-major in permuted order: column k = original perm[k].
    let mut wp = vec![0.0f64; rows * cols];
    for (k, &c) in perm.iter().enumerate() {
        for r in 0..rows {
            wp[k * rows + r] = f64::from(w[r * cols + c]);
        }
    }
    let mut err1 = vec![0.0f64; rows * bs.min(cols)];
    let mut group_buf = vec![0.0f32; rows * g];

    for i1 in (0..cols).step_by(bs) {
        let i2 = (i1 + bs).min(cols);
        let count = i2 - i1;
        for i in 0..count {
            let k = i1 + i;
            let c = perm[k];
            let grp = c / g;
            if !fitted[grp] {
                // The group's current weights, deferred updates of later blocks included.
                let (gstart, gend) = (grp * g, (grp * g + g).min(cols));
                let glen = gend - gstart;
                for (jj, cc) in (gstart..gend).enumerate() {
                    let p = invperm[cc];
                    let col = &wp[p * rows..(p + 1) * rows];
                    for r in 0..rows {
                        let mut v = col[r];
                        if p >= i2 {
                            for t in 0..i {
                                v -= err1[t * rows + r] * u[(i1 + t, p)];
                            }
                        }
                        group_buf[r * glen + jj] = v as f32;
                    }
                }
                rule.fit_group(grp, &group_buf[..rows * glen])?;
                fitted[grp] = true;
            }
            let (done, rest) = wp.split_at_mut((k + 1) * rows);
            rule.round_column(c, &done[k * rows..], u[(k, k)], &mut err1[i * rows..(i + 1) * rows]);
            // Rank-1 update of the rest of the block.
            let ecol = &err1[i * rows..(i + 1) * rows];
            let block_rest = &mut rest[..(i2 - k - 1) * rows];
            update_block_columns(block_rest, rows, ecol, |j| u[(k, k + 1 + j)]);
        }
        // Lazy batch update: W[:, i2:] -= Err1 * U[i1:i2, i2:].
        if i2 < cols {
            let right = MatMut::from_column_major_slice_mut(&mut wp[i2 * rows..], rows, cols - i2);
            let e = MatRef::from_column_major_slice(&err1[..count * rows], rows, count);
            faer::linalg::matmul::matmul(
                right,
                Accum::Add,
                e,
                u.as_ref().submatrix(i1, i2, count, cols - i2),
                -1.0,
                faer_par(),
            );
        }
    }
    Ok(())
}

/// Runs `run(r0, r1)` over consecutive blocks of `per` rows, side by side where lowbit-core's
/// pool is on; the blocks do not depend on the number of threads, nor do the results.
pub(crate) fn over_row_blocks<T: Send>(
    rows: usize,
    per: usize,
    run: impl Fn(usize, usize) -> Result<T> + Sync,
) -> Result<Vec<(usize, usize, T)>> {
    let blocks: Vec<(usize, usize)> = (0..rows).step_by(per).map(|r0| (r0, (r0 + per).min(rows))).collect();
    let one = |&(r0, r1): &(usize, usize)| run(r0, r1).map(|t| (r0, r1, t));
    if lowbit_core::par::ENABLED {
        use rayon::prelude::*;
        blocks.par_iter().map(one).collect()
    } else {
        blocks.iter().map(one).collect()
    }
}

/// GPTQ's rounding: each weight to its group's integer grid, the codebook's nearest entry, or
/// its row's table.
struct GridRule<'a> {
    grid: Grid<'a>,
    scheme: IntScheme,
    rows: usize,
    cols: usize,
    g: usize,
    out: Swept,
}

impl ColumnRule for GridRule<'_> {
    fn fits_groups(&self) -> bool {
        matches!(self.grid, Grid::Int(None))
    }

    fn fit_group(&mut self, grp: usize, current: &[f32]) -> Result<()> {
        let groups = self.cols.div_ceil(self.g);
        let gs = IntScheme { granularity: Granularity::PerChannel, ..self.scheme };
        let rows = self.rows;
        for (r, p) in choose_params(current, rows, current.len() / rows, gs)?.into_iter().enumerate() {
            self.out.params[r * groups + grp] = p;
        }
        Ok(())
    }

    fn round_column(&mut self, c: usize, wcol: &[f64], d: f64, err: &mut [f64]) {
        let (cols, groups, grp) = (self.cols, self.cols.div_ceil(self.g), c / self.g);
        let maxq = self.scheme.bits.maxq();
        for (r, (&x, e)) in wcol.iter().zip(err.iter_mut()).enumerate() {
            let (q, dq) = match self.grid {
                Grid::Int(_) => {
                    let p = self.out.params[r * groups + grp];
                    let q = p.quantize(x as f32, maxq);
                    (q, p.dequantize(q))
                }
                // lowbit-core's codebook rule: nearest entry to w / absmax, in f32.
                Grid::Codebook(book, absmax) => {
                    let a = absmax[r * groups + grp];
                    let q = book.nearest(if a == 0.0 { 0.0 } else { x as f32 / a });
                    (q, book.table()[usize::from(q)] * a)
                }
                Grid::RowTables { tables, k, exact } => {
                    let t = &tables[r * k..(r + 1) * k];
                    let q = lowbit_core::rowlut::nearest(t, x as f32);
                    if exact[r * cols + c] {
                        self.out.residuals.push((r, c, x as f32 - t[usize::from(q)]));
                        (q, x as f32)
                    } else {
                        (q, t[usize::from(q)])
                    }
                }
            };
            self.out.codes[r * cols + c] = q;
            *e = (x - f64::from(dq)) / d;
            self.out.loss += *e * *e / 2.0;
        }
    }
}

/// GPTQ's sweep over `rows` rows of `w` (row-major, original column order), each weight rounded
/// on `grid`.
fn sweep(
    w: &[f32],
    rows: usize,
    cols: usize,
    perm: &[usize],
    u: &Mat<f64>,
    cfg: &GptqConfig,
    grid: Grid,
) -> Result<Swept> {
    let (g, groups) = group_layout(cfg.scheme.granularity, cols);
    let mut params = vec![GroupParams { scale: 1.0, zero: 0 }; rows * groups];
    if let Grid::Int(Some(p)) = grid {
        params.copy_from_slice(p);
    }
    let out = Swept { codes: vec![0u8; rows * cols], params, loss: 0.0, residuals: Vec::new() };
    let mut rule = GridRule { grid, scheme: cfg.scheme, rows, cols, g, out };
    lazy_sweep(w, rows, cols, SweepPlan { perm, u, block_size: cfg.block_size, group: g }, &mut rule)?;
    Ok(rule.out)
}

/// Weights kept exactly beside row tables: `(row, col, value - table entry)`.
pub(crate) type Residuals = Vec<(usize, usize, f32)>;

/// Fixed per-row tables for [`gptq_row_tables`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct RowTables<'a> {
    /// `rows * k` values (those the file will hold).
    pub tables: &'a [f32],
    /// Entries per row.
    pub k: usize,
    /// `rows * cols`: weights that keep their swept value (the sparse part).
    pub exact: &'a [bool],
}

/// GPTQ's sweep onto fixed per-row tables, with its error feedback: each weight goes to its
/// row's nearest entry given the errors of the columns before it, except the exact ones, which
/// keep their current value. Returns the codes (row-major) and the exact weights' residuals over
/// their entries. Per-channel layout (`cfg` gives the act-order, block and damping settings).
pub(crate) fn gptq_row_tables(
    w: &[f32],
    rows: usize,
    cols: usize,
    h: &Hessian,
    cfg: &GptqConfig,
    t: RowTables,
) -> Result<(Vec<u8>, Residuals)> {
    let cfg = GptqConfig {
        scheme: IntScheme { granularity: Granularity::PerChannel, ..cfg.scheme },
        codebook: None,
        static_groups: false,
        ..*cfg
    };
    let Prepared { perm, u, w, .. } = prepare(w, rows, cols, h, &cfg)?;
    let k = t.k;
    let swept = over_row_blocks(rows, SWEEP_ROWS, |r0, r1| {
        let grid = Grid::RowTables { tables: &t.tables[r0 * k..r1 * k], k, exact: &t.exact[r0 * cols..r1 * cols] };
        sweep(&w[r0 * cols..r1 * cols], r1 - r0, cols, &perm, &u, &cfg, grid)
    })?;
    let (mut codes, mut residuals) = (Vec::with_capacity(rows * cols), Vec::new());
    for (r0, _, part) in swept {
        codes.extend_from_slice(&part.codes);
        residuals.extend(part.residuals.into_iter().map(|(r, c, v)| (r0 + r, c, v)));
    }
    Ok((codes, residuals))
}

/// `(g, groups)`: columns per group (the last one may be shorter, the GPTQ convention) and groups
/// per row.
pub(crate) fn group_layout(granularity: Granularity, cols: usize) -> (usize, usize) {
    match granularity {
        Granularity::Group(g) => (g.min(cols), cols.div_ceil(g.min(cols))),
        Granularity::PerChannel | Granularity::PerTensor => (cols, 1),
    }
}

/// `cols_block[:, j] -= e * coef(j)` for each column `j` of a column-major block.
pub(crate) fn update_block_columns(cols_block: &mut [f64], rows: usize, e: &[f64], coef: impl Fn(usize) -> f64 + Sync) {
    let body = |j: usize, col: &mut [f64]| {
        let a = coef(j);
        for (v, &x) in col.iter_mut().zip(e) {
            *v -= x * a;
        }
    };
    lowbit_core::par::for_each_chunk(cols_block, rows, lowbit_core::par::pays(cols_block.len()), body);
}

/// Packs row-major codes and group parameters into a validated lowbit [`QTensor`].
pub(crate) fn assemble(
    rows: usize,
    cols: usize,
    scheme: IntScheme,
    codes: &[u8],
    params: &[GroupParams],
) -> Result<QTensor> {
    let packed = pack(codes, scheme.bits)?;
    Ok(QTensor::from_parts(
        vec![rows, cols],
        Scheme::Int(scheme),
        packed,
        lowbit_core::rtn::store_params(scheme, params),
    )?)
}
