//! Quantization grids that training can move: each group's scale and zero point.
//!
//! The forward pass always uses what lowbit stores: the scale rounded to its storage dtype and
//! an integer zero code, so a trained grid's [`LinearGrid::fake`] is bit for bit what the
//! kernels compute with. Training updates f32 master values behind them (as LSQ and
//! EfficientQAT do) and [`LinearGrid::sync`] rounds them into the stored parameters.
//!
//! Gradients with respect to the masters go through the rounding with the straight-through
//! estimator. For `ŵ = s (clamp(round(w / s) + z, 0, maxq) - z)`:
//! - inside the range, `dŵ/dw = 1`, `dŵ/ds = round(w / s) - w / s` (LSQ), `dŵ/dz = 0`;
//! - clipped to code `q`, `dŵ/dw = 0`, `dŵ/ds = q - z`, `dŵ/dz = -s`.
//!
//! The zero point's master is kept in weight units (the code times the group's initial scale),
//! so one learning rate suits scales and zeros alike.

use crate::block::{linears, BlockConfig, BlockWeights};
use crate::{check_len, Result, TrainError};
use lowbit_core::rtn::{self, round_ties_even_small, GroupParams};
use lowbit_core::{check_finite, Granularity, IntScheme, QTensor, Scheme};

/// Smallest scale a trained grid keeps (f16 still has 10 bits of precision there).
const MIN_SCALE: f32 = 1e-5;

/// A linear weight's quantization grid: its scheme and each group's scale and zero.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearGrid {
    scheme: IntScheme,
    rows: usize,
    cols: usize,
    /// What the forward pass uses and lowbit stores.
    params: Vec<GroupParams>,
    /// Training's master scales.
    scale: Vec<f32>,
    /// Training's master zero points, in weight units: `zero code * unit[i]`.
    offset: Vec<f32>,
    /// Each group's initial scale: the unit of its zero's master.
    unit: Vec<f32>,
}

/// Gradients of a loss with respect to a weight and its grid's masters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GridGrads {
    /// With respect to the f32 weight (zero where the code is clipped).
    pub weight: Vec<f32>,
    /// With respect to each group's master scale.
    pub scale: Vec<f32>,
    /// With respect to each group's master zero (weight units); zeros for symmetric schemes.
    pub offset: Vec<f32>,
}

impl LinearGrid {
    /// The grid round-to-nearest chooses for `w` (`[rows, cols]`): `lowbit_core`'s rule.
    pub fn fit(w: &[f32], rows: usize, cols: usize, scheme: IntScheme) -> Result<Self> {
        check_len("weight", w, rows * cols)?;
        scheme.granularity.validate(cols, scheme.bits)?;
        check_finite(w)?;
        Self::from_params(rows, cols, scheme, rtn::choose_params(w, rows, cols, scheme)?)
    }

    /// A grid with given parameters (`[rows * groups]`, or one per tensor), e.g. those another
    /// method (GPTQ, AWQ) chose: its dequantized weights lie on this grid exactly.
    pub fn from_params(rows: usize, cols: usize, scheme: IntScheme, params: Vec<GroupParams>) -> Result<Self> {
        scheme.granularity.validate(cols, scheme.bits)?;
        let expected = match scheme.granularity {
            Granularity::PerTensor => 1,
            g => rows * g.groups_per_row(cols),
        };
        if params.len() != expected {
            return Err(TrainError::Shape { what: "grid parameters", expected, got: params.len() });
        }
        let scale: Vec<f32> = params.iter().map(|p| p.scale).collect();
        let unit: Vec<f32> = scale.iter().map(|s| s.max(MIN_SCALE)).collect();
        let offset = params.iter().zip(&unit).map(|(p, u)| f32::from(p.zero) * u).collect();
        Ok(LinearGrid { scheme, rows, cols, params, scale, offset, unit })
    }

    /// The scheme.
    pub fn scheme(&self) -> IntScheme {
        self.scheme
    }

    /// The stored parameters, one per group (row-major over `[rows, groups]`).
    pub fn params(&self) -> &[GroupParams] {
        &self.params
    }

    /// The master scales and zeros (weight units) for an optimizer; call [`LinearGrid::sync`]
    /// after changing them.
    pub fn masters_mut(&mut self) -> (&mut Vec<f32>, &mut Vec<f32>) {
        (&mut self.scale, &mut self.offset)
    }

    /// The master scales.
    pub fn scales(&self) -> &[f32] {
        &self.scale
    }

    /// Rounds the masters into the stored parameters: scales to their dtype (at least
    /// `MIN_SCALE`), zeros to the nearest code in range (symmetric schemes keep theirs).
    pub fn sync(&mut self) {
        let maxq = f32::from(self.scheme.bits.maxq());
        for (((p, &s), &o), &u) in self.params.iter_mut().zip(&self.scale).zip(&self.offset).zip(&self.unit) {
            p.scale = self.scheme.scale_dtype.round(s.max(MIN_SCALE));
            if !self.scheme.symmetric {
                p.zero = (o / u).round().clamp(0.0, maxq) as u8;
            }
        }
    }

    fn group_len(&self) -> usize {
        match self.scheme.granularity {
            Granularity::Group(g) => g.min(self.cols),
            Granularity::PerChannel | Granularity::PerTensor => self.cols,
        }
    }

    /// Index into `params` of row `r`'s group `group`.
    fn index(&self, r: usize, group: usize) -> usize {
        match self.scheme.granularity {
            Granularity::PerTensor => 0,
            _ => r * self.cols.div_ceil(self.group_len()) + group,
        }
    }

