//! The golden file shared with the Python tests: the bytes this build writes for fixed inputs
//! must equal the committed `tests/golden/qtensors_v1.safetensors`, so a format change is a
//! visible diff. Set `LOWBIT_BLESS=1` to rewrite it after an intended change.

use lowbit_core::{codebook, io, rtn, Bits, Codebook, CodebookScheme, Granularity, IntScheme};
use std::collections::BTreeMap;
use std::path::PathBuf;

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
