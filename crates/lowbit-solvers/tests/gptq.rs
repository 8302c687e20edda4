//! GPTQ at the layer level: against RTN, against a textbook (unblocked, one column at a time)
//! GPTQ, and on degenerate Hessians.

mod common;

use common::{correlated_activations, hessian_of, layer_error, Rng};
use lowbit_core::codebook::{self, Absmax};
use lowbit_core::pack::unpack;
use lowbit_core::rtn::{choose_params, group_params, GroupParams};
use lowbit_core::{Bits, ClipSearch, Codebook, CodebookScheme, Granularity, IntScheme, ScaleDtype, Scheme};
use lowbit_solvers::gptq::{prepare, Prepared};
use lowbit_solvers::{gptq_quantize, output_error, rtn_quantize, GptqConfig, Hessian, SolverError};

fn scheme(bits: Bits, symmetric: bool, granularity: Granularity) -> IntScheme {
    IntScheme { bits, symmetric, granularity, scale_dtype: ScaleDtype::F16, clip: ClipSearch::MinMax }
}

fn codes_of(out: &lowbit_solvers::GptqOutput) -> Vec<u8> {
    let s = match out.qtensor.scheme() {
        lowbit_core::Scheme::Int(s) => *s,
        _ => unreachable!(),
    };
    unpack(out.qtensor.codes(), s.bits, out.qtensor.numel()).unwrap()
}

/// Textbook GPTQ: one column at a time, every update applied immediately to all later columns,
/// no blocks. Same rules as the library (group parameters), from the library's preparation
/// (order, damping, dead inputs).
fn textbook_gptq(w: &[f32], rows: usize, cols: usize, h: &Hessian, cfg: &GptqConfig) -> (Vec<u8>, Vec<GroupParams>) {
    let s = cfg.scheme;
    let g = match s.granularity {
        Granularity::Group(g) => g.min(cols),
        _ => cols,
    };
    let groups = cols.div_ceil(g);
    let maxq = s.bits.maxq();
    let Prepared { perm, u, w, .. } = prepare(w, rows, cols, h, cfg).unwrap();
    let mut params: Vec<Option<GroupParams>> = vec![None; rows * groups];
    if cfg.static_groups || s.granularity == Granularity::PerChannel {
        for (i, p) in choose_params(&w, rows, cols, s).unwrap().into_iter().enumerate() {
            params[i] = Some(p);
        }
    }
    // Row-major f64 working copy in original column order.
    let mut wf: Vec<f64> = w.iter().map(|&v| f64::from(v)).collect();
    let mut codes = vec![0u8; rows * cols];
    for k in 0..cols {
        let c = perm[k];
        let grp = c / g;
        for r in 0..rows {
            let p = match params[r * groups + grp] {
                Some(p) => p,
                None => {
                    let vals: Vec<f32> =
                        (grp * g..(grp * g + g).min(cols)).map(|cc| wf[r * cols + cc] as f32).collect();
                    let p = group_params(&vals, s.bits, s.symmetric, s.scale_dtype, s.clip).unwrap();
                    params[r * groups + grp] = Some(p);
                    p
                }
            };
            let x = wf[r * cols + c];
            let q = p.quantize(x as f32, maxq);
            codes[r * cols + c] = q;
            let e = (x - f64::from(p.dequantize(q))) / u[(k, k)];
            for j in k + 1..cols {
                wf[r * cols + perm[j]] -= e * u[(k, j)];
            }
        }
    }
    (codes, params.into_iter().map(Option::unwrap).collect())
}

fn configs() -> Vec<(Bits, bool, Granularity, bool, bool)> {
    let mut v = Vec::new();
    for bits in [Bits::B2, Bits::B3, Bits::B4, Bits::B8] {
        for symmetric in [false, true] {
            for gran in
                [Granularity::PerChannel, Granularity::Group(16), Granularity::Group(48), Granularity::Group(40)]
            {
                for (act, stat) in [(false, false), (true, false), (true, true), (false, true)] {
                    v.push((bits, symmetric, gran, act, stat));
                }
            }
        }
    }
    v
}

