//! SpQR (Dettmers et al. 2023, "SpQR: A Sparse-Quantized Representation for Near-Lossless LLM
//! Weight Compression", Algorithm 1) for one linear layer `W[rows = out, cols = in]`.
//!
//! GPTQ's sweep (columns in order or by descending `H_cc`, error feedback through the upper
//! Cholesky factor `U` of `H^-1`, lazy batch updates; see [`crate::gptq`]) with three changes:
//!
//! * **Small groups** (16 columns by default), asymmetric min-max with a *float* zero point,
//!   `q = clamp(round(w / s + z), 0, 2^b - 1)`, `w ~ (q - z) s`. A group's parameters are fitted
//!   on its current (error-updated) weights when the sweep first reaches one of its columns.
//! * **Bi-level statistics**: right after a group is fitted, its scales and zeros are quantized
//!   to [`SpqrConfig::stats_bits`] (3) in statistics groups of [`SpqrConfig::stats_group`] (16)
//!   consecutive output rows, each with an f16 scale and zero ([`lowbit_core::stats`]); the sweep
//!   rounds against the *decoded* statistics, the values the file holds.
//! * **Outliers**, with the paper's saliency `err^2 = ((w - q) / U_cc)^2` and its threshold
//!   `tau = outlier_threshold * mean_c(var_r(W[:, c]) / U_cc^2)` (the reference code's
//!   `outlier_relative_threshold`). Before a group is fitted, the reference's leave-one-out test
//!   marks the weights whose exclusion lowers the group's summed saliency by more than `tau`; the
//!   fit ignores them (they are replaced by the mean of the others). Then, as each column is
//!   quantized, every weight with saliency above `tau` becomes an outlier: it keeps its code and
//!   the residual `w - q` is stored in f16 in a sparse CSR matrix
//!   ([`lowbit_core::SparseOutliers`]), so the weight is reproduced to f16 precision, and the
//!   error fed forward is what remains. (The reference writes the code of 0 and the whole weight;
//!   storing the residual costs the same bytes and is more exact.)
//! * **A budget** (lowbit's, not the paper's): at most [`SpqrConfig::outlier_max_percent`] of
//!   each block of rows' weights become outliers, first come first served in sweep order. A
//!   group's fit leaves out its leave-one-out outliers only while the budget can still hold them
//!   (counting those promised by earlier fits); in each column those promised ones go first, then
//!   the largest saliencies. (Leaving weights out of a range and then clipping them, because the
//!   budget ran out, costs more than the outliers save.)
//!
//! Groups are consecutive *original* columns whatever the order (the layout the kernels read);
//! the reference groups consecutive permuted columns. Rows are swept in blocks that are whole
//! statistics groups, side by side; the result does not depend on the number of threads.

use crate::gptq::{group_layout, lazy_sweep, over_row_blocks, prepare, ColumnRule, GptqConfig, Prepared, SweepPlan};
use crate::hessian::{Hessian, HessianPrecision};
use crate::linalg::DampingConfig;
use crate::method::{
    downcast, int_scheme, CalibShape, Group, GroupSolution, MethodInfo, QuantMethod, SolvedLayer, Statistics,
};
use crate::report::LayerReport;
use crate::{Result, SolverError};
use faer::Mat;
use lowbit_core::pack::pack;
use lowbit_core::stats::StatParams;
use lowbit_core::{
    Bits, ClipSearch, Granularity, IntScheme, QParams, QTensor, QuantStats, ScaleDtype, Scheme, SparseOutliers,
};
use serde_json::{Map, Value};
use std::time::Instant;

