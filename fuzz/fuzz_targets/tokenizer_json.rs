//! See `lowbit_model::fuzzing::tokenizer_json`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = lowbit_model::fuzzing::tokenizer_json(data);
});
