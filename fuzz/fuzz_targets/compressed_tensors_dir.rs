//! See `lowbit_model::fuzzing::compressed_tensors_dir`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = lowbit_model::fuzzing::compressed_tensors_dir(data);
});