/// The paper's first-level group size.
pub const DEFAULT_GROUP_SIZE: usize = 16;
/// Bits of the quantized scales and zeros (the paper's 3).
pub const DEFAULT_STATS_BITS: u32 = 3;
/// Output rows per statistics group (the paper's 16).
pub const DEFAULT_STATS_GROUP: usize = 16;
/// The reference code's `outlier_relative_threshold` in the paper's LLaMA configurations.
pub const DEFAULT_OUTLIER_THRESHOLD: f32 = 0.2;
/// Largest share of outliers, percent of the weights (the paper keeps about 1% or fewer).
pub const DEFAULT_OUTLIER_MAX_PERCENT: f64 = 1.0;

/// SpQR settings for one layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SpqrConfig {
    /// Code width of the weights.
    pub bits: Bits,
    /// Columns per first-level group.
    pub group_size: usize,
    /// Code width of the quantized scales and zeros.
    pub stats_bits: Bits,
    /// Output rows per statistics group.
    pub stats_group: usize,
    /// Outlier threshold relative to the layer's mean saliency scale; `inf`: no outliers.
    pub outlier_threshold: f32,
    /// Most outliers, percent of the weights (0 to 100).
    pub outlier_max_percent: f64,
    /// Quantize columns by descending `H_cc`.
    pub act_order: bool,
    /// Columns per lazy-update block.
    pub block_size: usize,
    /// Dampening of `H`.
    pub damping: DampingConfig,
}

impl SpqrConfig {
    /// The paper's defaults at `bits`: groups of 16, 3-bit statistics in groups of 16 rows,
    /// threshold 0.2, at most 1% outliers, act-order.
    pub fn new(bits: Bits) -> Self {
        SpqrConfig {
            bits,
            group_size: DEFAULT_GROUP_SIZE,
            stats_bits: Bits::B3,
            stats_group: DEFAULT_STATS_GROUP,
            outlier_threshold: DEFAULT_OUTLIER_THRESHOLD,
            outlier_max_percent: DEFAULT_OUTLIER_MAX_PERCENT,
            act_order: true,
            block_size: crate::gptq::DEFAULT_BLOCK_SIZE,
            damping: DampingConfig::default(),
        }
    }

    /// Refuses settings that make no sense (a NaN or negative threshold, a budget outside
    /// 0..=100 percent, empty groups).
    pub fn validate(&self) -> Result<()> {
        check_outlier_settings(self.outlier_threshold, self.outlier_max_percent)?;
        if self.group_size == 0 {
            return Err(SolverError::param("group_size", 0, "it must be at least 1"));
        }
        if self.stats_group == 0 {
            return Err(SolverError::param("stats_group", 0, "it must be at least 1 row"));
        }
        if self.block_size == 0 {
            return Err(SolverError::param("block_size", 0, "it must be at least 1"));
        }
        self.damping.validate()
    }

    /// The stored integer scheme (asymmetric groups; the f16 is the second level's dtype).
    pub fn scheme(&self) -> IntScheme {
        IntScheme {
            bits: self.bits,
            symmetric: false,
            granularity: Granularity::Group(self.group_size),
            scale_dtype: ScaleDtype::F16,
            clip: ClipSearch::MinMax,
        }
    }
}

fn check_outlier_settings(threshold: f32, max_percent: f64) -> Result<()> {
    if threshold.is_nan() || threshold < 0.0 {
        return Err(SolverError::param(
            "outlier_threshold",
            threshold,
            "it must be a number >= 0, relative to the layer's mean saliency (0.2 in the paper; inf keeps no outliers)",
        ));
    }
    if !(0.0..=100.0).contains(&max_percent) {
        return Err(SolverError::param(
            "outlier_max_percent",
            max_percent,
            "it must be a percentage of the weights, from 0 to 100",
        ));
    }
    Ok(())
}

/// A SpQR-quantized layer.
#[derive(Clone, Debug)]
pub struct SpqrOutput {
    /// Codes, quantized statistics and outliers, original column order.
    pub qtensor: QTensor,
    /// GPTQ's loss over the final reconstruction, damping, dead inputs, time.
    pub report: LayerReport,
    /// The threshold `tau` in saliency units (`inf` without outliers).
    pub tau: f64,
}

