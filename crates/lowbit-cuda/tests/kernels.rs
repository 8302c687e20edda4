//! Every CUDA kernel against lowbit-cpu's scalar reference, on odd shapes.
//!
//! The device tests need a CUDA GPU: they are `#[ignore]`d with that reason, and only exist with
//! the `cuda` feature. Run them where a GPU is:
//! `cargo test --release -p lowbit-cuda --features cuda -- --ignored` (benches/cuda/run.sh runs
//! the prebuilt test binary that way). Without a GPU they fail with the reason; they never pass
//! silently. The tests that need no GPU (the unavailable path, NVRTC compiling the kernels) run
//! everywhere.

use lowbit_cuda::{Cuda, CudaError};

/// `LOWBIT_REQUIRE_CUDA=1` turns a missing GPU into a failure of this always-run test.
#[test]
fn a_missing_device_is_an_unavailable_error() {
    match Cuda::new(1 << 20) {
        Err(CudaError::Unavailable(reason)) => assert!(!reason.is_empty()),
        other => panic!("device 2^20 should be unavailable, got {other:?}"),
    }
    if std::env::var("LOWBIT_REQUIRE_CUDA").as_deref() == Ok("1") {
        if let Err(e) = Cuda::new(0) {
            panic!("LOWBIT_REQUIRE_CUDA=1 but no CUDA device: {e}");
        }
    }
}

#[test]
fn loading_a_model_without_a_device_is_a_device_error() {
    // Without a device the device is the error; with one, the missing path is.
    let have_gpu = Cuda::new(0).is_ok();
    match lowbit_cuda::load_model("/nonexistent/model", 0) {
        Err(lowbit_model::ModelError::DeviceUnavailable { device, .. }) if !have_gpu => assert_eq!(device, "cuda:0"),
        Err(e) if have_gpu => assert!(!matches!(e, lowbit_model::ModelError::DeviceUnavailable { .. }), "{e}"),
        other => panic!("unexpected {:?} (GPU present: {have_gpu})", other.map(|_| ())),
    }
}

/// NVRTC compiles the kernels for Hopper (sm_90) and Ampere (sm_80). Needs only libnvrtc, no
/// GPU: on a machine without one, put a pip `nvidia-cuda-nvrtc` wheel's lib folder on
/// `LD_LIBRARY_PATH` and run it with `--ignored`.
#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs NVRTC (libnvrtc.so on LD_LIBRARY_PATH)"]
fn nvrtc_compiles_the_kernels() {
    for (major, minor) in [(9, 0), (8, 0)] {
        let ptx = lowbit_cuda::compile_kernels(major, minor).unwrap_or_else(|e| panic!("{e}"));
        assert!(ptx.contains(".entry gemv_w4h_r4"), "PTX without the INT4 GEMV");
        assert!(ptx.contains(&format!(".target sm_{major}{minor}")), "PTX for the wrong target");
    }
}

#[cfg(feature = "cuda")]
mod device {
    use half::{bf16, f16};
    use lowbit_core::backend::{AttnShape, Backend, HostWeight};
    use lowbit_core::{rtn, Bits, ClipSearch, Granularity, IntScheme, QTensor, ScaleDtype};
    use lowbit_cpu::{scalar, Linear, WeightKind};
    use lowbit_cuda::{CuView, CuViewMut, Cuda, CudaBuffer, CudaError, CudaLinear};

    const GPU: &str = "needs a CUDA GPU (benches/cuda/run.sh runs these with --ignored)";

    fn gpu() -> Cuda {
        Cuda::new(0).unwrap_or_else(|e| panic!("this test needs a CUDA GPU: {e}"))
    }

    /// Values in about [-scale, scale], from a seeded LCG.
    fn rand(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect()
    }

    fn rel_err(got: &[f32], want: &[f32]) -> f64 {
        assert_eq!(got.len(), want.len());
        assert!(got.iter().all(|v| v.is_finite()), "non-finite output");
        let num: f64 = got.iter().zip(want).map(|(a, b)| (f64::from(*a) - f64::from(*b)).powi(2)).sum();
        let den: f64 = want.iter().map(|b| f64::from(*b).powi(2)).sum();
        (num / den.max(1e-30)).sqrt()
    }

