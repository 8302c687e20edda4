//! SpQR at the layer level: against a textbook (unblocked, one column and one row at a time)
//! reimplementation, the value of outliers, the stored size, and bad settings.

mod common;

use common::{correlated_activations, hessian_of, Rng};
use lowbit_core::pack::unpack;
use lowbit_core::stats::StatParams;
use lowbit_core::{Bits, Granularity, IntScheme, QParams, Scheme};
use lowbit_solvers::gptq::{prepare, GptqConfig, Prepared};
use lowbit_solvers::spqr::outlier_tau;
use lowbit_solvers::{output_error, spqr_quantize, Hessian, MethodConfig, QuantMethod, SpqrConfig, SpqrMethod};

fn fit(v: &[f32], maxq: f32) -> (f32, f32) {
    let lo = v.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let hi = hi.max(lo + (lo.abs().max(hi.abs()) * lowbit_solvers::spqr::MIN_RELATIVE_RANGE).max(1e-6));
    let s = (hi - lo) / maxq;
    (s, -lo / s)
}

fn code(x: f32, (s, z): (f32, f32), maxq: f32) -> u8 {
    (x / s + z).round_ties_even().clamp(0.0, maxq) as u8
}

fn value(q: u8, (s, z): (f32, f32)) -> f32 {
    (f32::from(q) - z) * s
}

/// The group saliency `sum ((v - q(v)) / d)^2` over `idx` with parameters fitted on `idx`.
fn group_err(v: &[f32], d: &[f64], idx: &[usize], maxq: f32) -> f64 {
    let vals: Vec<f32> = idx.iter().map(|&i| v[i]).collect();
    let p = fit(&vals, maxq);
    idx.iter().map(|&i| ((f64::from(v[i] - value(code(v[i], p, maxq), p))) / d[i]).powi(2)).sum()
}

struct Textbook {
    codes: Vec<u8>,
    outliers: Vec<(usize, usize)>,
    recon: Vec<f32>,
}

