//! GGUF: header, metadata and tensor infos, then every tensor dequantized.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = lowbit_model::fuzzing::gguf(data);
});