/// Smallest first-level range relative to the group's largest magnitude (bounds the zero point
/// to `maxq / MIN_RELATIVE_RANGE`).
pub const MIN_RELATIVE_RANGE: f32 = 1.0 / 256.0;

/// A first-level group's scale and float zero, as the sweep uses them (decoded).
#[derive(Clone, Copy, Debug, PartialEq)]
struct Affine {
    scale: f32,
    zero: f32,
}

impl Affine {
    /// Min-max over `v`, the range widened to at least [`MIN_RELATIVE_RANGE`] of the values'
    /// magnitude (and 1e-6): a (nearly) constant group would otherwise get a zero point
    /// `-lo / scale` too large for the f16 second level.
    fn fit(v: impl Iterator<Item = f32>, maxq: f32) -> Self {
        let (lo, hi) = v.fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), x| (a.min(x), b.max(x)));
        let hi = hi.max(lo + (lo.abs().max(hi.abs()) * MIN_RELATIVE_RANGE).max(1e-6));
        let scale = (hi - lo) / maxq;
        Affine { scale, zero: -lo / scale }
    }
    #[inline]
    fn code(self, x: f32, maxq: f32) -> u8 {
        let t = if self.scale != 0.0 { x / self.scale + self.zero } else { self.zero };
        // NaN (never from finite inputs) becomes code 0 through the saturating cast.
        t.round_ties_even().clamp(0.0, maxq) as u8
    }
    /// The value of code `q`, in f32 exactly as lowbit-core dequantizes it.
    #[inline]
    fn value(self, q: u8) -> f32 {
        (f32::from(q) - self.zero) * self.scale
    }
}

/// The reference's leave-one-out test: `mask[j]` when fitting the group without weight `j`
/// lowers the group's summed saliency `sum_i ((w_i - q_i) / d_i)^2` (weight `j`'s own term
/// excluded, it is kept exactly) by more than `tau`. `inv_d2[i] = 1 / d_i^2`.
fn leave_one_out(v: &[f32], inv_d2: &[f64], maxq: f32, tau: f64, mask: &mut [bool]) {
    let n = v.len();
    mask.fill(false);
    if n < 3 {
        return;
    }
    let err = |p: Affine, i: usize| {
        let d = f64::from(v[i] - p.value(p.code(v[i], maxq)));
        d * d * inv_d2[i]
    };
    let base_p = Affine::fit(v.iter().copied(), maxq);
    let base: f64 = (0..n).map(|i| err(base_p, i)).sum();
    for (j, m) in mask.iter_mut().enumerate().take(n) {
        let p = Affine::fit(v.iter().enumerate().filter(|&(i, _)| i != j).map(|(_, &x)| x), maxq);
        let loo: f64 = (0..n).filter(|&i| i != j).map(|i| err(p, i)).sum();
        *m = base - loo > tau;
    }
}

/// A group's first-level parameters: min-max over its weights, the likely outliers (when `tau`
/// is finite and at most `room` of them) replaced by the mean of the others; `mask` says which
/// were left out.
fn fit_group(v: &[f32], inv_d2: &[f64], maxq: f32, tau: f64, room: usize, mask: &mut [bool]) -> Affine {
    mask.fill(false);
    if !tau.is_finite() || room == 0 {
        return Affine::fit(v.iter().copied(), maxq);
    }
    leave_one_out(v, inv_d2, maxq, tau, mask);
    if mask.iter().filter(|&&m| m).count() > room {
        mask.fill(false);
        return Affine::fit(v.iter().copied(), maxq);
    }
    let kept = mask.iter().filter(|&&m| !m).count();
    let mean = v.iter().zip(mask.iter()).filter(|(_, &m)| !m).map(|(&x, _)| x).sum::<f32>() / kept.max(1) as f32;
    Affine::fit(v.iter().zip(mask.iter()).map(|(&x, &m)| if m { mean } else { x }), maxq)
}