#[test]
fn lazy_blocks_match_textbook_gptq_code_for_code() {
    // Awkward sizes: 96 columns, blocks of 40 (groups start inside blocks and span two),
    // groups of 16 and 48, per-channel.
    let (rows, cols, tokens) = (24, 96, 400);
    let mut total = 0usize;
    let mut mismatched = 0usize;
    for (seed, (bits, symmetric, gran, act_order, static_groups)) in configs().into_iter().enumerate() {
        let mut rng = Rng::new(seed as u64);
        let x = correlated_activations(&mut rng, tokens, cols);
        let w = rng.normals(rows * cols, 0.05);
        let h = hessian_of(&x, cols);
        let cfg =
            GptqConfig { act_order, static_groups, block_size: 40, ..GptqConfig::new(scheme(bits, symmetric, gran)) };
        let out = gptq_quantize(&w, rows, cols, &h, &cfg).unwrap();
        let (want_codes, want_params) = textbook_gptq(&w, rows, cols, &h, &cfg);
        let got = codes_of(&out);
        let got_params = out.qtensor.group_params().unwrap();
        let diff = got.iter().zip(&want_codes).filter(|(a, b)| a != b).count();
        total += got.len();
        mismatched += diff;
        // f64 sweep: a code can only flip where w/scale lands within ~1e-12 of a rounding tie.
        assert!(
            diff <= 1,
            "{bits:?} sym={symmetric} {gran:?} act={act_order} static={static_groups}: {diff} codes differ"
        );
        if diff == 0 {
            assert_eq!(got_params, want_params);
        }
    }
    assert!(mismatched * 100_000 <= total, "{mismatched} of {total} codes differ");
}

#[test]
fn gptq_beats_rtn_on_correlated_activations() {
    // GPTQ minimises a greedy, damped proxy of ||WX - QX||^2, so a single problem may in
    // principle lose to RTN (greedy order, damping, group parameters fixed from updated
    // weights). On realistic correlated activations it wins by a wide margin: with these seeds
    // it wins all 6 x 128 cases, which we assert, plus the sum over seeds below 0.9x RTN's. A
    // future change of seeds that trips the per-seed check on one rare case may relax it to the
    // sum; the sum is the property that matters.
    let (rows, cols, tokens) = (32, 96, 512);
    for (bits, symmetric, gran, act_order, static_groups) in configs() {
        let (mut sum_gptq, mut sum_rtn, mut wins) = (0.0, 0.0, 0);
        let seeds = 6;
        for seed in 0..seeds {
            let mut rng = Rng::new(1000 + seed);
            let x = correlated_activations(&mut rng, tokens, cols);
            let w = rng.normals(rows * cols, 0.05);
            let h = hessian_of(&x, cols);
            let s = scheme(bits, symmetric, gran);
            let cfg = GptqConfig { act_order, static_groups, ..GptqConfig::new(s) };
            let gq = gptq_quantize(&w, rows, cols, &h, &cfg).unwrap().qtensor.dequantize();
            let rq = rtn_quantize(&w, rows, cols, s).unwrap().qtensor.dequantize();
            let (eg, er) = (layer_error(&w, &gq, rows, cols, &x), layer_error(&w, &rq, rows, cols, &x));
            // The Hessian form of the same error agrees with the direct one.
            let via_h = output_error(&w, &gq, rows, cols, &h).unwrap() * tokens as f64 / 2.0;
            assert!((via_h - eg).abs() <= 1e-6 * eg.max(1e-12), "{via_h} vs {eg}");
            wins += usize::from(eg <= er);
            sum_gptq += eg;
            sum_rtn += er;
        }
        assert_eq!(wins, seeds as usize, "{bits:?} sym={symmetric} {gran:?} act={act_order}: {wins} wins");
        assert!(sum_gptq < 0.9 * sum_rtn, "{bits:?} sym={symmetric} {gran:?} act={act_order}: {sum_gptq} vs {sum_rtn}");
    }
}

