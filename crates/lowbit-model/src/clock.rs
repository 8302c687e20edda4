//! Wall-clock timing of prefill, decode and evaluation: lowbit-core's clock, which works on
//! wasm32-unknown-unknown too (std's panics there).

pub(crate) use lowbit_core::clock::Instant;