/// `tau` of the paper: `relative * mean_c(var_r(W[:, c]) / U_kk^2)` with `k` the position of
/// column `c` (unbiased variance over the rows, as the reference's `weight.var(dim=0)`).
pub fn outlier_tau(w: &[f32], rows: usize, cols: usize, perm: &[usize], u: &Mat<f64>, relative: f32) -> f64 {
    if !relative.is_finite() {
        return f64::INFINITY;
    }
    let mut sum = 0.0f64;
    for (k, &c) in perm.iter().enumerate() {
        let mean = (0..rows).map(|r| f64::from(w[r * cols + c])).sum::<f64>() / rows as f64;
        let ss: f64 = (0..rows).map(|r| (f64::from(w[r * cols + c]) - mean).powi(2)).sum();
        let var = if rows > 1 { ss / (rows - 1) as f64 } else { 0.0 };
        sum += var / (u[(k, k)] * u[(k, k)]);
    }
    f64::from(relative) * sum / cols as f64
}

/// What one block of rows' sweep produced.
struct Swept {
    /// Row-major codes of the block.
    codes: Vec<u8>,
    /// First-level scales and zeros before the second level, `[g * rows + r]` (block rows).
    scales: Vec<f32>,
    zeros: Vec<f32>,
    /// The decoded parameters the sweep used, `[r * gpr + g]`.
    used: Vec<Affine>,
    /// `(row in block, column, residual)`.
    outliers: Vec<(usize, usize, f32)>,
    loss: f64,
}

/// Quantizes `w` (row-major `[rows, cols]`) with SpQR against the Hessian of its input.
pub fn spqr_quantize(w: &[f32], rows: usize, cols: usize, h: &Hessian, cfg: &SpqrConfig) -> Result<SpqrOutput> {
    let start = Instant::now();
    cfg.validate()?;
    let scheme = cfg.scheme();
    let gcfg = GptqConfig {
        act_order: cfg.act_order,
        block_size: cfg.block_size,
        damping: cfg.damping,
        ..GptqConfig::new(scheme)
    };
    let Prepared { perm, u, w, damping, dead } = prepare(w, rows, cols, h, &gcfg)?;
    let tau = outlier_tau(&w, rows, cols, &perm, &u, cfg.outlier_threshold);
    let (_, gpr) = group_layout(scheme.granularity, cols);
    // Whole statistics groups per block, so that each is fitted by one sweep.
    let per = cfg.stats_group * SWEEP_ROWS.div_ceil(cfg.stats_group);
    let swept =
        over_row_blocks(rows, per, |r0, r1| sweep(&w[r0 * cols..r1 * cols], r1 - r0, cols, &perm, &u, cfg, tau))?;
    let (mut codes, mut scales, mut zeros) =
        (Vec::with_capacity(rows * cols), vec![0f32; rows * gpr], vec![0f32; rows * gpr]);
    let mut used = Vec::with_capacity(rows * gpr);
    let (mut entries, mut loss) = (Vec::new(), 0.0);
    for (r0, r1, part) in swept {
        codes.extend_from_slice(&part.codes);
        let n = r1 - r0;
        for g in 0..gpr {
            scales[g * rows + r0..g * rows + r1].copy_from_slice(&part.scales[g * n..(g + 1) * n]);
            zeros[g * rows + r0..g * rows + r1].copy_from_slice(&part.zeros[g * n..(g + 1) * n]);
        }
        used.extend_from_slice(&part.used);
        entries.extend(part.outliers.iter().map(|&(r, c, v)| (r0 + r, c, v)));
        loss += part.loss;
    }
    let stats = QuantStats::quantize(rows, gpr, cfg.stats_bits, cfg.stats_group, &scales, &zeros)?;
    // The sweep rounded against these very values: check, it is what makes the file exact.
    let (mut ds, mut dz) = (vec![0f32; rows * gpr], vec![0f32; rows * gpr]);
    stats.decode_rows(rows, gpr, 0, rows, &mut ds, &mut dz);
    if used.iter().zip(ds.iter().zip(&dz)).any(|(a, (&s, &z))| a.scale != s || a.zero != z) {
        return Err(SolverError::shape("spqr", "stored statistics equal to those the sweep used", "different ones"));
    }
    let mut qtensor = QTensor::from_parts(
        vec![rows, cols],
        Scheme::Int(scheme),
        pack(&codes, cfg.bits)?,
        QParams::IntStats(Box::new(stats)),
    )?;
    if !entries.is_empty() {
        qtensor = qtensor.with_outliers(SparseOutliers::from_entries(rows, cols, &entries)?)?;
    }
    let report = LayerReport {
        method: "spqr",
        loss,
        damping: Some(damping),
        dead_inputs: dead,
        seconds: start.elapsed().as_secs_f64(),
    };
    Ok(SpqrOutput { qtensor, report, tau })
}

