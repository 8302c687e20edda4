//! Logits of every position of a token sequence, for comparisons with other runtimes
//! (`benches/interop/transformers_check.py`).
//!
//! ```text
//! LOWBIT_ACTIVATIONS=f32 cargo run --release -p lowbit-model --example dump_logits -- MODEL IDS OUT
//! ```
//! IDS holds little-endian u32 token ids; OUT receives `[ids, vocab]` little-endian f32 logits,
//! all positions from one prefill on an empty cache.

use lowbit_model::{LogitsMode, Model};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, ids, out] = &args[..] else {
        return Err("usage: dump_logits MODEL IDS OUT".into());
    };
    let model = Model::load(model)?;
    let ids: Vec<u32> =
        std::fs::read(ids)?.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
    let logits = model.forward(&ids, &mut model.new_cache(), LogitsMode::All)?;
    let bytes: Vec<u8> = logits.data.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(out, bytes)?;
    eprintln!("{} positions x {} logits", logits.rows, logits.vocab);
    Ok(())
}
