//! A quantized token embedding / LM head at SmolLM2-135M's real shape (49152 x 576), through the
//! backend calls the model makes: `Backend::linear` (the head, decode and a small batch) and
//! `Backend::embed` (lookups dequantize only their rows). Every scheme `lowbit quantize` offers
//! for these roles (int8 per channel, int4 groups of 32/64/128, the last one short on a 576 row).

use lowbit_core::backend::Backend;
use lowbit_core::{rtn, Bits, ClipSearch, Granularity, IntScheme, ScaleDtype};
use lowbit_cpu::{kernel_level, Activations, Cpu, Linear, WeightKind};
use lowbit_model::Rng;

const VOCAB: usize = 49152;
const HIDDEN: usize = 576;

fn schemes() -> Vec<(&'static str, IntScheme)> {
    let int = |bits, symmetric, granularity| IntScheme {
        bits,
        symmetric,
        granularity,
        scale_dtype: ScaleDtype::F16,
        clip: ClipSearch::MinMax,
    };
    vec![
        ("int8 per channel", int(Bits::B8, true, Granularity::PerChannel)),
        ("int4 g32", int(Bits::B4, false, Granularity::Group(32))),
        ("int4 g64", int(Bits::B4, false, Granularity::Group(64))),
        ("int4 g128", int(Bits::B4, false, Granularity::Group(128))),
    ]
}

#[test]
fn quantized_head_and_embedding_at_smollm2_shape_match_their_dequantized_f32() {
    let mut rng = Rng::new(3);
    let w: Vec<f32> = (0..VOCAB * HIDDEN).map(|_| (rng.next_f64() as f32 - 0.5) * 0.2).collect();
    let m = 3;
    let x: Vec<f32> = (0..m * HIDDEN).map(|_| rng.next_f64() as f32 * 2.0 - 1.0).collect();
    let tokens = [0u32, 1, 12345, VOCAB as u32 - 1];
    let be = Cpu::new();
    for (name, scheme) in schemes() {
        let q = rtn::quantize(&w, &[VOCAB, HIDDEN], scheme).unwrap();
        let deq = q.dequantize();
        let lin = Linear::new(VOCAB, HIDDEN, WeightKind::Quant(q)).unwrap();

        // The head: decode (m = 1) and a small batch, against f64 sums of the dequantized rows.
        for rows in [1, m] {
            // The backend's product is the f32-activation one or, where lowbit-cpu quantizes
            // activations to int8 (`LOWBIT_ACTIVATIONS`), exactly its int8 reference.
            let mut got = vec![0f32; rows * VOCAB];
            be.linear(&lin, &x[..rows * HIDDEN], rows, &mut got).unwrap();
            let mut out = vec![0f32; rows * VOCAB];
            lin.forward_activations(kernel_level(), Activations::F32, &x[..rows * HIDDEN], rows, &mut out).unwrap();
            if got != out {
                let mut int8 = vec![0f32; rows * VOCAB];
                lin.forward_int8_reference(&x[..rows * HIDDEN], rows, &mut int8).unwrap();
                assert!(got == int8, "{name} m={rows}: the backend's head is neither the f32 nor the int8 product");
            }
            for (i, xi) in x[..rows * HIDDEN].chunks_exact(HIDDEN).enumerate() {
                for (r, wr) in deq.chunks_exact(HIDDEN).enumerate() {
                    let (dot, abs) = wr.iter().zip(xi).fold((0f64, 0f64), |(d, a), (w, x)| {
                        (d + f64::from(*w) * f64::from(*x), a + f64::from((w * x).abs()))
                    });
                    let got = f64::from(out[i * VOCAB + r]);
                    assert!((got - dot).abs() <= 1e-5 * abs + 1e-6, "{name} m={rows} row {r}: {got} vs {dot}");
                }
            }
        }

        // Lookups: exactly the dequantized rows.
        let mut emb = vec![0f32; tokens.len() * HIDDEN];
        be.embed(&lin, &tokens, &mut emb).unwrap();
        for (t, row) in tokens.iter().zip(emb.chunks_exact(HIDDEN)) {
            let t = *t as usize;
            assert_eq!(row, &deq[t * HIDDEN..(t + 1) * HIDDEN], "{name} token {t}");
        }
        assert!(be.embed(&lin, &[VOCAB as u32], &mut emb[..HIDDEN]).is_err());
    }
}