/// Weight rows per independent sweep (rounded up to whole statistics groups).
const SWEEP_ROWS: usize = 96;

/// SpQR's rounding inside GPTQ's sweep over one block of rows: first-level groups fitted
/// without their likely outliers and rounded against their 3-bit-quantized statistics, weights
/// whose saliency exceeds `tau` kept as f16 residuals within the layer's budget.
struct SpqrRule<'a> {
    cfg: &'a SpqrConfig,
    u: &'a Mat<f64>,
    invperm: Vec<usize>,
    rows: usize,
    cols: usize,
    g: usize,
    gpr: usize,
    maxq: f32,
    tau: f64,
    /// Most outliers of this block.
    cap: usize,
    /// Weights left out of their group's fit, not yet swept (`promised[r * cols + c]`).
    promised: Vec<bool>,
    n_promised: usize,
    mask: Vec<bool>,
    inv_d2: Vec<f64>,
    candidates: Vec<(bool, f64, usize, f32)>,
    out: Swept,
}

impl ColumnRule for SpqrRule<'_> {
    fn fits_groups(&self) -> bool {
        true
    }

    fn fit_group(&mut self, grp: usize, current: &[f32]) -> Result<()> {
        let (rows, gpr, cfg) = (self.rows, self.gpr, self.cfg);
        let gstart = grp * self.g;
        let glen = current.len() / rows;
        for jj in 0..glen {
            let p = self.invperm[gstart + jj];
            let d = self.u[(p, p)];
            self.inv_d2[jj] = 1.0 / (d * d);
        }
        for (r, v) in current.chunks_exact(glen).enumerate() {
            let room = self.cap.saturating_sub(self.out.outliers.len() + self.n_promised);
            let mask = &mut self.mask[..glen];
            let a = fit_group(v, &self.inv_d2[..glen], self.maxq, self.tau, room, mask);
            for (jj, _) in mask.iter().enumerate().filter(|(_, &m)| m) {
                self.promised[r * self.cols + gstart + jj] = true;
                self.n_promised += 1;
            }
            self.out.scales[grp * rows + r] = a.scale;
            self.out.zeros[grp * rows + r] = a.zero;
        }
        // Second level, now: the sweep must round against the stored statistics.
        let col = grp * rows;
        for r0 in (0..rows).step_by(cfg.stats_group) {
            let r1 = (r0 + cfg.stats_group).min(rows);
            let ps = StatParams::fit(&self.out.scales[col + r0..col + r1], cfg.stats_bits);
            let pz = StatParams::fit(&self.out.zeros[col + r0..col + r1], cfg.stats_bits);
            for r in r0..r1 {
                self.out.used[r * gpr + grp] = Affine {
                    scale: ps.value(ps.code(self.out.scales[col + r], cfg.stats_bits)),
                    zero: pz.value(pz.code(self.out.zeros[col + r], cfg.stats_bits)),
                };
            }
        }
        Ok(())
    }

    fn round_column(&mut self, c: usize, wcol: &[f64], d: f64, err: &mut [f64]) {
        let (cols, grp) = (self.cols, c / self.g);
        self.candidates.clear();
        for (r, (&x, e)) in wcol.iter().zip(err.iter_mut()).enumerate() {
            let a = self.out.used[r * self.gpr + grp];
            let q = a.code(x as f32, self.maxq);
            self.out.codes[r * cols + c] = q;
            let dq = a.value(q);
            *e = (x - f64::from(dq)) / d;
            let was_promised = self.tau.is_finite() && std::mem::take(&mut self.promised[r * cols + c]);
            self.n_promised -= usize::from(was_promised);
            if *e * *e > self.tau {
                self.candidates.push((was_promised, *e * *e, r, dq));
            }
        }
        if !self.candidates.is_empty() {
            // What the budget leaves after the promises of other columns: promised weights
            // first, then the largest saliencies (ties: lower row).
            let allowed = self.cap.saturating_sub(self.out.outliers.len() + self.n_promised);
            self.candidates.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.total_cmp(&a.1)).then(a.2.cmp(&b.2)));
            for &(_, _, r, dq) in self.candidates.iter().take(allowed) {
                let x = wcol[r];
                let resid = ScaleDtype::F16.round((x - f64::from(dq)) as f32);
                if resid == 0.0 || !resid.is_finite() {
                    continue;
                }
                self.out.outliers.push((r, c, resid));
                err[r] = (x - f64::from(dq + resid)) / d;
            }
        }
        self.out.loss += err.iter().map(|e| e * e / 2.0).sum::<f64>();
    }
}