/// SpQR as the paper states it, one weight at a time: every update applied at once to all later
/// columns, groups fitted when first reached (leave-one-out outliers excluded while the budget
/// can hold them), statistics quantized at once, outliers chosen per column, promised ones first.
/// One block of rows (`rows` <= 96).
fn textbook(w: &[f32], rows: usize, cols: usize, h: &Hessian, cfg: &SpqrConfig) -> Textbook {
    let g = cfg.group_size;
    let gpr = cols.div_ceil(g);
    let maxq = f32::from(cfg.bits.maxq());
    let gcfg = GptqConfig { act_order: cfg.act_order, ..GptqConfig::new(cfg.scheme()) };
    let Prepared { perm, u, w, .. } = prepare(w, rows, cols, h, &gcfg).unwrap();
    let tau = outlier_tau(&w, rows, cols, &perm, &u, cfg.outlier_threshold);
    let mut pos = vec![0; cols];
    for (k, &c) in perm.iter().enumerate() {
        pos[c] = k;
    }
    let mut wf: Vec<f64> = w.iter().map(|&v| f64::from(v)).collect();
    let mut params: Vec<Option<(f32, f32)>> = vec![None; rows * gpr];
    let (mut codes, mut recon) = (vec![0u8; rows * cols], vec![0f32; rows * cols]);
    let mut outliers = Vec::new();
    let cap = (cfg.outlier_max_percent / 100.0 * (rows * cols) as f64).floor() as usize;
    let tau = if cap > 0 { tau } else { f64::INFINITY };
    let mut promised = vec![false; rows * cols];
    for k in 0..cols {
        let c = perm[k];
        let grp = c / g;
        if params[grp].is_none() {
            let cs: Vec<usize> = (grp * g..(grp * g + g).min(cols)).collect();
            let d: Vec<f64> = cs.iter().map(|&cc| u[(pos[cc], pos[cc])]).collect();
            let mut raw = vec![];
            for r in 0..rows {
                let v: Vec<f32> = cs.iter().map(|&cc| wf[r * cols + cc] as f32).collect();
                let all: Vec<usize> = (0..v.len()).collect();
                let base = group_err(&v, &d, &all, maxq);
                let mut out: Vec<bool> = (0..v.len())
                    .map(|j| {
                        let rest: Vec<usize> = all.iter().copied().filter(|&i| i != j).collect();
                        tau.is_finite() && v.len() >= 3 && base - group_err(&v, &d, &rest, maxq) > tau
                    })
                    .collect();
                let n_promised = promised.iter().filter(|&&p| p).count();
                if out.iter().filter(|&&o| o).count() > cap.saturating_sub(outliers.len() + n_promised) {
                    out.fill(false);
                }
                for (j, &o) in out.iter().enumerate() {
                    promised[r * cols + cs[j]] |= o;
                }
                let kept: Vec<f32> = v.iter().zip(&out).filter(|(_, &o)| !o).map(|(&x, _)| x).collect();
                let mean = kept.iter().sum::<f32>() / kept.len().max(1) as f32;
                let fitted: Vec<f32> = v.iter().zip(&out).map(|(&x, &o)| if o { mean } else { x }).collect();
                raw.push(fit(&fitted, maxq));
            }
            for r0 in (0..rows).step_by(cfg.stats_group) {
                let r1 = (r0 + cfg.stats_group).min(rows);
                let ss: Vec<f32> = raw[r0..r1].iter().map(|p| p.0).collect();
                let zz: Vec<f32> = raw[r0..r1].iter().map(|p| p.1).collect();
                let (ps, pz) = (StatParams::fit(&ss, cfg.stats_bits), StatParams::fit(&zz, cfg.stats_bits));
                for r in r0..r1 {
                    let s = ps.value(ps.code(raw[r].0, cfg.stats_bits));
                    let z = pz.value(pz.code(raw[r].1, cfg.stats_bits));
                    params[r * gpr + grp] = Some((s, z));
                }
            }
        }
        let d = u[(k, k)];
        let mut cand = vec![];
        let mut e = vec![0f64; rows];
        for r in 0..rows {
            let p = params[r * gpr + grp].unwrap();
            let x = wf[r * cols + c];
            let q = code(x as f32, p, maxq);
            codes[r * cols + c] = q;
            recon[r * cols + c] = value(q, p);
            e[r] = (x - f64::from(recon[r * cols + c])) / d;
            let was = std::mem::take(&mut promised[r * cols + c]);
            if e[r] * e[r] > tau {
                cand.push((was, e[r] * e[r], r));
            }
        }
        let n_promised = promised.iter().filter(|&&p| p).count();
        let allowed = cap.saturating_sub(outliers.len() + n_promised);
        cand.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.total_cmp(&a.1)).then(a.2.cmp(&b.2)));
        for &(_, _, r) in cand.iter().take(allowed) {
            let x = wf[r * cols + c];
            let dq = recon[r * cols + c];
            let resid = lowbit_core::ScaleDtype::F16.round((x - f64::from(dq)) as f32);
            if resid != 0.0 {
                outliers.push((r, c));
                recon[r * cols + c] = dq + resid;
                e[r] = (x - f64::from(recon[r * cols + c])) / d;
            }
        }
        for r in 0..rows {
            for j in k + 1..cols {
                wf[r * cols + perm[j]] -= e[r] * u[(k, j)];
            }
        }
    }
    outliers.sort();
    Textbook { codes, outliers, recon }
}

fn problem(seed: u64, rows: usize, cols: usize) -> (Vec<f32>, Hessian) {
    let mut rng = Rng::new(seed);
    let x = correlated_activations(&mut rng, 400, cols);
    let mut w = rng.normals(rows * cols, 0.05);
    // A few large weights, as LLM layers have.
    for i in (0..w.len()).step_by(97) {
        w[i] *= 8.0;
    }
    (w, hessian_of(&x, cols))
}