    /// Codes of `w` on this grid, row-major.
    pub fn codes(&self, w: &[f32]) -> Vec<u8> {
        let (g, maxq) = (self.group_len(), self.scheme.bits.maxq());
        let mut codes = vec![0u8; w.len()];
        for (r, (row, out)) in w.chunks_exact(self.cols).zip(codes.chunks_exact_mut(self.cols)).enumerate() {
            for (k, (seg, o)) in row.chunks(g).zip(out.chunks_mut(g)).enumerate() {
                self.params[self.index(r, k)].quantize_slice(seg, maxq, o);
            }
        }
        codes
    }

    /// The values of `codes` on this grid.
    pub fn dequantize(&self, codes: &[u8]) -> Vec<f32> {
        let g = self.group_len();
        let mut out = vec![0.0f32; codes.len()];
        for (r, (codes, o)) in codes.chunks_exact(self.cols).zip(out.chunks_exact_mut(self.cols)).enumerate() {
            for (k, (seg, o)) in codes.chunks(g).zip(o.chunks_mut(g)).enumerate() {
                self.params[self.index(r, k)].dequantize_slice(seg, o);
            }
        }
        out
    }

    /// `w` rounded on this grid and dequantized.
    pub fn fake(&self, w: &[f32]) -> Vec<f32> {
        self.dequantize(&self.codes(w))
    }

    /// `w` on this grid as the [`QTensor`] lowbit stores; its dequantization is [`LinearGrid::fake`].
    pub fn qtensor(&self, w: &[f32]) -> Result<QTensor> {
        self.qtensor_of_codes(&self.codes(w))
    }

    /// Given codes on this grid as the [`QTensor`] lowbit stores.
    pub fn qtensor_of_codes(&self, codes: &[u8]) -> Result<QTensor> {
        if codes.len() != self.rows * self.cols {
            return Err(TrainError::Shape { what: "codes", expected: self.rows * self.cols, got: codes.len() });
        }
        let packed = lowbit_core::pack::pack(codes, self.scheme.bits)?;
        let params = rtn::store_params(self.scheme, &self.params);
        Ok(QTensor::from_parts(vec![self.rows, self.cols], Scheme::Int(self.scheme), packed, params)?)
    }

    /// The straight-through gradients of a loss with respect to `w` and this grid's masters,
    /// given `g` (its gradient with respect to [`LinearGrid::fake`]`(w)`).
    pub fn backward(&self, w: &[f32], g: &[f32]) -> GridGrads {
        let (len, maxq) = (self.group_len(), self.scheme.bits.maxq());
        let mut out = GridGrads {
            weight: vec![0.0; w.len()],
            scale: vec![0.0; self.params.len()],
            offset: vec![0.0; self.params.len()],
        };
        for r in 0..self.rows {
            let span = r * self.cols..(r + 1) * self.cols;
            let (row, grow, gw) = (&w[span.clone()], &g[span.clone()], &mut out.weight[span]);
            for (k, ((seg, gseg), gw)) in row.chunks(len).zip(grow.chunks(len)).zip(gw.chunks_mut(len)).enumerate() {
                let i = self.index(r, k);
                let p = self.params[i];
                let zero = f32::from(p.zero);
                let (mut ds, mut dz) = (0.0f32, 0.0f32);
                for ((&x, &d), gw) in seg.iter().zip(gseg).zip(gw.iter_mut()) {
                    let v = x / p.scale;
                    let rounded = round_ties_even_small(v);
                    let q = f32::from(p.quantize(x, maxq));
                    if q == rounded + zero {
                        *gw = d;
                        ds += d * (rounded - v);
                    } else {
                        ds += d * (q - zero);
                        dz -= d * p.scale;
                    }
                }
                out.scale[i] += ds;
                if !self.scheme.symmetric {
                    // The zero code is offset / unit.
                    out.offset[i] += dz / self.unit[i];
                }
            }
        }
        out
    }

    /// The gradient of a loss with respect to the master scales when the codes are fixed
    /// (`ŵ = s (q - z)`: `dŵ/ds = q - z`), given `g` with respect to the dequantized `codes`.
    pub fn scale_backward(&self, codes: &[u8], g: &[f32]) -> Vec<f32> {
        let len = self.group_len();
        let mut ds = vec![0.0f32; self.params.len()];
        for r in 0..self.rows {
            let span = r * self.cols..(r + 1) * self.cols;
            for (k, (cseg, gseg)) in codes[span.clone()].chunks(len).zip(g[span].chunks(len)).enumerate() {
                let i = self.index(r, k);
                let zero = f32::from(self.params[i].zero);
                ds[i] += cseg.iter().zip(gseg).map(|(&q, &d)| d * (f32::from(q) - zero)).sum::<f32>();
            }
        }
        ds
    }
}

/// The seven linear weights' grids, in the block's order (q, k, v, o, gate, up, down).
#[derive(Clone, Debug, PartialEq)]
pub struct BlockGrids(pub [LinearGrid; 7]);

impl BlockGrids {
    /// Round-to-nearest's grids for `w`'s linear weights.
    pub fn fit(c: &BlockConfig, w: &BlockWeights, scheme: IntScheme) -> Result<Self> {
        w.check(c)?;
        let l = linears(c);
        let ws = w.linears();
        let grid = |i: usize| LinearGrid::fit(ws[i], l[i].1, l[i].2, scheme);
        Ok(BlockGrids([grid(0)?, grid(1)?, grid(2)?, grid(3)?, grid(4)?, grid(5)?, grid(6)?]))
    }

    /// [`LinearGrid::sync`] of each.
    pub fn sync(&mut self) {
        self.0.iter_mut().for_each(LinearGrid::sync);
    }
}