/// The SpQR sweep over `rows` rows of `w` (row-major, original column order).
fn sweep(
    w: &[f32],
    rows: usize,
    cols: usize,
    perm: &[usize],
    u: &Mat<f64>,
    cfg: &SpqrConfig,
    tau: f64,
) -> Result<Swept> {
    let (g, gpr) = group_layout(Granularity::Group(cfg.group_size), cols);
    let mut invperm = vec![0usize; cols];
    for (k, &c) in perm.iter().enumerate() {
        invperm[c] = k;
    }
    let cap = (cfg.outlier_max_percent / 100.0 * (rows * cols) as f64).floor() as usize;
    let tau = if cap > 0 { tau } else { f64::INFINITY };
    let out = Swept {
        codes: vec![0u8; rows * cols],
        scales: vec![0f32; rows * gpr],
        zeros: vec![0f32; rows * gpr],
        used: vec![Affine { scale: 1.0, zero: 0.0 }; rows * gpr],
        outliers: Vec::new(),
        loss: 0.0,
    };
    let mut rule = SpqrRule {
        cfg,
        u,
        invperm,
        rows,
        cols,
        g,
        gpr,
        maxq: f32::from(cfg.bits.maxq()),
        tau,
        cap,
        promised: vec![false; if tau.is_finite() { rows * cols } else { 0 }],
        n_promised: 0,
        mask: vec![false; g],
        inv_d2: vec![0.0f64; g],
        candidates: Vec::new(),
        out,
    };
    lazy_sweep(w, rows, cols, SweepPlan { perm, u, block_size: cfg.block_size, group: g }, &mut rule)?;
    Ok(rule.out)
}

/// SpQR as a pipeline method: one Hessian per group input, each layer solved against it. The
/// common scheme gives the bits and the first-level group size (16 is the paper's); it must be
/// asymmetric.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SpqrMethod {
    /// Bits of the quantized scales and zeros (3).
    pub stats_bits: u32,
    /// Output rows per statistics group (16).
    pub stats_group: usize,
    /// Outlier threshold relative to each layer's mean saliency (0.2); `inf`: no outliers.
    pub outlier_threshold: f32,
    /// Most outliers, percent of each layer's weights (1).
    pub outlier_max_percent: f64,
    /// Quantize columns by descending Hessian diagonal (on, as in the paper).
    pub act_order: bool,
    /// Relative damping of `H` (0.01).
    pub percdamp: f64,
}

