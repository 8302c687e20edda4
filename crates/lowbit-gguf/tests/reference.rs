//! Agreement with the independent numpy implementation in the Python `gguf` package (gguf-py,
//! maintained with llama.cpp): its quantizers bit for bit, its dequantizers, and its
//! `GGUFReader` on a file our writer wrote.
//!
//! These need `python3` with numpy and gguf, so they are `#[ignore]`d and reported as such
//! where those may be missing; run them with `cargo test -p lowbit-gguf -- --include-ignored`
//! (the Makefile and CI do, with `LOWBIT_REQUIRE_REFERENCES=1`). Once asked to run, a missing
//! Python is a failure, not a skip; and with `LOWBIT_REQUIRE_REFERENCES=1` the one test that is
//! never ignored checks that the references are there.

mod common;

use common::{temp_dir, test_weights, Rng};
use lowbit_gguf::{dequantize_to_vec, quantize, GgmlType, GgufValue, GgufValueType, GgufWriter};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

const IGNORE: &str = "needs python3 with numpy and gguf";

fn python_has_gguf() -> bool {
    Command::new("python3").args(["-c", "import numpy, gguf"]).output().is_ok_and(|o| o.status.success())
}

/// Runs `script` with python3, panicking with its stderr when it fails or Python is missing.
fn python(script: &str) -> String {
    let out = Command::new("python3")
        .args(["-c", script])
        .output()
        .unwrap_or_else(|e| panic!("python3 not runnable ({e}); this test {IGNORE}"));
    assert!(out.status.success(), "python failed (this test {IGNORE}):\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn write_f32(path: &Path, x: &[f32]) {
    std::fs::write(path, x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
}

#[test]
fn references_are_present_when_required() {
    if std::env::var("LOWBIT_REQUIRE_REFERENCES").as_deref() == Ok("1") {
        assert!(python_has_gguf(), "LOWBIT_REQUIRE_REFERENCES=1 but python3 with numpy and gguf is missing");
    }
}

/// The types gguf-py quantizes, by its `GGMLQuantizationType` names.
const PY_QUANTIZED: [GgmlType; 7] =
    [GgmlType::F16, GgmlType::Bf16, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0];

#[test]
#[ignore = "needs python3 with numpy and gguf"]
fn quantizers_match_gguf_python_bit_for_bit() {
    let dir = temp_dir("ref-quant");
    let mut rng = Rng::new(11);
    for (rows, cols) in [(7, 32), (3, 96), (1, 256), (13, 64)] {
        let x = test_weights(rows, cols, &mut rng);
        let inp = dir.join("x.f32");
        write_f32(&inp, &x);
        let names: Vec<&str> = PY_QUANTIZED.iter().map(|t| t.name()).collect();
        let script = format!(
            "import numpy as np, gguf.quants as q\nfrom gguf import GGMLQuantizationType as T\n\
             x = np.fromfile('{inp}', dtype='<f4').reshape({rows}, {cols})\n\
             for n in {names:?}:\n    q.quantize(x, T[n]).tofile('{dir}/' + n + '.bin')\n",
            inp = inp.display(),
            dir = dir.display(),
        );
        python(&script);
        for ty in PY_QUANTIZED {
            let theirs = std::fs::read(dir.join(format!("{}.bin", ty.name()))).unwrap();
            let ours = quantize(ty, &x).unwrap();
            assert_eq!(ours.len(), theirs.len(), "{ty:?} {rows}x{cols}");
            let diff = ours.iter().zip(&theirs).position(|(a, b)| a != b);
            assert!(diff.is_none(), "{ty:?} {rows}x{cols}: first differing byte {diff:?}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "needs python3 with numpy and gguf"]
fn dequantizers_match_gguf_python() {
    let dir = temp_dir("ref-dequant");
    let mut rng = Rng::new(12);
    let types = [
        GgmlType::F16,
        GgmlType::Bf16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
    ];
    let (rows, cols) = (7, 512);
    let x = test_weights(rows, cols, &mut rng);
    for ty in types {
        // Our quantizer's output, read back by both dequantizers.
        let raw = quantize(ty, &x).unwrap();
        let ours = dequantize_to_vec(ty, &raw, x.len()).unwrap();
        let (inp, outp) = (dir.join(format!("{}.bin", ty.name())), dir.join(format!("{}.f32", ty.name())));
        std::fs::write(&inp, &raw).unwrap();
        python(&format!(
            "import numpy as np, gguf.quants as q\nfrom gguf import GGMLQuantizationType as T\n\
             raw = np.fromfile('{}', dtype=np.uint8).reshape({rows}, -1)\n\
             q.dequantize(raw, T['{}']).astype('<f4').tofile('{}')",
            inp.display(),
            ty.name(),
            outp.display()
        ));
        let theirs: Vec<f32> = std::fs::read(&outp)
            .unwrap()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(theirs.len(), ours.len(), "{ty:?}");
        // Same operations in the same order: equal bits.
        for (i, (a, b)) in ours.iter().zip(&theirs).enumerate() {
            assert_eq!(a.to_bits(), b.to_bits(), "{ty:?} element {i}: ours {a}, gguf-py {b}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "needs python3 with numpy and gguf"]
fn gguf_python_reads_what_we_write() {
    let dir = temp_dir("ref-reader");
    let path = dir.join("ours.gguf");
    let mut w = GgufWriter::new();
    let kvs: Vec<(&str, GgufValue)> = vec![
        ("general.architecture", GgufValue::Str("llama".into())),
        ("general.alignment", GgufValue::U32(64)),
        ("t.u8", GgufValue::U8(7)),
        ("t.i8", GgufValue::I8(-7)),
        ("t.u16", GgufValue::U16(65_000)),
        ("t.i16", GgufValue::I16(-32_000)),
        ("t.u32", GgufValue::U32(4_000_000_000)),
        ("t.i32", GgufValue::I32(-2_000_000_000)),
        ("t.f32", GgufValue::F32(0.25)),
        ("t.bool", GgufValue::Bool(true)),
        ("t.str", GgufValue::Str("{% for m in messages %}ü{% endfor %}".into())),
        ("t.u64", GgufValue::U64(1 << 60)),
        ("t.i64", GgufValue::I64(-(1 << 60))),
        ("t.f64", GgufValue::F64(-2.5)),
        ("tokenizer.ggml.tokens", GgufValue::strings(["<|endoftext|>", "Ġthe", "a b", ""])),
        ("tokenizer.ggml.token_type", GgufValue::i32s([3, 1, 1, 1])),
        ("t.f32s", GgufValue::f32s([1.5, -2.0])),
        ("t.bools", GgufValue::Array(GgufValueType::Bool, vec![GgufValue::Bool(false), GgufValue::Bool(true)])),
    ];
    for (k, v) in &kvs {
        w.add_kv(*k, v.clone()).unwrap();
    }
    let mut rng = Rng::new(13);
    let tensors: Vec<(&str, GgmlType, Vec<usize>)> = vec![
        ("token_embd.weight", GgmlType::Q8_0, vec![5, 64]),
        ("blk.0.attn_q.weight", GgmlType::Q4_0, vec![3, 32]),
        ("blk.0.ffn_down.weight", GgmlType::Q4K, vec![3, 256]),
        ("blk.0.ffn_up.weight", GgmlType::Q6K, vec![1, 512]),
        ("blk.0.attn_k.weight", GgmlType::Q5_1, vec![7, 32]),
        ("output_norm.weight", GgmlType::F32, vec![7]),
        ("blk.0.attn_norm.weight", GgmlType::F16, vec![3]),
        ("blk.0.cube", GgmlType::Q4_1, vec![2, 3, 32]),
    ];
    let mut data = vec![];
    for (name, ty, shape) in &tensors {
        w.add_tensor(*name, *ty, shape).unwrap();
        let cols = shape[shape.len() - 1];
        data.push(quantize(*ty, &test_weights(shape.iter().product::<usize>() / cols, cols, &mut rng)).unwrap());
    }
    let mut out = w.create(&path).unwrap();
    for ((name, ..), bytes) in tensors.iter().zip(&data) {
        out.write_tensor(name, bytes).unwrap();
    }
    out.finish().unwrap();

    let script = format!(
        "import json, numpy as np\nfrom gguf import GGUFReader\nr = GGUFReader('{}')\n\
         def val(f):\n    v = f.contents()\n    return v.item() if hasattr(v, 'item') else v\n\
         fields = {{k: [[int(t) for t in f.types], val(f)] for k, f in r.fields.items() if not k.startswith('GGUF.')}}\n\
         tensors = [[t.name, [int(d) for d in t.shape], t.tensor_type.name, bytes(t.data.tobytes()).hex()] for t in r.tensors]\n\
         conv = lambda o: o.tolist() if hasattr(o, 'tolist') else str(o)
\
         print(json.dumps({{'fields': fields, 'tensors': tensors, 'alignment': r.alignment}}, default=conv))",
        path.display()
    );
    let got: Value = serde_json::from_str(&python(&script)).unwrap();
    assert_eq!(got["alignment"], 64);
    let fields = got["fields"].as_object().unwrap();
    assert_eq!(fields.len(), kvs.len(), "{fields:?}");
    for (k, v) in &kvs {
        let f = &fields[*k];
        let types: Vec<u64> = f[0].as_array().unwrap().iter().map(|t| t.as_u64().unwrap()).collect();
        let (want_types, want): (Vec<u64>, Value) = match v {
            GgufValue::Array(ty, items) => (vec![9, ty.id() as u64], Value::Array(items.iter().map(json_of).collect())),
            v => (vec![v.value_type().id() as u64], json_of(v)),
        };
        assert_eq!(types, want_types, "{k}: types");
        assert_eq!(f[1], want, "{k}: value");
    }
    let got_tensors = got["tensors"].as_array().unwrap();
    assert_eq!(got_tensors.len(), tensors.len());
    for ((name, ty, shape), (t, bytes)) in tensors.iter().zip(got_tensors.iter().zip(&data)) {
        assert_eq!(t[0], *name);
        let dims: Vec<usize> = t[1].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
        assert_eq!(dims, shape.iter().rev().copied().collect::<Vec<_>>(), "{name}: ggml dims");
        assert_eq!(t[2], ty.name(), "{name}: type");
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        assert!(t[3] == hex, "{name}: data differs");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn json_of(v: &GgufValue) -> Value {
    match v {
        GgufValue::Str(s) => s.clone().into(),
        GgufValue::Bool(b) => (*b).into(),
        GgufValue::F32(x) => (*x as f64).into(),
        GgufValue::F64(x) => (*x).into(),
        GgufValue::Array(_, items) => Value::Array(items.iter().map(json_of).collect()),
        v => match (v.as_u64(), v.as_i64()) {
            (Some(u), _) => u.into(),
            (None, Some(i)) => i.into(),
            _ => Value::Null,
        },
    }
}
