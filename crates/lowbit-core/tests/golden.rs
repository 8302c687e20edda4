//! The golden file shared with the Python tests: the bytes this build writes for fixed inputs
//! must equal the committed `tests/golden/qtensors_v1.safetensors`, so a format change is a
//! visible diff, and every field read back equals what the independent numpy reader
//! (`tests/reference/format_ref.py`) reads. Set `LOWBIT_BLESS=1` to rewrite the file after an
//! intended change.

#[path = "../../../tests/reference/locate.rs"]
mod references;

use lowbit_core::{codebook, io, pack, rtn, Absmax, Bits, Codebook, CodebookScheme, Granularity, IntScheme, QParams};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

fn golden_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/qtensors_v1.safetensors")
}

fn golden_bytes() -> Vec<u8> {
    let w: Vec<f32> = (0..4 * 64).map(|i| (i as f32 * 0.37) % 5.0 - 2.5).collect();
    let int4 = rtn::quantize(&w, &[4, 64], IntScheme::group(Bits::B4, 32)).unwrap();
    let int3 = rtn::quantize(
        &w,
        &[4, 64],
        IntScheme { symmetric: true, granularity: Granularity::Group(64), ..IntScheme::group(Bits::B3, 64) },
    )
    .unwrap();
    let nf4 = codebook::quantize(
        &w,
        &[4, 64],
        CodebookScheme { codebook: Codebook::Nf4, block_size: 64, double_quant: true },
    )
    .unwrap();
    io::to_bytes([("int4_g32", &int4), ("int3_g64_sym", &int3), ("nf4_dq", &nf4)], &BTreeMap::new()).unwrap()
}

#[test]
fn golden_file_is_what_this_build_writes() {
    let bytes = golden_bytes();
    if std::env::var_os("LOWBIT_BLESS").is_some() {
        io::write_atomic(&golden_path(), &bytes).unwrap();
    }
    let committed = std::fs::read(golden_path()).expect("tests/golden/qtensors_v1.safetensors is committed");
    assert_eq!(committed, bytes, "format drift: rerun with LOWBIT_BLESS=1 only if the change is intended");
    let loaded = io::from_bytes(&committed).unwrap();
    assert_eq!(loaded.tensors.len(), 3);
}

/// A JSON array of numbers as f32 (exact: the reader prints f32 values as Python floats).
fn f32s(v: &Value) -> Vec<f32> {
    v.as_array().expect("an array").iter().map(|x| x.as_f64().expect("a number") as f32).collect()
}

#[test]
#[ignore = "reference: python3 with numpy (make test-rust runs it)"]
fn golden_fields_equal_the_numpy_readers() {
    let py = references::python(&["numpy"]);
    let script = references::repo_root().join("tests/reference/format_ref.py");
    let out = Command::new(py).arg(&script).arg(golden_path()).output().unwrap();
    assert!(out.status.success(), "format_ref.py failed: {}", String::from_utf8_lossy(&out.stderr));
    let theirs: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ours = io::from_bytes(&std::fs::read(golden_path()).unwrap()).unwrap();
    assert_eq!(theirs.as_object().unwrap().len(), ours.tensors.len());
    let mut checked = Vec::new();
    for (name, q) in &ours.tensors {
        let t = &theirs[name.as_str()];
        let codes = pack::unpack(q.codes(), q.scheme().code_bits(), q.numel()).unwrap();
        let their_codes: Vec<u8> = t["codes"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap() as u8).collect();
        assert_eq!(codes, their_codes, "{name}: codes");
        match q.params() {
            QParams::Int { scales, zeros } => {
                let s: Vec<f32> = (0..scales.len()).map(|i| scales.get(i)).collect();
                assert_eq!(s, f32s(&t["scales"]), "{name}: scales");
                let z = zeros.as_ref().map(|z| (0..z.len()).map(|i| z.get(i)).collect::<Vec<_>>());
                assert_eq!(z, (!t["zeros"].is_null()).then(|| f32s(&t["zeros"])), "{name}: zero points");
                checked.push(if zeros.is_some() { "scales+zeros" } else { "scales" });
            }
            QParams::IntStats(_) => panic!("{name}: the golden file holds no quantized statistics"),
            QParams::RowLut { .. } => panic!("{name}: the golden file holds no row codebooks"),
            QParams::Codebook { absmax } => {
                let n = f32s(&t["absmax"]).len();
                let decoded: Vec<f32> = (0..n).map(|i| absmax.get(i)).collect();
                assert_eq!(decoded, f32s(&t["absmax"]), "{name}: absmax");
                if let Absmax::Double { codes, scales, offset } = absmax {
                    let q: Vec<f32> = codes.iter().map(|&c| f32::from(c)).collect();
                    assert_eq!(q, f32s(&t["absmax_q"]), "{name}: double-quant codes");
                    assert_eq!(*scales, f32s(&t["dq_scales"]), "{name}: double-quant scales");
                    assert_eq!(*offset, t["dq_offset"].as_f64().unwrap() as f32, "{name}: double-quant offset");
                }
                checked.push("absmax");
            }
        }
    }
    checked.sort_unstable();
    assert_eq!(checked, ["absmax", "scales", "scales+zeros"], "the golden file covers each kind of field");
}