impl Default for SpqrMethod {
    fn default() -> Self {
        SpqrMethod {
            stats_bits: DEFAULT_STATS_BITS,
            stats_group: DEFAULT_STATS_GROUP,
            outlier_threshold: DEFAULT_OUTLIER_THRESHOLD,
            outlier_max_percent: DEFAULT_OUTLIER_MAX_PERCENT,
            act_order: true,
            percdamp: DampingConfig::default().percdamp,
        }
    }
}

impl SpqrMethod {
    /// The per-layer settings for the common scheme.
    pub fn config(&self, scheme: IntScheme) -> Result<SpqrConfig> {
        let group_size = match scheme.granularity {
            Granularity::Group(g) => g,
            other => {
                return Err(SolverError::param(
                    "group_size",
                    format!("{other:?}"),
                    "spqr quantizes small groups: give a group size (16 in the paper)",
                ))
            }
        };
        if scheme.symmetric {
            return Err(SolverError::param("sym", true, "spqr's zero points are asymmetric (float, quantized)"));
        }
        let stats_bits = Bits::try_from(self.stats_bits)
            .map_err(|_| SolverError::param("stats_bits", self.stats_bits, "use 2, 3, 4 or 8 (3 in the paper)"))?;
        Ok(SpqrConfig {
            bits: scheme.bits,
            group_size,
            stats_bits,
            stats_group: self.stats_group,
            outlier_threshold: self.outlier_threshold,
            outlier_max_percent: self.outlier_max_percent,
            act_order: self.act_order,
            block_size: crate::gptq::DEFAULT_BLOCK_SIZE,
            damping: DampingConfig { percdamp: self.percdamp, ..DampingConfig::default() },
        })
    }
}

impl QuantMethod for SpqrMethod {
    fn info(&self) -> MethodInfo {
        MethodInfo { name: "spqr", aliases: &[], calibrated: true }
    }
    fn validate(&self, scheme: &Scheme) -> Result<()> {
        self.config(int_scheme(scheme, "spqr")?)?.validate()
    }
    fn params(&self, _calib: CalibShape) -> Map<String, Value> {
        let t = self.outlier_threshold;
        // The f32's shortest decimal (0.2, not 0.200000003); inf is JSON null.
        let t_json =
            if t.is_finite() { format!("{t}").parse::<f64>().map_or(Value::Null, Value::from) } else { Value::Null };
        Map::from_iter([
            ("stats_bits".to_string(), self.stats_bits.into()),
            ("stats_group".to_string(), self.stats_group.into()),
            // Not `outlier_threshold`: the loader reads that key as LLM.int8()'s.
            ("outlier_relative_threshold".to_string(), t_json),
            ("outlier_max_percent".to_string(), self.outlier_max_percent.into()),
            ("desc_act".to_string(), self.act_order.into()),
            ("damp_percent".to_string(), self.percdamp.into()),
            ("true_sequential".to_string(), true.into()),
        ])
    }
    fn statistics(&self, cols: usize, _calib: CalibShape) -> Box<dyn Statistics> {
        Box::new(Hessian::with_precision(cols, HessianPrecision::F32Chunks))
    }
    fn solve_group(&self, group: &Group, stats: &dyn Statistics) -> Result<GroupSolution> {
        let h: &Hessian = downcast(stats, "spqr")?;
        let cfg = self.config(int_scheme(&group.scheme, "spqr")?)?;
        let solve = |l: &crate::method::GroupLayer| {
            let out = spqr_quantize(l.w, l.rows, group.cols, h, &cfg)?;
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
