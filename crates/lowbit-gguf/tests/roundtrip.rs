//! Writer -> reader round trips, the writer's refusals, quantize/dequantize error budgets, and
//! malformed input.

mod common;

use common::{temp_dir, test_weights, Rng};
use lowbit_gguf::limits::{DEFAULT_ALIGNMENT, MAX_TENSOR_NAME_LEN};
use lowbit_gguf::{
    dequantize, dequantize_to_vec, quantize, GgmlType, GgufError, GgufFile, GgufHeader, GgufValue, GgufValueType,
    GgufWriter, REGISTRY,
};

/// Largest RMS error of dequantize(quantize(x)) relative to the RMS of x, per type, on
/// [`test_weights`]. Measured values (printed by the test) are about 3/4 of these; a quantizer regression
/// shows up as a diff here.
const RMS_BUDGET: &[(GgmlType, f32)] = &[
    (GgmlType::F32, 0.0),
    (GgmlType::F16, 7e-5),
    (GgmlType::Bf16, 5e-4),
    (GgmlType::Q8_0, 5.5e-3),
    (GgmlType::Q8K, 7e-3),
    (GgmlType::Q6K, 1.9e-2),
    (GgmlType::Q5_0, 3.7e-2),
    (GgmlType::Q5_1, 4.2e-2),
    (GgmlType::Q5K, 3.6e-2),
    (GgmlType::Q4_0, 6.8e-2),
    (GgmlType::Q4_1, 8.6e-2),
    (GgmlType::Q4K, 7.2e-2),
    (GgmlType::Q3K, 1.9e-1),
    (GgmlType::Q2K, 3.3e-1),
];

fn every_value_type() -> Vec<(&'static str, GgufValue)> {
    vec![
        ("general.architecture", GgufValue::Str("llama".into())),
        ("t.u8", GgufValue::U8(200)),
        ("t.i8", GgufValue::I8(-100)),
        ("t.u16", GgufValue::U16(60_000)),
        ("t.i16", GgufValue::I16(-30_000)),
        ("t.u32", GgufValue::U32(4_000_000_000)),
        ("t.i32", GgufValue::I32(-2_000_000_000)),
        ("t.f32", GgufValue::F32(-1.25e-3)),
        ("t.bool", GgufValue::Bool(true)),
        ("t.str", GgufValue::Str("héllo {{ bos_token }}\n".into())),
        ("t.u64", GgufValue::U64(u64::MAX - 1)),
        ("t.i64", GgufValue::I64(i64::MIN + 1)),
        ("t.f64", GgufValue::F64(std::f64::consts::PI)),
        ("t.strings", GgufValue::strings(["Ġthe", "", "a b", "[PAD0]"])),
        ("t.i32s", GgufValue::i32s([1, 3, -4])),
        ("t.f32s", GgufValue::f32s([0.5, -0.0, 1e30])),
        ("t.empty", GgufValue::Array(GgufValueType::U8, vec![])),
        (
            "t.nested",
            GgufValue::Array(
                GgufValueType::Array,
                vec![GgufValue::i32s([1]), GgufValue::Array(GgufValueType::Bool, vec![GgufValue::Bool(false)])],
            ),
        ),
    ]
}

/// A shape with an odd row count whose rows are whole blocks of `ty`.
fn odd_shape(ty: GgmlType, i: usize) -> Vec<usize> {
    let cols = ty.block_len().max(32) * (1 + i % 2);
    match i % 3 {
        0 => vec![3, cols],
        1 => vec![cols],
        _ => vec![1, 5, cols],
    }
}

