//! Agreement with the independent numpy implementation in the Python `gguf` package (gguf-py,
//! maintained with llama.cpp): its quantizers bit for bit, its dequantizers, and its
//! `GGUFReader` on a file our writer wrote.
//!
//! These need python3 with numpy and gguf, a reference outside the repository, so they are
//! `#[ignore = "reference: ..."]` (reported as ignored by a plain `cargo test`); `make test-rust`
//! runs them with the venv's python3, and once asked to run a missing Python is a failure, not a
//! skip (see tests/reference/locate.rs).

mod common;

#[path = "../../../tests/reference/locate.rs"]
mod references;

use common::{temp_dir, test_weights, Rng};
use lowbit_gguf::{dequantize_to_vec, quantize, GgmlType, GgufValue, GgufValueType, GgufWriter};
use serde_json::Value;
use std::path::Path;
use std::process::Command;

/// Runs `script` with a python3 that has numpy and gguf, panicking with its stderr if it fails.
fn python(script: &str) -> String {
    let out = Command::new(references::python(&["numpy", "gguf"])).args(["-c", script]).output().unwrap();
    assert!(out.status.success(), "python failed:\n{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn write_f32(path: &Path, x: &[f32]) {
    std::fs::write(path, x.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
}

/// The types gguf-py quantizes, by its `GGMLQuantizationType` names.
const PY_QUANTIZED: [GgmlType; 7] =
    [GgmlType::F16, GgmlType::Bf16, GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q5_1, GgmlType::Q8_0];

#[test]
#[ignore = "reference: python3 with numpy and gguf (make test-rust runs it)"]
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
#[ignore = "reference: python3 with numpy and gguf (make test-rust runs it)"]
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
#[ignore = "reference: python3 with numpy and gguf (make test-rust runs it)"]
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

/// The types with an importance-weighted quantizer.
const WEIGHTED: [GgmlType; 9] = [
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
];

/// llama.cpp's own weighted quantizers (`ggml_quantize_chunk` with an imatrix, from the
/// libggml-base of llama-cpp-python, built from its sdist by `make loaders`) give our bytes. That
/// library is compiled for baseline x86-64, without FMA, so its float operations round as ours.
#[test]
#[ignore = "reference: python3 with numpy and llama-cpp-python (make test-rust runs it)"]
fn weighted_quantizers_match_ggml_quantize_chunk() {
    let dir = temp_dir("ref-weighted");
    let mut rng = Rng::new(21);
    let py = references::python(&["numpy", "llama_cpp"]);
    for (rows, cols) in [(7, 256), (5, 512), (14, 768)] {
        let x = test_weights(rows, cols, &mut rng);
        // Importances as an imatrix has them: positive, spread over decades; and all ones.
        let skewed: Vec<f32> = (0..cols).map(|_| (3.0 * rng.normal(1.0)).exp()).collect();
        for (tag, qw) in [("skewed", skewed), ("ones", vec![1.0; cols])] {
            write_f32(&dir.join("x.f32"), &x);
            write_f32(&dir.join("qw.f32"), &qw);
            let script = format!(
                "import ctypes, os, numpy as np, llama_cpp\n\
                 lib = ctypes.CDLL(os.path.join(os.path.dirname(llama_cpp.__file__), 'lib', 'libggml-base.so'))\n\
                 f = lib.ggml_quantize_chunk\n\
                 f.restype = ctypes.c_size_t\n\
                 f.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]\n\
                 x = np.fromfile('{d}/x.f32', dtype='<f4'); qw = np.fromfile('{d}/qw.f32', dtype='<f4')\n\
                 for ty in {ids:?}:\n\
                 \x20   out = np.zeros(x.size * 2, dtype=np.uint8)\n\
                 \x20   n = f(ty, x.ctypes.data, out.ctypes.data, 0, {rows}, {cols}, qw.ctypes.data)\n\
                 \x20   out[:n].tofile('{d}/%d.bin' % ty)\n",
                d = dir.display(),
                ids = WEIGHTED.iter().map(|t| t.id()).collect::<Vec<_>>(),
            );
            let out = Command::new(&py).args(["-c", &script]).output().unwrap();
            assert!(out.status.success(), "python failed:\n{}", String::from_utf8_lossy(&out.stderr));
            for ty in WEIGHTED {
                let theirs = std::fs::read(dir.join(format!("{}.bin", ty.id()))).unwrap();
                let ours = lowbit_gguf::quantize_weighted(ty, &x, &qw).unwrap();
                assert_eq!(ours.len(), theirs.len(), "{ty:?} {rows}x{cols} {tag}");
                let diff = ours.iter().zip(&theirs).position(|(a, b)| a != b);
                assert!(diff.is_none(), "{ty:?} {rows}x{cols} {tag}: first differing byte {diff:?}");
                // Even all-ones importances take llama.cpp's other search, not the reference one.
                assert_ne!(ours, quantize(ty, &x).unwrap(), "{ty:?} {rows}x{cols} {tag}: same as unweighted");
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