fn outlier_positions(q: &lowbit_core::QTensor) -> Vec<(usize, usize)> {
    let Some(o) = q.outliers() else { return vec![] };
    (0..o.rows()).flat_map(|r| o.row(r).map(move |(c, _)| (r, c))).collect()
}

#[test]
fn lazy_blocks_match_the_textbook_sweep() {
    // 80 columns in blocks of 24 (groups of 16 start inside blocks), 40 rows (statistics groups
    // of 16 end short), with and without act-order and outliers, 3 and 4 bits.
    let (rows, cols) = (40, 80);
    let mut cases = 0;
    for (seed, (bits, act_order, threshold)) in [
        (Bits::B3, false, f32::INFINITY),
        (Bits::B4, true, f32::INFINITY),
        (Bits::B3, true, 0.2),
        (Bits::B4, false, 0.2),
        (Bits::B4, true, 1.0),
    ]
    .into_iter()
    .enumerate()
    {
        let (w, h) = problem(seed as u64, rows, cols);
        let cfg = SpqrConfig { act_order, outlier_threshold: threshold, block_size: 24, ..SpqrConfig::new(bits) };
        let got = spqr_quantize(&w, rows, cols, &h, &cfg).unwrap();
        let want = textbook(&w, rows, cols, &h, &cfg);
        let codes = unpack(got.qtensor.codes(), bits, rows * cols).unwrap();
        let diff = codes.iter().zip(&want.codes).filter(|(a, b)| a != b).count();
        assert!(diff <= 1, "{bits:?} act={act_order} t={threshold}: {diff} codes differ");
        if diff == 0 {
            assert_eq!(outlier_positions(&got.qtensor), want.outliers, "{bits:?} act={act_order} t={threshold}");
            let d = got.qtensor.dequantize();
            let max = d.iter().zip(&want.recon).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(max <= 1e-6, "reconstruction differs by {max}");
            cases += 1;
        }
        if threshold.is_finite() {
            let n = outlier_positions(&got.qtensor).len();
            assert!(n > 0 && n <= rows * cols / 100, "{n} outliers");
        } else {
            assert!(got.qtensor.outliers().is_none());
        }
    }
    assert!(cases >= 4, "only {cases} cases matched code for code");
}

#[test]
fn outliers_lower_the_hessian_weighted_error() {
    let (rows, cols) = (64, 128);
    for seed in 0..3 {
        let (w, h) = problem(100 + seed, rows, cols);
        let base = SpqrConfig { outlier_threshold: f32::INFINITY, ..SpqrConfig::new(Bits::B3) };
        let without = spqr_quantize(&w, rows, cols, &h, &base).unwrap();
        let with = spqr_quantize(&w, rows, cols, &h, &SpqrConfig::new(Bits::B3)).unwrap();
        let e0 = output_error(&w, &without.qtensor.dequantize(), rows, cols, &h).unwrap();
        let e1 = output_error(&w, &with.qtensor.dequantize(), rows, cols, &h).unwrap();
        let n = with.qtensor.outliers().map_or(0, |o| o.nnz());
        assert!(n > 0, "seed {seed}: no outliers");
        assert!(e1 < 0.9 * e0, "seed {seed}: {e1} with {n} outliers against {e0} without");
    }
}

#[test]
fn stored_bytes_are_codes_statistics_and_outliers() {
    let (rows, cols) = (48, 96);
    let (w, h) = problem(7, rows, cols);
    let out = spqr_quantize(&w, rows, cols, &h, &SpqrConfig::new(Bits::B3)).unwrap();
    let q = &out.qtensor;
    let nnz = q.outliers().map_or(0, |o| o.nnz());
    let gpr = cols / 16;
    // 3-bit codes; per statistic 3-bit codes for every group and 2 f16 per 16 rows of a group.
    let stats = 2 * ((rows * gpr * 3).div_ceil(8) + 2 * 2 * gpr * rows.div_ceil(16));
    let sparse = if nnz > 0 { 4 * (rows + 1) + 4 * nnz } else { 0 };
    assert_eq!(q.nbytes(), rows * cols * 3 / 8 + stats + sparse);
    let QParams::IntStats(s) = q.params() else { panic!("quantized statistics") };
    assert_eq!((s.bits, s.group), (Bits::B3, 16));
    // Without outliers: 3 + 2 * 3 / 16 + 4 * 16 / 256 = 3.625 bits per weight.
    let none = spqr_quantize(
        &w,
        rows,
        cols,
        &h,
        &SpqrConfig { outlier_threshold: f32::INFINITY, ..SpqrConfig::new(Bits::B3) },
    )
    .unwrap();
    assert!((none.qtensor.bits_per_weight() - 3.625).abs() < 1e-9, "{}", none.qtensor.bits_per_weight());
}

