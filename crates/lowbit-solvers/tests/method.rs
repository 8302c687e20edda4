//! The method seam: names, dispatch, and each method's group solve against its own solver.

mod common;

use common::{correlated_activations, Rng};
use lowbit_core::{Bits, Granularity, IntScheme, Scheme};
use lowbit_solvers::awq::{awq_quantize, AwqConfig, AwqStats};
use lowbit_solvers::LayerWeight;
use lowbit_solvers::{
    gptq_quantize, rtn_quantize, CalibShape, FoldTarget, GptqMethod, Group, GroupLayer, Hessian, MethodConfig, Role,
    SmoothQuantMethod,
};

const CALIB: CalibShape = CalibShape { nsamples: 4, seqlen: 16 };

#[test]
fn names_round_trip_and_unknown_is_an_error() {
    for m in MethodConfig::all() {
        assert_eq!(MethodConfig::from_name(m.name()).unwrap(), m);
        assert_eq!(MethodConfig::from_name(&m.name().to_uppercase()).unwrap(), m);
    }
    assert_eq!(MethodConfig::from_name("sq").unwrap().name(), "smoothquant");
    assert!(MethodConfig::from_name("nope").unwrap_err().to_string().contains("rtn, gptq"));
    assert!(!MethodConfig::from_name("rtn").unwrap().solver().calibrated());
}

/// `rows x cols` weights and statistics of `tokens` activations, fed in two batches.
fn setup(
    method: &MethodConfig,
    rows: usize,
    cols: usize,
    tokens: usize,
) -> (Vec<f32>, Vec<f32>, Box<dyn lowbit_solvers::Statistics>) {
    let mut rng = Rng::new(7);
    let w = rng.normals(rows * cols, 0.1);
    let x = correlated_activations(&mut rng, tokens, cols);
    let mut st = method.solver().statistics(cols, CALIB);
    let half = tokens / 2;
    st.add_batch(&x[..half * cols], half).unwrap();
    st.add_batch(&x[half * cols..], tokens - half).unwrap();
    (w, x, st)
}

fn group<'a>(w: &'a [f32], rows: usize, cols: usize, role: Role, fold: FoldTarget, scheme: IntScheme) -> Group<'a> {
    Group { layers: vec![GroupLayer { role, w, rows }], cols, fold, scheme: Scheme::Int(scheme) }
}

#[test]
fn gptq_and_rtn_solve_as_their_solvers() {
    let (rows, cols, tokens) = (8, 32, 64);
    let scheme = IntScheme::group(Bits::B4, 16);
    let gptq = MethodConfig::Gptq(GptqMethod { act_order: true, ..GptqMethod::default() });
    let (w, x, st) = setup(&gptq, rows, cols, tokens);
    let sol =
        gptq.solver().solve_group(&group(&w, rows, cols, Role::Up, FoldTarget::Rows, scheme), st.as_ref()).unwrap();
    let mut h = Hessian::with_precision(cols, lowbit_solvers::HessianPrecision::F32Chunks);
    h.add_batch(&x[..32 * cols], 32).unwrap();
    h.add_batch(&x[32 * cols..], 32).unwrap();
    let MethodConfig::Gptq(g) = &gptq else { unreachable!() };
    let want = gptq_quantize(&w, rows, cols, &h, &g.config(scheme)).unwrap();
    assert_eq!(sol.layers[0].qtensor, want.qtensor);
    assert!(g.config(scheme).static_groups, "static groups follow act-order by default");
    assert!(sol.fold.is_none() && !sol.int8_activations);

    let rtn = MethodConfig::from_name("rtn").unwrap();
    let sol =
        rtn.solver().solve_group(&group(&w, rows, cols, Role::Up, FoldTarget::None, scheme), st.as_ref()).unwrap();
    assert_eq!(sol.layers[0].qtensor, rtn_quantize(&w, rows, cols, scheme).unwrap().qtensor);
    // Statistics of another method are refused, not misread.
    let awq_stats = MethodConfig::from_name("awq").unwrap().solver().statistics(cols, CALIB);
    assert!(gptq
        .solver()
        .solve_group(&group(&w, rows, cols, Role::Up, FoldTarget::Rows, scheme), awq_stats.as_ref())
        .is_err());
}

#[test]
fn awq_sees_only_its_samples_and_clips_all_but_q_and_k() {
    let (rows, cols, tokens) = (8, 32, 3 * 16);
    let scheme = IntScheme::group(Bits::B3, 16);
    let awq = MethodConfig::Awq(lowbit_solvers::AwqMethod { samples: 2 });
    let (w, x, st) = setup(&awq, rows, cols, tokens);
    // The statistics hold the first samples * seqlen = 32 tokens only.
    let first = AwqStats::from_activations(&x[..32 * cols], 32, cols).unwrap();
    let mut cfg = AwqConfig::new(scheme);
    cfg.clip = false;
    let unclipped = awq_quantize(&first, &[LayerWeight { w: &w, rows }], &cfg).unwrap();
    let q =
        awq.solver().solve_group(&group(&w, rows, cols, Role::Query, FoldTarget::Norm, scheme), st.as_ref()).unwrap();
    assert_eq!(q.layers[0].qtensor, unclipped.qtensors[0], "q is not clipped");
    assert_eq!(q.fold.as_deref(), Some(unclipped.scales.as_slice()));
    assert_eq!(q.layers[0].alpha, Some(unclipped.alpha));
    let up = awq.solver().solve_group(&group(&w, rows, cols, Role::Up, FoldTarget::Norm, scheme), st.as_ref()).unwrap();
    assert_eq!(up.fold, q.fold);
    assert!(up.layers[0].report.loss.is_finite());
    // Nowhere to fold is an error, not a silently unscaled layer.
    assert!(awq.solver().solve_group(&group(&w, rows, cols, Role::Up, FoldTarget::None, scheme), st.as_ref()).is_err());
}

#[test]
fn smoothquant_folds_into_norms_only_and_is_w8a8() {
    let (rows, cols, tokens) = (8, 32, 32);
    let sq = MethodConfig::SmoothQuant(SmoothQuantMethod::default());
    let w8 = IntScheme { symmetric: true, granularity: Granularity::PerChannel, ..IntScheme::group(Bits::B8, 16) };
    assert!(sq.solver().validate(&Scheme::Int(IntScheme::group(Bits::B4, 16))).is_err());
    sq.solver().validate(&Scheme::Int(w8)).unwrap();
    let (w, _, st) = setup(&sq, rows, cols, tokens);
    let norm = sq.solver().solve_group(&group(&w, rows, cols, Role::Gate, FoldTarget::Norm, w8), st.as_ref()).unwrap();
    assert!(norm.int8_activations && norm.fold.is_some() && norm.layers[0].alpha == Some(0.5));
    let rows_fold =
        sq.solver().solve_group(&group(&w, rows, cols, Role::Down, FoldTarget::Rows, w8), st.as_ref()).unwrap();
    assert!(rows_fold.int8_activations && rows_fold.fold.is_none() && rows_fold.layers[0].alpha.is_none());
    let mut bad = sq.solver().statistics(cols, CALIB);
    let mut x = vec![0.0f32; cols];
    x[3] = f32::NAN;
    assert!(bad.add_batch(&x, 1).unwrap_err().to_string().contains("NaN"));
}
