//! lowbit tensor files: the safetensors header, the `lowbit.*` metadata and QTensor
//! reconstruction from its parts. Whatever parses must write back and parse to the same tensors.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lowbit_core::io;

fuzz_target!(|data: &[u8]| {
    let Ok(loaded) = io::from_bytes(data) else { return };
    for qt in loaded.tensors.values() {
        let _ = qt.dequantize();
    }
    let bytes = io::to_bytes(loaded.tensors.iter().map(|(n, t)| (n.as_str(), t)), &loaded.extra)
        .expect("loaded tensors serialize");
    assert_eq!(io::from_bytes(&bytes).expect("written bytes parse"), loaded);
});