#[test]
fn bad_settings_are_refused() {
    let (w, h) = problem(3, 16, 32);
    for cfg in [
        SpqrConfig { outlier_threshold: f32::NAN, ..SpqrConfig::new(Bits::B4) },
        SpqrConfig { outlier_threshold: -1.0, ..SpqrConfig::new(Bits::B4) },
        SpqrConfig { outlier_max_percent: 100.5, ..SpqrConfig::new(Bits::B4) },
        SpqrConfig { outlier_max_percent: f64::NAN, ..SpqrConfig::new(Bits::B4) },
        SpqrConfig { stats_group: 0, ..SpqrConfig::new(Bits::B4) },
        SpqrConfig { group_size: 0, ..SpqrConfig::new(Bits::B4) },
        SpqrConfig { group_size: 12, ..SpqrConfig::new(Bits::B3) },
    ] {
        let err = spqr_quantize(&w, 16, 32, &h, &cfg).unwrap_err().to_string();
        assert!(!err.is_empty());
    }
    let msg =
        SpqrConfig { outlier_max_percent: 150.0, ..SpqrConfig::new(Bits::B4) }.validate().unwrap_err().to_string();
    assert!(msg.contains("outlier_max_percent") && msg.contains("100"), "{msg}");
    let scheme =
        |sym, granularity| Scheme::Int(IntScheme { symmetric: sym, granularity, ..IntScheme::group(Bits::B4, 16) });
    let m = SpqrMethod::default();
    assert!(m.validate(&scheme(false, Granularity::Group(16))).is_ok());
    assert!(m.validate(&scheme(true, Granularity::Group(16))).unwrap_err().to_string().contains("asymmetric"));
    assert!(m.validate(&scheme(false, Granularity::PerChannel)).is_err());
    assert!(SpqrMethod { stats_bits: 5, ..m }.validate(&scheme(false, Granularity::Group(16))).is_err());
    assert!(SpqrMethod { outlier_threshold: f32::NAN, ..m }.validate(&scheme(false, Granularity::Group(16))).is_err());
    assert_eq!(MethodConfig::from_name("SpQR").unwrap().name(), "spqr");
}

#[test]
fn constant_and_nearly_constant_groups_stay_finite() {
    // Rows of equal weights, one ulp apart, and zeros: the zero point stays within f16.
    let (rows, cols) = (32, 64);
    let (mut w, h) = problem(9, rows, cols);
    for c in 0..cols {
        w[c] = 0.3;
        w[cols + c] = if c % 2 == 0 { 0.02 } else { f32::from_bits(0.02f32.to_bits() + 1) };
        w[2 * cols + c] = 0.0;
    }
    for bits in [Bits::B3, Bits::B4] {
        let out = spqr_quantize(&w, rows, cols, &h, &SpqrConfig::new(bits)).unwrap();
        let d = out.qtensor.dequantize();
        assert!(d.iter().all(|v| v.is_finite()));
        // GPTQ moves weights to cancel output error, so compare outputs: far better than nothing.
        let e = output_error(&w, &d, rows, cols, &h).unwrap();
        let e0 = output_error(&w, &vec![0.0; rows * cols], rows, cols, &h).unwrap();
        assert!(e < 0.1 * e0, "{e} against {e0}");
    }
}