    fn up(cu: &Cuda, v: &[f32]) -> CudaBuffer {
        cu.upload(v).unwrap()
    }

    /// An output buffer poisoned with NaN, so an unwritten element fails the comparison.
    fn poisoned(cu: &Cuda, n: usize) -> CudaBuffer {
        cu.upload(&vec![f32::NAN; n]).unwrap()
    }

    fn quant(rows: usize, cols: usize, bits: Bits, sym: bool, g: Granularity, dt: ScaleDtype) -> QTensor {
        let w = rand(rows * cols, (rows * 7919 + cols) as u64, 0.1);
        let scheme = IntScheme { bits, symmetric: sym, granularity: g, scale_dtype: dt, clip: ClipSearch::MinMax };
        rtn::quantize(&w, &[rows, cols], scheme).unwrap()
    }

    /// Every weight kind the loader can hand over, at `rows x cols`.
    fn weights(rows: usize, cols: usize) -> Vec<(String, WeightKind)> {
        let w = rand(rows * cols, (rows + 31 * cols) as u64, 0.1);
        let mut out = vec![
            ("f32".to_string(), WeightKind::F32(w.clone())),
            ("f16".to_string(), WeightKind::F16(w.iter().map(|&x| f16::from_f32(x)).collect())),
            ("bf16".to_string(), WeightKind::Bf16(w.iter().map(|&x| bf16::from_f32(x)).collect())),
        ];
        let g128 = Granularity::Group(128);
        for (name, bits, sym, g, dt) in [
            ("w4 asym g128", Bits::B4, false, g128, ScaleDtype::F16),
            ("w4 sym g128", Bits::B4, true, g128, ScaleDtype::F16),
            ("w4 asym g128 f32 scales", Bits::B4, false, g128, ScaleDtype::F32),
            ("w4 asym g32", Bits::B4, false, Granularity::Group(32), ScaleDtype::F16),
            ("w4 sym per-channel", Bits::B4, true, Granularity::PerChannel, ScaleDtype::F16),
            ("w8 asym g128", Bits::B8, false, g128, ScaleDtype::F16),
            ("w8 sym per-channel f32 scales", Bits::B8, true, Granularity::PerChannel, ScaleDtype::F32),
            ("w4 g16 (f32 fallback)", Bits::B4, false, Granularity::Group(16), ScaleDtype::F16),
            ("w3 g128 (f32 fallback)", Bits::B3, false, g128, ScaleDtype::F16),
        ] {
            out.push((name.to_string(), WeightKind::Quant(quant(rows, cols, bits, sym, g, dt))));
        }
        out
    }

