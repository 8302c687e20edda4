//! See `lowbit_model::fuzzing::awq_dir`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = lowbit_model::fuzzing::awq_dir(data);
});