#[test]
fn writer_reader_round_trip_of_metadata_and_every_type() {
    let dir = temp_dir("roundtrip");
    let mut rng = Rng::new(1);
    for alignment in [None, Some(64u32), Some(1)] {
        let mut w = GgufWriter::new();
        for (k, v) in every_value_type() {
            w.add_kv(k, v).unwrap();
        }
        if let Some(a) = alignment {
            w.add_kv("general.alignment", GgufValue::U32(a)).unwrap();
        }
        let mut tensors = vec![];
        for (i, t) in REGISTRY.iter().enumerate() {
            let shape = odd_shape(t.ty, i);
            let x = test_weights(
                shape.iter().product::<usize>() / shape[shape.len() - 1],
                shape[shape.len() - 1],
                &mut rng,
            );
            let name = format!("blk.{i}.{}", t.name.to_lowercase());
            w.add_tensor(name.as_str(), t.ty, &shape).unwrap();
            tensors.push((name, t.ty, shape, quantize(t.ty, &x).unwrap(), x));
        }
        let path = dir.join("model.gguf");
        let mut out = w.create(&path).unwrap();
        for (i, (name, _, _, bytes, x)) in tensors.iter().enumerate() {
            // Both entry points: raw bytes, and f32 through the reference quantizer.
            if i % 2 == 0 {
                out.write_tensor(name, bytes).unwrap();
            } else {
                out.write_tensor_f32(name, x).unwrap();
            }
        }
        out.finish().unwrap();
        let leftovers: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers, ["model.gguf"], "temporary files left behind");

        let file = GgufFile::open(&path).unwrap();
        assert_eq!(file.version(), 3);
        let a = alignment.map_or(DEFAULT_ALIGNMENT, u64::from);
        assert_eq!(file.alignment(), a);
        let mut expected: std::collections::BTreeMap<String, GgufValue> =
            every_value_type().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        if let Some(a) = alignment {
            expected.insert("general.alignment".into(), GgufValue::U32(a));
        }
        assert_eq!(file.metadata(), &expected);
        assert_eq!(file.tensors().len(), tensors.len());
        for (info, (name, ty, shape, bytes, _)) in file.tensors().iter().zip(&tensors) {
            assert_eq!((&info.name, info.ty, &info.shape()), (name, *ty, shape));
            assert_eq!(info.offset as u64 % a, 0, "{name} misaligned");
            assert_eq!(file.raw(info).unwrap(), &bytes[..], "{name}");
        }
        // The same bytes parse from memory, at an odd address too.
        let all = std::fs::read(&path).unwrap();
        let mut shifted = vec![0u8];
        shifted.extend(&all);
        let h = GgufHeader::parse(&shifted[1..]).unwrap();
        assert_eq!(&h, file.header());
        let (_, y) = GgufFile::from_bytes(&shifted[1..]).unwrap().dequantize(&tensors[3].0).unwrap();
        assert_eq!(y, file.dequantize(&tensors[3].0).unwrap().1);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn written_files_get_the_default_mode_and_unfinished_ones_vanish() {
    let dir = temp_dir("mode");
    let mut w = GgufWriter::new();
    w.add_tensor("a", GgmlType::F32, &[2]).unwrap();
    let mut out = w.clone().create(dir.join("a.gguf")).unwrap();
    out.write_tensor_f32("a", &[1.0, 2.0]).unwrap();
    out.finish().unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(dir.join("plain"), b"x").unwrap();
        let mode = |p: &str| std::fs::metadata(dir.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("a.gguf"), mode("plain"), "not the mode an ordinary new file gets");
        std::fs::remove_file(dir.join("plain")).unwrap();
    }
    // Dropped before finish: no destination, no temporary file.
    let out = w.create(dir.join("b.gguf")).unwrap();
    drop(out);
    let names: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["a.gguf"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn writer_refuses_what_the_reader_would_reject() {
    let mut w = GgufWriter::new();
    w.add_kv("k", GgufValue::U32(1)).unwrap();
    assert!(matches!(w.add_kv("k", GgufValue::U32(2)), Err(GgufError::Metadata { .. })));
    let mixed = GgufValue::Array(GgufValueType::Str, vec![GgufValue::Str("a".into()), GgufValue::U8(1)]);
    assert!(matches!(w.add_kv("mixed", mixed), Err(GgufError::Metadata { .. })));
    assert!(w.add_kv("general.alignment", GgufValue::U32(48)).is_err());
    let long = "x".repeat(MAX_TENSOR_NAME_LEN as usize + 1);
    assert!(matches!(w.add_tensor(long, GgmlType::F32, &[1]), Err(GgufError::LimitExceeded { .. })));
    assert!(matches!(w.add_tensor("q", GgmlType::Q4_0, &[2, 48]), Err(GgufError::BadDims { .. })));
    assert!(w.add_tensor("five", GgmlType::F32, &[1, 1, 1, 1, 1]).is_err());
    assert!(w.add_tensor("empty", GgmlType::F32, &[]).is_err());
    w.add_tensor("a", GgmlType::F32, &[4]).unwrap();
    w.add_tensor("b", GgmlType::Q8_0, &[32]).unwrap();
    assert!(w.add_tensor("a", GgmlType::F32, &[4]).is_err());

    let mut d = w.clone().begin(Vec::new()).unwrap();
    assert!(matches!(d.write_tensor("b", &[0; 34]), Err(GgufError::WriterState { .. })));
    assert!(matches!(d.write_tensor("a", &[0; 15]), Err(GgufError::Length { .. })));
    d.write_tensor("a", &[0; 16]).unwrap();
    assert!(matches!(d.write_tensor_f32("b", &[0.0; 31]), Err(GgufError::Length { .. })));
    let d2 = w.begin(Vec::new()).unwrap();
    assert!(matches!(d2.finish(), Err(GgufError::WriterState { .. })));
    // 127/128 quantizes exactly: d = 1/128 is an f16.
    d.write_tensor_f32("b", &[127.0 / 128.0; 32]).unwrap();
    let bytes = d.finish().unwrap();
    assert_eq!(bytes.len() as u64 % DEFAULT_ALIGNMENT, 0);
    assert_eq!(GgufFile::from_vec(bytes).unwrap().dequantize("b").unwrap().1, [127.0 / 128.0; 32]);
}

#[test]
fn dequantize_of_quantize_is_within_each_formats_budget() {
    let mut rng = Rng::new(2);
    let (rows, cols) = (21, 512);
    let x = test_weights(rows, cols, &mut rng);
    assert_eq!(RMS_BUDGET.len(), REGISTRY.len(), "every type needs a budget");
    let rms = |v: &mut dyn Iterator<Item = f32>| {
        let (s, n) = v.fold((0f64, 0usize), |(s, n), e| (s + (e as f64).powi(2), n + 1));
        (s / n as f64).sqrt() as f32
    };
    for &(ty, budget) in RMS_BUDGET {
        let q = quantize(ty, &x).unwrap();
        assert_eq!(q.len(), ty.bytes_for(x.len()).unwrap());
        let y = dequantize_to_vec(ty, &q, x.len()).unwrap();
        let err = rms(&mut x.iter().zip(&y).map(|(a, b)| a - b)) / rms(&mut x.iter().copied());
        eprintln!("{ty:?}: relative RMS error {err:.5} (budget {budget})");
        assert!(err <= budget, "{ty:?}: relative RMS error {err} over budget {budget}");
        // The 32-weight formats have a per-element bound: half a step, or a whole step for the
        // clipped end of Q4_0/Q5_0, plus the f16 rounding of the scales (relative 2^-11, times
        // codes up to the block's largest |x|).
        let step = |b: &[f32], levels: f32| {
            let (lo, hi) = b.iter().fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
            let amax = lo.abs().max(hi.abs());
            let f16_slack = amax * 2f32.powi(-10);
            match ty {
                GgmlType::Q4_1 | GgmlType::Q5_1 => (hi - lo) / levels * 0.5 + f16_slack,
                _ => amax / levels + f16_slack,
            }
        };
        let levels = match ty {
            GgmlType::Q4_0 => Some(8.0),
            GgmlType::Q5_0 => Some(16.0),
            GgmlType::Q8_0 => Some(127.0 * 2.0),
            GgmlType::Q4_1 => Some(15.0),
            GgmlType::Q5_1 => Some(31.0),
            _ => None,
        };
        if let Some(levels) = levels {
            for (xb, yb) in x.chunks_exact(32).zip(y.chunks_exact(32)) {
                let bound = step(xb, levels);
                for (a, b) in xb.iter().zip(yb) {
                    assert!((a - b).abs() <= bound, "{ty:?}: |{a} - {b}| > {bound}");
                }
            }
        }
    }
}

#[test]
fn lengths_are_checked() {
    assert!(matches!(quantize(GgmlType::Q4K, &[0.0; 255]), Err(GgufError::NotWholeBlocks { .. })));
    assert!(matches!(dequantize(GgmlType::Q4_0, &[0; 17], &mut [0.0; 32]), Err(GgufError::Length { .. })));
    assert!(dequantize_to_vec(GgmlType::Q8_0, &[0; 34], usize::MAX / 2).is_err());
    for t in REGISTRY {
        assert_eq!(GgmlType::from_id(t.ty.id()), Some(t.ty));
        assert_eq!(GgmlType::from_name(t.name), Some(t.ty));
        assert_eq!(t.ty.name(), t.name);
    }
}

#[test]
fn malformed_files_are_errors_not_panics() {
    let mut w = GgufWriter::new();
    for (k, v) in every_value_type() {
        w.add_kv(k, v).unwrap();
    }
    w.add_tensor("a", GgmlType::Q4_0, &[3, 64]).unwrap();
    w.add_tensor("b", GgmlType::F16, &[5]).unwrap();
    let mut d = w.begin(Vec::new()).unwrap();
    d.write_tensor_f32("a", &[0.25; 192]).unwrap();
    d.write_tensor_f32("b", &[1.0; 5]).unwrap();
    let bytes = d.finish().unwrap();
    let header_len = GgufHeader::parse(&bytes).unwrap().data_offset;
    for cut in 0..bytes.len() {
        if cut >= header_len + 3 * 2 * 18 + 14 {
            // Past the last tensor's data only padding is cut.
            continue;
        }
        assert!(GgufHeader::parse(&bytes[..cut]).is_err(), "cut at {cut} parsed");
    }
    let mut rng = Rng::new(7);
    for _ in 0..3000 {
        let mut b = bytes.clone();
        for _ in 0..1 + rng.next_u64() % 4 {
            let at = (rng.next_u64() as usize) % header_len;
            b[at] = match rng.next_u64() % 3 {
                0 => b[at] ^ (1 << (rng.next_u64() % 8)),
                1 => 0xFF,
                _ => rng.next_u64() as u8,
            };
        }
        if let Ok(f) = GgufFile::from_vec(b) {
            for t in f.tensors() {
                let _ = f.dequantize(&t.name);
            }
        }
    }
}