    fn host(kind: &WeightKind) -> HostWeight<'_> {
        match kind {
            WeightKind::F32(v) => HostWeight::F32(v),
            WeightKind::F16(v) => HostWeight::F16(v),
            WeightKind::Bf16(v) => HostWeight::Bf16(v),
            WeightKind::Quant(q) => HostWeight::Quant(q),
        }
    }

    /// Every weight kind at each shape and each `m` of the inputs (seeded by `seed`): `check`
    /// gets the device weight, x uploaded, the scalar reference's product and a label.
    fn for_each_product(
        cu: &Cuda,
        shapes: &[(usize, usize)],
        ms: &[usize],
        seed: usize,
        mut check: impl FnMut(&CudaLinear, &CudaBuffer, usize, &[f32], &str),
    ) {
        for &(rows, cols) in shapes {
            for (name, kind) in weights(rows, cols) {
                let dev = cu.load_linear(rows, cols, host(&kind)).unwrap();
                let cpu = Linear::new(rows, cols, kind).unwrap();
                for &m in ms {
                    let x = rand(m * cols, (m * seed + rows) as u64, 1.0);
                    let mut want = vec![0f32; m * rows];
                    cpu.forward_scalar(&x, m, &mut want);
                    check(&dev, &up(cu, &x), m, &want, &format!("{name} {rows}x{cols} m={m}"));
                }
            }
        }
    }

    /// The product `run` writes from all of `x` into a NaN-poisoned output, downloaded.
    fn product(
        cu: &Cuda,
        w: &CudaLinear,
        x: &CudaBuffer,
        m: usize,
        run: impl FnOnce(CuView<'_>, CuViewMut<'_>) -> Result<(), CudaError>,
    ) -> Vec<f32> {
        let (rows, cols) = cu.linear_dims(w);
        let mut out = poisoned(cu, m * rows);
        run(cu.view(x, 0..m * cols), cu.view_mut(&mut out, 0..m * rows)).unwrap();
        cu.to_host(out).unwrap()
    }

    #[test]
    #[ignore = "needs a CUDA GPU (benches/cuda/run.sh runs these with --ignored)"]
    fn linear_matches_the_scalar_reference() {
        let _ = GPU;
        let cu = gpu();
        let shapes = [(1, 128), (37, 200), (64, 576), (129, 1000), (300, 4096), (5, 33)];
        for_each_product(&cu, &shapes, &[1, 2, 4, 5, 17, 70], 13, |dev, x, m, want, label| {
            let variants: &[&str] = if m == 1 { lowbit_cuda::W4_GEMV_VARIANTS } else { &["r4u1", "r1u4"] };
            for &r in variants {
                let got = product(&cu, dev, x, m, |xv, ov| cu.linear_with(dev, xv, m, ov, r));
                let e = rel_err(&got, want);
                let cols = cu.linear_dims(dev).1;
                assert!(e < 2e-6 * (cols as f64).sqrt(), "{label} variant {r}: rel err {e}");
            }
        });
    }

    #[test]
    #[ignore = "needs a CUDA GPU (benches/cuda/run.sh runs these with --ignored)"]
    fn tensor_core_gemm_matches_within_f16_rounding() {
        let cu = gpu();
        let shapes = [(37, 200), (64, 576), (129, 1000), (8, 33)];
        for_each_product(&cu, &shapes, &[1, 5, 64, 130], 17, |dev, x, m, want, label| {
            let got = product(&cu, dev, x, m, |xv, ov| cu.linear_tensor_cores(dev, xv, m, ov));
            let e = rel_err(&got, want);
            assert!(e < 3e-3, "{label}: rel err {e}");
        });
    }

    #[test]
    #[ignore = "needs a CUDA GPU (benches/cuda/run.sh runs these with --ignored)"]
    fn a_product_at_an_unaligned_offset_matches() {
        // Row 1 of a [3, 131] activation starts 131 floats in: not 16-byte aligned.
        let cu = gpu();
        let (rows, cols) = (70, 131);
        let q = quant(rows, cols, Bits::B4, false, Granularity::PerChannel, ScaleDtype::F16);
        let dev = cu.load_linear(rows, cols, HostWeight::Quant(&q)).unwrap();
        let cpu = Linear::new(rows, cols, WeightKind::Quant(q)).unwrap();
        let x = rand(3 * cols, 5, 1.0);
        let mut want = vec![0f32; rows];
        cpu.forward_scalar(&x[cols..2 * cols], 1, &mut want);
        let xb = up(&cu, &x);
        let mut out = poisoned(&cu, rows);
        cu.linear(&dev, cu.view(&xb, cols..2 * cols), 1, cu.view_mut(&mut out, 0..rows)).unwrap();
        let e = rel_err(&cu.to_host(out).unwrap(), &want);
        assert!(e < 1e-5, "rel err {e}");
    }

    #[test]
    #[ignore = "needs a CUDA GPU (benches/cuda/run.sh runs these with --ignored)"]
    fn embedding_rows_match_the_dequantized_table() {
        let cu = gpu();
        let (rows, cols) = (97, 200);
        let tokens = [0u32, 96, 5, 5, 41];
        for (name, kind) in weights(rows, cols) {
            let dev = cu.load_linear(rows, cols, host(&kind)).unwrap();
            let cpu = Linear::new(rows, cols, kind).unwrap();
            let mut want = vec![0f32; tokens.len() * cols];
            lowbit_cpu::Cpu::new().embed(&cpu, &tokens, &mut want).unwrap();
            let mut out = poisoned(&cu, tokens.len() * cols);
            let n = tokens.len() * cols;
            cu.embed(&dev, &tokens, cu.view_mut(&mut out, 0..n)).unwrap();
            let got = cu.to_host(out).unwrap();
            assert!(rel_err(&got, &want) < 1e-6, "{name}");
        }
        let dev = cu.load_linear(rows, cols, HostWeight::F32(&rand(rows * cols, 1, 1.0))).unwrap();
        let mut out = cu.zeros(cols).unwrap();
        assert!(cu.embed(&dev, &[97], cu.view_mut(&mut out, 0..cols)).is_err(), "an id past the table");
    }

    #[test]
    #[ignore = "needs a CUDA GPU (benches/cuda/run.sh runs these with --ignored)"]
    fn elementwise_ops_match_the_scalar_reference() {
        let cu = gpu();
        for (rows, d) in [(1, 576), (7, 33), (3, 4097)] {
            let n = rows * d;
            let x = rand(n, d as u64, 3.0);
            let y = rand(n, 7 + d as u64, 2.0);
            let w = rand(d, 11, 1.5);
            let (xb, yb, wb) = (up(&cu, &x), up(&cu, &y), up(&cu, &w));

            let mut want = vec![0f32; n];
            scalar::rms_norm(&x, &w, 1e-5, &mut want);
            let mut out = poisoned(&cu, n);
            cu.rms_norm(cu.view(&xb, 0..n), cu.view(&wb, 0..d), 1e-5, cu.view_mut(&mut out, 0..n));
            assert!(rel_err(&cu.to_host(out).unwrap(), &want) < 1e-6, "rms_norm {rows}x{d}");
            let mut inplace = up(&cu, &x);
            cu.rms_norm_inplace(cu.view_mut(&mut inplace, 0..n), cu.view(&wb, 0..d), 1e-5);
            assert!(rel_err(&cu.to_host(inplace).unwrap(), &want) < 1e-6, "rms_norm_inplace {rows}x{d}");

            let mut a = up(&cu, &x);
            cu.add(cu.view_mut(&mut a, 0..n), cu.view(&yb, 0..n));
            let want: Vec<f32> = x.iter().zip(&y).map(|(a, b)| a + b).collect();
            assert_eq!(cu.to_host(a).unwrap(), want, "add");

            let mut a = up(&cu, &x);
            cu.add_bias(cu.view_mut(&mut a, 0..n), cu.view(&wb, 0..d));
            let mut want = x.clone();
            scalar::add_bias(&mut want, &w);
            assert_eq!(cu.to_host(a).unwrap(), want, "add_bias");

            let mut g = up(&cu, &x);
            cu.swiglu(cu.view_mut(&mut g, 0..n), cu.view(&yb, 0..n));
            let mut want = x.clone();
            scalar::swiglu(&mut want, &y);
            assert!(rel_err(&cu.to_host(g).unwrap(), &want) < 1e-6, "swiglu");
        }
        cu.synchronize().unwrap();
    }

    #[test]
    #[ignore = "needs a CUDA GPU (benches/cuda/run.sh runs these with --ignored)"]
    fn rope_matches_the_scalar_reference() {
        let cu = gpu();
        for (m, heads, hd) in [(1, 9, 64), (5, 3, 80), (13, 2, 6)] {
            let width = heads * hd;
            let x = rand(m * width, hd as u64, 1.0);
            let ang: Vec<f32> = rand(m * hd / 2, 3, 3.0);
            let (cos, sin): (Vec<f32>, Vec<f32>) = ang.iter().map(|a| (a.cos(), a.sin())).unzip();
            let mut want = x.clone();
            for (t, row) in want.chunks_exact_mut(width).enumerate() {
                for h in row.chunks_exact_mut(hd) {
                    scalar::rope_head(h, &cos[t * hd / 2..(t + 1) * hd / 2], &sin[t * hd / 2..(t + 1) * hd / 2]);
                }
            }
            let mut xb = up(&cu, &x);
            let (cb, sb) = (up(&cu, &cos), up(&cu, &sin));
            let k = m * hd / 2;
            cu.rope(cu.view_mut(&mut xb, 0..m * width), width, hd, cu.view(&cb, 0..k), cu.view(&sb, 0..k));
            assert!(rel_err(&cu.to_host(xb).unwrap(), &want) < 1e-6, "rope m={m} heads={heads} hd={hd}");
        }
    }

    #[test]
    #[ignore = "needs a CUDA GPU (benches/cuda/run.sh runs these with --ignored)"]
    fn attention_matches_the_scalar_reference() {
        let cu = gpu();
        let shapes = [
            (AttnShape { heads: 9, kv_heads: 3, head_dim: 64, window: None }, 0, 7),
            (AttnShape { heads: 9, kv_heads: 3, head_dim: 64, window: None }, 13, 1),
            (AttnShape { heads: 4, kv_heads: 4, head_dim: 32, window: None }, 100, 37),
            (AttnShape { heads: 6, kv_heads: 2, head_dim: 80, window: Some(5) }, 20, 9),
            (AttnShape { heads: 2, kv_heads: 1, head_dim: 256, window: None }, 1000, 1),
            (AttnShape { heads: 8, kv_heads: 2, head_dim: 128, window: None }, 0, 300),
        ];
        for (shape, past, n) in shapes {
            let (qd, kvd) = (shape.q_dim(), shape.kv_dim());
            let q = rand(n * qd, (past + n) as u64, 1.0);
            let k = rand((past + n) * kvd, 3 + past as u64, 1.0);
            let v = rand((past + n) * kvd, 5 + past as u64, 1.0);
            let mut want = vec![0f32; n * qd];
            scalar::attention(&shape, &q, &k, &v, past, &mut want);
            let (qb, kb, vb) = (up(&cu, &q), up(&cu, &k), up(&cu, &v));
            let mut out = poisoned(&cu, n * qd);
            cu.attention(
                &shape,
                cu.view(&qb, 0..n * qd),
                cu.view(&kb, 0..(past + n) * kvd),
                cu.view(&vb, 0..(past + n) * kvd),
                past,
                cu.view_mut(&mut out, 0..n * qd),
            );
            let e = rel_err(&cu.to_host(out).unwrap(), &want);
            assert!(e < 1e-5, "{shape:?} past={past} n={n}: rel err {e}");
        }
    }

    #[test]
    #[ignore = "needs a CUDA GPU (benches/cuda/run.sh runs these with --ignored)"]
    fn argmax_finds_the_first_maximum() {
        let cu = gpu();
        let (rows, n) = (3, 49152 + 5);
        let mut x = rand(rows * n, 9, 10.0);
        x[7] = 50.0; // row 0
        x[n + 300] = 60.0; // row 1: a tie, the first wins
        x[n + 40000] = 60.0;
        x[2 * n + n - 1] = 70.0; // row 2: the last element
        let xb = up(&cu, &x);
        assert_eq!(cu.argmax(cu.view(&xb, 0..rows * n), rows, n).unwrap(), vec![7, 300, (n - 1) as u32]);
    }

    #[test]
    #[ignore = "needs a CUDA GPU (benches/cuda/run.sh runs these with --ignored)"]
    fn buffers_resize_append_and_truncate() {
        let cu = gpu();
        let mut b = cu.zeros(0).unwrap();
        let a = rand(100, 1, 1.0);
        let ab = up(&cu, &a);
        let mut want = vec![];
        for step in 0..5 {
            cu.append(&mut b, cu.view(&ab, step..step + 17)).unwrap();
            want.extend_from_slice(&a[step..step + 17]);
        }
        cu.truncate(&mut b, 40);
        want.truncate(40);
        cu.resize(&mut b, 50).unwrap();
        want.resize(50, 0.0);
        assert_eq!(cu.buf_len(&b), 50);
        assert_eq!(cu.to_host(b.clone()).unwrap(), want);
        assert_eq!(cu.to_host(b).unwrap(), want, "a clone is a copy");
    }

    #[test]
    #[ignore = "needs a CUDA GPU (benches/cuda/run.sh runs these with --ignored)"]
    fn a_bad_shape_in_an_infallible_op_surfaces_at_the_next_call() {
        let cu = gpu();
        let mut x = cu.zeros(10).unwrap();
        let y = cu.zeros(9).unwrap();
        cu.add(cu.view_mut(&mut x, 0..10), cu.view(&y, 0..9));
        assert!(cu.synchronize().is_err(), "the mismatch is reported");
        cu.synchronize().unwrap();
    }
}