#[test]
fn damping_is_raised_until_cholesky_succeeds() {
    let cols = 16;
    let mut rng = Rng::new(7);
    // Rank-4 Hessian minus a negative direction: indefinite, so percdamp 0.01 fails.
    let x = correlated_activations(&mut rng, 4, cols);
    let h0 = hessian_of(&x, cols);
    let mut m = h0.to_vec();
    let mean = h0.diag().iter().sum::<f64>() / cols as f64;
    for i in 0..cols {
        for j in 0..cols {
            m[i * cols + j] -= 0.5 * mean / cols as f64; // eigenvalue -0.5 * mean along (1,..,1)
        }
    }
    let h = Hessian::from_matrix(cols, &m, 4).unwrap();
    let w = rng.normals(8 * cols, 0.1);
    let out = gptq_quantize(&w, 8, cols, &h, &GptqConfig::new(IntScheme::group(Bits::B4, 16))).unwrap();
    let d = out.report.damping.unwrap();
    assert!(d.raises >= 2, "{d:?}");
    assert!(d.relative > 0.5 && d.relative <= 10.0, "{d:?}");

    // Singular, percdamp 0: the first attempt fails, escalation fixes it.
    let cfg = GptqConfig {
        damping: lowbit_solvers::DampingConfig { percdamp: 0.0, ..Default::default() },
        ..GptqConfig::new(IntScheme::group(Bits::B4, 16))
    };
    let out = gptq_quantize(&w, 8, cols, &h0, &cfg).unwrap();
    assert!(out.report.damping.unwrap().raises >= 1);

    // Strongly indefinite (eigenvalue about -1e6 * mean diag): stays singular, a clear error.
    let mut m = h0.to_vec();
    m[cols] += 1e6 * mean;
    m[1] += 1e6 * mean;
    let h = Hessian::from_matrix(cols, &m, 4).unwrap();
    let err = gptq_quantize(&w, 8, cols, &h, &GptqConfig::new(IntScheme::group(Bits::B4, 16))).unwrap_err();
    assert!(matches!(err, SolverError::SingularHessian { attempts: 7, .. }), "{err}");
    assert!(err.to_string().contains("singular"));

    let mut nan = h0.to_vec();
    nan[3 * cols] = f64::NAN; // lower triangle: from_matrix reads only that half
    let h = Hessian::from_matrix(cols, &nan, 4).unwrap();
    assert!(matches!(
        gptq_quantize(&w, 8, cols, &h, &GptqConfig::new(IntScheme::group(Bits::B4, 16))),
        Err(SolverError::SingularHessian { .. })
    ));
}

#[test]
fn dead_inputs_are_zeroed_and_reported() {
    let (rows, cols) = (8, 32);
    let mut rng = Rng::new(3);
    let mut x = correlated_activations(&mut rng, 200, cols);
    for t in 0..200 {
        x[t * cols + 5] = 0.0;
        x[t * cols + 17] = 0.0;
    }
    let h = hessian_of(&x, cols);
    let w = rng.normals(rows * cols, 0.1);
    for symmetric in [false, true] {
        for act_order in [false, true] {
            let s = scheme(Bits::B3, symmetric, Granularity::Group(16));
            let cfg = GptqConfig { act_order, ..GptqConfig::new(s) };
            let out = gptq_quantize(&w, rows, cols, &h, &cfg).unwrap();
            assert_eq!(out.report.dead_inputs, 2);
            let dq = out.qtensor.dequantize();
            for r in 0..rows {
                assert_eq!(dq[r * cols + 5], 0.0);
                assert_eq!(dq[r * cols + 17], 0.0);
            }
            assert!(out.report.loss.is_finite());
        }
    }
}

#[test]
fn bad_inputs_are_clear_errors() {
    let cols = 16;
    let h = Hessian::new(cols);
    let w = vec![0.1f32; 4 * cols];
    let cfg = GptqConfig::new(IntScheme::group(Bits::B4, 16));
    assert!(matches!(gptq_quantize(&w, 4, cols, &h, &cfg), Err(SolverError::NoCalibrationData { .. })));
    let mut h = Hessian::new(cols);
    let mut x = vec![1.0f32; 3 * cols];
    x[2 * cols + 4] = f32::INFINITY;
    let err = h.add_batch(&x, 3).unwrap_err();
    assert!(matches!(err, SolverError::NonFiniteActivation { token: 2, channel: 4, .. }), "{err}");
    h.add_batch(&x[..2 * cols], 2).unwrap();
    assert!(matches!(gptq_quantize(&w[..3], 4, cols, &h, &cfg), Err(SolverError::Shape { .. })));
    let bad_group = GptqConfig::new(IntScheme::group(Bits::B3, 5));
    assert!(matches!(gptq_quantize(&w, 4, cols, &h, &bad_group), Err(SolverError::Core(_))));
    let mut nanw = w.clone();
    nanw[7] = f32::NAN;
    assert!(matches!(gptq_quantize(&nanw, 4, cols, &h, &cfg), Err(SolverError::Core(_))));
}

