//! See `lowbit_model::fuzzing::hf_config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = lowbit_model::fuzzing::hf_config(data);
});