/// Textbook GPTQ on a codebook grid: absmax per row block from the prepared weights (double-
/// quantized where asked), each weight to the nearest entry times its absmax, the error spread
/// at once over every later column.
fn textbook_codebook_gptq(w: &[f32], rows: usize, cols: usize, h: &Hessian, cfg: &GptqConfig) -> Vec<u8> {
    let cb = cfg.codebook.unwrap();
    let bs = cb.block_size;
    let Prepared { perm, u, w, .. } = prepare(w, rows, cols, h, cfg).unwrap();
    let raw: Vec<f32> = w.chunks(bs).map(|b| b.iter().fold(0.0f32, |m, x| m.max(x.abs()))).collect();
    let absmax = if cb.double_quant { Absmax::double_quantize(&raw) } else { Absmax::F32(raw) };
    let table = cb.codebook.table();
    let mut wf: Vec<f64> = w.iter().map(|&v| f64::from(v)).collect();
    let mut codes = vec![0u8; rows * cols];
    for k in 0..cols {
        let c = perm[k];
        for r in 0..rows {
            let a = absmax.get((r * cols + c) / bs);
            let x = wf[r * cols + c];
            // Nearest entry by brute force (ties to the lower index, as lowbit-core).
            let t = if a == 0.0 { 0.0 } else { x as f32 / a };
            let q = (0..16).min_by(|&i, &j| (t - table[i]).abs().total_cmp(&(t - table[j]).abs())).unwrap();
            codes[r * cols + c] = q as u8;
            let e = (x - f64::from(table[q] * a)) / u[(k, k)];
            for j in k + 1..cols {
                wf[r * cols + perm[j]] -= e * u[(k, j)];
            }
        }
    }
    codes
}

fn codebook_config(codebook: Codebook, block_size: usize, double_quant: bool, act_order: bool) -> GptqConfig {
    let c = CodebookScheme { codebook, block_size, double_quant };
    GptqConfig {
        codebook: Some(c),
        act_order,
        block_size: 40,
        ..GptqConfig::new(scheme(Bits::B4, true, Granularity::Group(block_size)))
    }
}

#[test]
fn codebook_gptq_matches_its_textbook_and_stores_the_absmax_it_swept_with() {
    let (rows, cols, tokens) = (24, 96, 400);
    let mut seed = 0;
    for codebook in [Codebook::Nf4, Codebook::Fp4] {
        for (bs, double_quant) in [(16, false), (32, true), (48, false)] {
            for act_order in [false, true] {
                seed += 1;
                let mut rng = Rng::new(500 + seed);
                let x = correlated_activations(&mut rng, tokens, cols);
                let w = rng.normals(rows * cols, 0.05);
                let h = hessian_of(&x, cols);
                let cfg = codebook_config(codebook, bs, double_quant, act_order);
                let out = gptq_quantize(&w, rows, cols, &h, &cfg).unwrap();
                let q = &out.qtensor;
                assert_eq!(*q.scheme(), Scheme::Codebook(cfg.codebook.unwrap()));
                let got = unpack(q.codes(), Bits::B4, q.numel()).unwrap();
                let want = textbook_codebook_gptq(&w, rows, cols, &h, &cfg);
                let diff = got.iter().zip(&want).filter(|(a, b)| a != b).count();
                assert!(diff <= 1, "{codebook:?} bs={bs} dq={double_quant} act={act_order}: {diff} codes differ");
                // The stored absmax is the one lowbit-core's own NF4 quantization would choose.
                let direct = codebook::quantize(&w, &[rows, cols], cfg.codebook.unwrap()).unwrap();
                assert_eq!(q.params(), direct.params());
            }
        }
    }
}

#[test]
fn codebook_gptq_beats_codebook_rtn() {
    let (rows, cols, tokens) = (32, 96, 512);
    for codebook in [Codebook::Nf4, Codebook::Fp4] {
        let (mut sum_gptq, mut sum_rtn) = (0.0, 0.0);
        for seed in 0..6 {
            let mut rng = Rng::new(2000 + seed);
            let x = correlated_activations(&mut rng, tokens, cols);
            let w = rng.normals(rows * cols, 0.05);
            let h = hessian_of(&x, cols);
            let cfg = codebook_config(codebook, 32, true, true);
            let gq = gptq_quantize(&w, rows, cols, &h, &cfg).unwrap().qtensor.dequantize();
            let rq = codebook::quantize(&w, &[rows, cols], cfg.codebook.unwrap()).unwrap().dequantize();
            let (eg, er) = (layer_error(&w, &gq, rows, cols, &x), layer_error(&w, &rq, rows, cols, &x));
            assert!(eg < er, "{codebook:?} seed {seed}: gptq {eg} vs rtn {er}");
            sum_gptq += eg;
            sum_rtn += er;
        }
        assert!(sum_gptq < 0.9 * sum_rtn, "{codebook:?}: {sum_gptq} vs {sum_rtn}");
    }
}

#[test]
fn codebook_gptq_refuses_blocks_that_straddle_rows() {
    let (rows, cols) = (4, 40);
    let mut rng = Rng::new(3);
    let x = correlated_activations(&mut rng, 64, cols);
    let h = hessian_of(&x, cols);
    let w = rng.normals(rows * cols, 0.05);
    let err = gptq_quantize(&w, rows, cols, &h, &codebook_config(Codebook::Nf4, 16, false, false)).unwrap_err();
    assert!(err.to_string().contains("block"), "{err}");
}
